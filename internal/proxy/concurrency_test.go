package proxy

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/concurrency"
)

// fixedLimit is a policy whose limit stays n: min = max = initial.
func fixedLimit(n uint32) *meshv1.InboundPolicy {
	return &meshv1.InboundPolicy{Concurrency: &meshv1.ConcurrencyPolicy{
		MinLimit: n, MaxLimit: n, InitialLimit: n, Interval: durationpb.New(time.Second),
		MinRttInterval: durationpb.New(time.Minute), MinRttRequests: 5, Percentile: 0.9, Buffer: 0.25, Jitter: 0.1,
	}}
}

func withInboundPolicy(t *testing.T, s *server, version string, ip *meshv1.InboundPolicy) error {
	t.Helper()
	return s.proxy.Update(&meshv1.Snapshot{Version: version, Inbound: &meshv1.Service{Name: s.name, Namespace: "default", Ports: s.svc.Ports}, InboundPolicy: ip})
}

// gatedApp holds every request until release is closed.
type gatedApp struct {
	arrived chan struct{}
	release chan struct{}
}

func (a *gatedApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.arrived <- struct{}{}
	<-a.release
	_, _ = w.Write([]byte("ok"))
}

// TestConcurrencyLimitSheds: through real proxies, an inbound proxy with a
// limit of 2 lets two requests reach its app and sheds a third at once
// with 503 CL (a gRPC one with grpc-status 14), counts it, reports it, and
// admits again once the app has answered.
func TestConcurrencyLimitSheds(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	app := &gatedApp{arrived: make(chan struct{}, 8), release: make(chan struct{})}
	srv := startServer(t, ca, "api", startApp(t, app))
	if err := withInboundPolicy(t, srv, "2", fixedLimit(2)); err != nil {
		t.Fatal(err)
	}
	client := startClient(t, ca, Options{})
	if err := client.Update(snapshot("1", srv.svc)); err != nil {
		t.Fatal(err)
	}
	c := proxyClient(client)
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			if resp, body := get(t, c, "http://api/slow", nil); resp.StatusCode != 200 || body != "ok" {
				t.Errorf("admitted request: %d %q", resp.StatusCode, body)
			}
		})
	}
	for range 2 {
		<-app.arrived
	}
	resp, body := get(t, c, "http://api/over", nil)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Trellis-Error") != "CL" || !strings.Contains(body, "concurrency limit") {
		t.Fatalf("third request: %d %q %q, want 503 CL", resp.StatusCode, resp.Header.Get("X-Trellis-Error"), body)
	}
	resp, _ = get(t, c, "http://api/pkg.Svc/Call", map[string]string{"Content-Type": "application/grpc"})
	if resp.StatusCode != 200 || resp.Header.Get("Grpc-Status") != "14" {
		t.Fatalf("gRPC request over the limit: %d grpc-status %q, want 200 with 14 (UNAVAILABLE)", resp.StatusCode, resp.Header.Get("Grpc-Status"))
	}
	if limit, shed := srv.proxy.ConcurrencyStatus(); limit != 2 || shed != 2 {
		t.Fatalf("status limit %d shed %d, want 2 and 2", limit, shed)
	}
	if got := metricValue(t, srv.proxy, "trellis_proxy_concurrency_shed_total", `service="api.default"`); got != 2 {
		t.Fatalf("shed metric %v, want 2", got)
	}
	if got := metricValue(t, srv.proxy, "trellis_proxy_concurrency_limit", `service="api.default"`); got != 2 {
		t.Fatalf("limit metric %v, want 2", got)
	}
	assertMetric(t, srv.proxy, `trellis_requests_total{reporter="destination",destination_service="api",destination_namespace="default",response_code="503",response_flags="CL"} 1`)
	close(app.release)
	wg.Wait()
	if resp, body := get(t, c, "http://api/again", nil); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("after the app answered: %d %q", resp.StatusCode, body)
	}
}

// TestConcurrencyLimiterKeptAcrossSnapshots: an unchanged policy keeps the
// limiter (and what it learnt); a changed one replaces it; none removes
// it, while the shed total never goes back; an invalid one is refused
// with the field named and changes nothing.
func TestConcurrencyLimiterKeptAcrossSnapshots(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	srv := startServer(t, ca, "api", startApp(t, http.NotFoundHandler()))
	if err := withInboundPolicy(t, srv, "2", fixedLimit(1)); err != nil {
		t.Fatal(err)
	}
	first := srv.proxy.cfg.Load().inbound.limiter
	tok, _ := first.Acquire()
	first.Acquire() // shed: the limit is 1
	if err := withInboundPolicy(t, srv, "3", fixedLimit(1)); err != nil {
		t.Fatal(err)
	}
	if got := srv.proxy.cfg.Load().inbound.limiter; got != first {
		t.Fatal("an unchanged policy got a new limiter: what it learnt is lost")
	}
	bad := fixedLimit(1)
	bad.Concurrency.MaxLimit = 0
	bad.Concurrency.MinLimit = 5
	err := withInboundPolicy(t, srv, "4", bad)
	if err == nil || !strings.Contains(err.Error(), "inbound_policy.concurrency") || !strings.Contains(err.Error(), "maxLimit") {
		t.Fatalf("invalid policy: %v, want a NACK naming inbound_policy.concurrency", err)
	}
	if got := srv.proxy.cfg.Load().inbound.limiter; got != first {
		t.Fatal("a refused snapshot changed the limiter")
	}
	if err := withInboundPolicy(t, srv, "5", fixedLimit(3)); err != nil {
		t.Fatal(err)
	}
	if got := srv.proxy.cfg.Load().inbound.limiter; got == first || got.Limit() != 3 {
		t.Fatalf("a changed policy kept the old limiter (limit %d)", got.Limit())
	}
	first.Release(tok, time.Millisecond, true)
	if err := withInboundPolicy(t, srv, "6", nil); err != nil {
		t.Fatal(err)
	}
	if srv.proxy.cfg.Load().inbound.limiter != nil {
		t.Fatal("limiter left after the policy went away")
	}
	if limit, shed := srv.proxy.ConcurrencyStatus(); limit != 0 || shed != 1 {
		t.Fatalf("status without a policy: limit %d shed %d, want 0 and 1 (shed totals never go back)", limit, shed)
	}
}

// TestConcurrencyFilterAllocs: an admitted request costs the limit no
// allocation (atomics, a histogram bucket, two clock readings).
func TestConcurrencyFilterAllocs(t *testing.T) {
	c := &compiled{}
	cfg, err := compileConcurrency(fixedLimit(4).GetConcurrency())
	if err != nil {
		t.Fatal(err)
	}
	if c.inbound.limiter, err = concurrency.New(*cfg); err != nil {
		t.Fatal(err)
	}
	ok := &Response{Status: 200}
	h := concurrencyFilter(HandlerFunc(func(*Exchange) *Response { return ok }))
	ex := &Exchange{cfg: c, ctx: t.Context(), clientCtx: t.Context()}
	if n := testing.AllocsPerRun(1000, func() { h.Serve(ex) }); n != 0 {
		t.Fatalf("%v allocations per admitted request, want 0", n)
	}
	if c.inbound.limiter.InFlight() != 0 {
		t.Fatal("a slot leaked")
	}
}
