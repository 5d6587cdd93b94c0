package proxy

import (
	"context"
	"net/http"
	"testing"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// BenchmarkEgressChain measures one request through the whole outbound
// chain (telemetry, resolve, the egress policy, the route's chain, the
// upstream stage) with stub transports, for a mesh service, an
// ExternalService by its host, a host outside the registry passed through
// (ALLOW_ANY) and one refused (REGISTRY_ONLY): what egress adds to the
// mesh path per request.
func BenchmarkEgressChain(b *testing.B) {
	ca := newTestCA(b, "trellis.local")
	p, err := New(Options{Service: "frontend", ClientTLS: ca.clientTLS(ca.svid(b, spiffeFor("frontend")))})
	if err != nil {
		b.Fatal(err)
	}
	api := &meshv1.Service{Name: "api", Namespace: "default", Ports: []*meshv1.Port{{Name: "http", Port: 80}},
		Endpoints: []*meshv1.Endpoint{{Id: "a", Service: "api", Namespace: "default", Address: "127.0.0.1:1", Identity: spiffeFor("api"), Healthy: true}}}
	ext := externalSvc("203.0.113.1:80")
	for _, mode := range []meshv1.OutboundTrafficPolicy_Mode{meshv1.OutboundTrafficPolicy_ALLOW_ANY, meshv1.OutboundTrafficPolicy_REGISTRY_ONLY} {
		if err := p.Update(egressSnapshot(mode, paymentsHost, api, ext)); err != nil {
			b.Fatal(err)
		}
		cfg := p.cfg.Load()
		if mode == meshv1.OutboundTrafficPolicy_ALLOW_ANY { // the pools live on across the second snapshot
			for _, svc := range cfg.byKey {
				scheme := "https"
				if svc.ext != nil {
					scheme = "http"
				}
				for _, pr := range svc.peers {
					pr.h1 = stubH1{stubPeer{}}
					pr.h2.RegisterProtocol(scheme, stubPeer{})
				}
			}
			p.egress.passthrough.RegisterProtocol("http", stubPeer{})
		}
		cases := []struct{ name, host string }{{"mesh", "api"}, {"external", "api.payments.test"}, {"passthrough", "203.0.113.9"}, {"passthrough-port", "203.0.113.9:8080"}}
		want := 200
		if mode == meshv1.OutboundTrafficPolicy_REGISTRY_ONLY {
			cases, want = []struct{ name, host string }{{"refused", "203.0.113.9"}}, http.StatusBadGateway
		}
		for _, tc := range cases {
			b.Run(tc.name, func(b *testing.B) {
				b.ReportAllocs()
				hdr := http.Header{"User-Agent": []string{"bench"}}
				for b.Loop() {
					ex := p.exchanges.get()
					ex.ctx, ex.clientCtx = context.Background(), context.Background()
					ex.Method, ex.Authority, ex.Path, ex.Header, ex.cfg = "GET", tc.host, "/x", hdr.Clone(), cfg
					resp := cfg.outbound.Serve(ex)
					if resp.Status != want {
						b.Fatalf("%s: status %d", tc.name, resp.Status)
					}
					_ = resp.Body.Close()
					ex.release()
				}
			})
		}
	}
}
