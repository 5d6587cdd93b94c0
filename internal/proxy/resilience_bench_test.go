package proxy

import (
	"context"
	"net/http"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// BenchmarkRouteChain measures one exchange through a route's compiled
// chain, in process, ending in a stub upstream that answers 200: "bare" is
// a route without timeouts or a retry policy; "retry" adds a BackendPolicy
// retry policy (budget, backoff); "retry+timeout" also timeouts.request;
// "retry+timeouts" also timeouts.backendRequest. The differences are what
// those filters add per request that succeeds first time.
func BenchmarkRouteChain(b *testing.B) {
	for _, tc := range []struct {
		name     string
		timeouts *meshv1.RouteTimeouts
		policy   *meshv1.BackendPolicy
	}{
		{"bare", nil, nil},
		{"retry", nil, &meshv1.BackendPolicy{Retry: testRetry(2)}},
		{"retry+timeout", &meshv1.RouteTimeouts{Request: durationpb.New(5 * time.Second)}, &meshv1.BackendPolicy{Retry: testRetry(2)}},
		{"retry+timeouts", &meshv1.RouteTimeouts{Request: durationpb.New(5 * time.Second), BackendRequest: durationpb.New(time.Second)},
			&meshv1.BackendPolicy{Retry: testRetry(2)}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			h := benchRoute(b, tc.timeouts, tc.policy)
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				ex := getExchange()
				ex.Method, ex.Authority, ex.Path, ex.Header = "GET", "orders", "/x", http.Header{}
				ex.ctx, ex.clientCtx = ctx, ctx
				resp := h.Serve(ex)
				if resp.Status != http.StatusOK {
					b.Fatalf("status %d", resp.Status)
				}
				ex.release()
			}
		})
	}
}

// benchRoute compiles a one-route service of three endpoints whose chain
// ends in a stub upstream.
func benchRoute(b *testing.B, timeouts *meshv1.RouteTimeouts, bp *meshv1.BackendPolicy) Handler {
	b.Helper()
	svc := &meshv1.Service{Name: "orders", Namespace: "default", BackendPolicy: bp,
		Ports:  []*meshv1.Port{{Name: "http", Port: 80, Protocol: meshv1.Protocol_HTTP}},
		Routes: []*meshv1.Route{{Name: "r", Timeouts: timeouts, Backends: []*meshv1.Backend{{Service: "orders", Weight: 1}}}}}
	for _, a := range []string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"} {
		svc.Endpoints = append(svc.Endpoints, &meshv1.Endpoint{Address: a, Identity: spiffeFor("orders"), Healthy: true})
	}
	env := testEnv(b)
	env.upstream = HandlerFunc(func(ex *Exchange) *Response {
		ex.resp = Response{Status: http.StatusOK}
		return &ex.resp
	})
	c, err := compile(snapshot("1", svc), env)
	if err != nil {
		b.Fatal(err)
	}
	return c.byKey["orders.default"].routes[0].handler
}
