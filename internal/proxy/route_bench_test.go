package proxy

import (
	"context"
	"net/http"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// stubPeer answers every attempt in-process: the benchmark measures the
// route's chain, not the network.
type stubPeer struct{}

func (stubPeer) RoundTrip(*http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": textPlain}, Body: http.NoBody}, nil
}

// stubH1 stands in for a peer's HTTP/1.1 transport.
type stubH1 struct{ http.RoundTripper }

func (stubH1) CloseIdleConnections() {}

// BenchmarkRouteChain measures one request through a route's compiled chain
// (split, pick, the upstream stage building the outgoing request) with a
// stub transport, for a bare route, one with request and response header
// modifiers, and one with those and a request timeout: the differences are
// what those filters cost per request.
func BenchmarkRouteChain(b *testing.B) {
	ca := newTestCA(b, "trellis.local")
	p, err := New(Options{Service: "frontend", ClientTLS: ca.clientTLS(ca.svid(b, spiffeFor("frontend")))})
	if err != nil {
		b.Fatal(err)
	}
	hm := &meshv1.HeaderModifier{Set: []*meshv1.HeaderValue{{Name: "x-env", Value: "prod"}}, Add: []*meshv1.HeaderValue{{Name: "x-tags", Value: "mesh"}}}
	filtered := &meshv1.Route{Name: "filtered", Matches: []*meshv1.Match{{Path: prefix("/f")}}, Backends: backendTo("api"),
		Filters: []*meshv1.RouteFilter{
			{Filter: &meshv1.RouteFilter_RequestHeaderModifier{RequestHeaderModifier: hm}},
			{Filter: &meshv1.RouteFilter_ResponseHeaderModifier{ResponseHeaderModifier: hm}},
		},
		Timeouts: &meshv1.RouteTimeouts{Request: durationpb.New(10 * time.Second)}}
	headers := &meshv1.Route{Name: "headers", Matches: []*meshv1.Match{{Path: prefix("/h")}}, Backends: backendTo("api"), Filters: filtered.Filters}
	bare := &meshv1.Route{Name: "bare", Backends: backendTo("api")}
	api := &meshv1.Service{Name: "api", Namespace: "default", Ports: []*meshv1.Port{{Name: "http", Port: 80}},
		Routes:    []*meshv1.Route{filtered, headers, bare},
		Endpoints: []*meshv1.Endpoint{{Id: "a", Service: "api", Namespace: "default", Address: "127.0.0.1:1", Identity: spiffeFor("api"), Healthy: true}}}
	if err := p.Update(snapshot("1", api)); err != nil {
		b.Fatal(err)
	}
	cfg := p.cfg.Load()
	svc := cfg.byKey["api.default"]
	for _, pr := range svc.peers {
		pr.h1 = stubH1{stubPeer{}}
		pr.h2.RegisterProtocol("https", stubPeer{})
	}
	for _, tc := range []struct{ name, path string }{{"bare", "/b"}, {"headers", "/h"}, {"headers+timeout", "/f"}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			hdr := http.Header{"User-Agent": []string{"bench"}, "X-Tags": []string{"client"}}
			for b.Loop() {
				ex := p.exchanges.get()
				ex.ctx, ex.clientCtx = context.Background(), context.Background()
				ex.Method, ex.Authority, ex.Path, ex.Header = "GET", "api", tc.path, hdr.Clone()
				ex.Service, ex.Port, ex.cfg, ex.metrics = svc, 80, cfg, svc.metrics
				rt := svc.match(ex, 80)
				ex.Route = rt
				resp := rt.handler.Serve(ex)
				if resp.Status != 200 {
					b.Fatalf("status %d", resp.Status)
				}
				_ = resp.Body.Close()
				ex.release()
			}
		})
	}
}
