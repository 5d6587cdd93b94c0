package proxy

import (
	"context"
	"net/http"
	"strings"
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

// registeringTransport is okTransport that also does what net/http's
// Transport.roundTrip does with the request's context before it sends
// (the stub, registered as an alternate protocol, skips it): derive a
// cancelable child, look at its Done, cancel it when done. Without it the
// benchmark cannot see what a timeout's context costs once a transport
// waits on it.
type registeringTransport struct{}

func (registeringTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	select {
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	default:
	}
	return okTransport{}.RoundTrip(r)
}

// BenchmarkRouteChainResilience measures one request through a route's
// compiled chain (split, breaker and outlier slots, pick, the upstream
// stage building the outgoing request) over a stub transport: "bare" is a
// route without timeouts or a retry policy; "retry" adds a BackendPolicy
// retry policy (budget, backoff); "retry+timeout" also timeouts.request;
// "retry+timeouts" also timeouts.backendRequest. The differences are what
// those filters cost per request that succeeds first time. The client's
// context is context.Background ("parent=background") or, as net/http's
// request context is, a fresh cancelable one ("parent=cancelable": 2
// allocations more in every variant, and a timeout's context then
// registers with it, which costs more), and that with a stub transport
// that, as net/http's does, derives a context from the request's and
// waits on it ("transport=registers": the real cost of a timeout's
// context, which only a waiter makes link to its parent).
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
		for _, variant := range []string{"parent=background", "parent=cancelable", "parent=cancelable,transport=registers"} {
			cancelable := variant != "parent=background"
			name := tc.name + "/" + variant
			b.Run(name, func(b *testing.B) {
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
					if strings.HasSuffix(variant, "registers") {
						pr.h1 = stubH1{registeringTransport{}}
					} else {
						pr.h1 = stubH1{okTransport{}}
					}
				}
				rt := &s.routes[0]
				hdr := http.Header{"User-Agent": []string{"bench"}}
				b.ReportAllocs()
				for b.Loop() {
					ctx, cancel := context.Background(), context.CancelFunc(func() {})
					if cancelable {
						ctx, cancel = context.WithCancel(ctx)
					}
					ex := p.exchanges.get()
					ex.ctx, ex.clientCtx = ctx, ctx
					ex.Method, ex.Authority, ex.Path, ex.Header = "GET", "orders", "/x", hdr
					ex.Service, ex.Port, ex.cfg, ex.metrics, ex.Route = s, 80, cfg, s.metrics, rt
					resp := rt.handler.Serve(ex)
					if resp.Status != http.StatusOK {
						b.Fatalf("status %d", resp.Status)
					}
					_ = resp.Body.Close()
					ex.release()
					cancel()
				}
			})
		}
	}
}
