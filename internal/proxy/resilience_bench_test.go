package proxy

import (
	"context"
	"net/http"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// okTransport answers every attempt in process with 200: the benchmark
// measures the route's chain, not the network.
type okTransport struct{}

func (okTransport) RoundTrip(*http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: 200, Header: http.Header{}, Body: http.NoBody}, nil
}

// BenchmarkRouteChainResilience measures one request through a route's
// compiled chain (split, breaker and outlier slots, pick, the upstream
// stage building the outgoing request) over a stub transport: "bare" is a
// route without timeouts or a retry policy; "retry" adds a BackendPolicy
// retry policy (budget, backoff); "retry+timeout" also timeouts.request;
// "retry+timeouts" also timeouts.backendRequest. The differences are what
// those filters cost per request that succeeds first time.
func BenchmarkRouteChainResilience(b *testing.B) {
	ca := newTestCA(b, "trellis.local")
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
			p, err := New(Options{Service: "frontend", ClientTLS: ca.clientTLS(ca.svid(b, spiffeFor("frontend")))})
			if err != nil {
				b.Fatal(err)
			}
			svc := &meshv1.Service{Name: "orders", Namespace: "default", BackendPolicy: tc.policy,
				Ports:  []*meshv1.Port{{Name: "http", Port: 80, Protocol: meshv1.Protocol_HTTP}},
				Routes: []*meshv1.Route{{Name: "r", Timeouts: tc.timeouts, Backends: []*meshv1.Backend{{Service: "orders", Weight: 1}}}}}
			for _, a := range []string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"} {
				svc.Endpoints = append(svc.Endpoints, &meshv1.Endpoint{Address: a, Identity: spiffeFor("orders"), Healthy: true})
			}
			if err := p.Update(snapshot("1", svc)); err != nil {
				b.Fatal(err)
			}
			cfg := p.cfg.Load()
			s := cfg.byKey["orders.default"]
			// The HTTP/1.1 transport, stubbed: registering a stub on the
			// HTTP/2 one makes net/http log at its first use.
			p.hopH2 = false
			for _, pr := range s.peers {
				pr.h1.RegisterProtocol("https", okTransport{})
			}
			rt := &s.routes[0]
			hdr := http.Header{"User-Agent": []string{"bench"}}
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				ex := getExchange()
				ex.ctx, ex.clientCtx = ctx, ctx
				ex.Method, ex.Authority, ex.Path, ex.Header = "GET", "orders", "/x", hdr
				ex.Service, ex.Port, ex.cfg, ex.metrics, ex.Route = s, 80, cfg, s.metrics, rt
				resp := rt.handler.Serve(ex)
				if resp.Status != http.StatusOK {
					b.Fatalf("status %d", resp.Status)
				}
				_ = resp.Body.Close()
				ex.release()
			}
		})
	}
}
