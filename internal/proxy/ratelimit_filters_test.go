package proxy

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/ratelimit"
)

func rateLimit(name string, requests uint64, per time.Duration, burst uint64) *meshv1.RateLimit {
	return &meshv1.RateLimit{Name: name, Limit: &meshv1.RateLimitValue{Requests: requests, Period: durationpb.New(per), Burst: burst}}
}

// limitInbound gives srv's proxy an inbound policy of rls (a new version).
func limitInbound(t *testing.T, srv *server, version string, rls ...*meshv1.RateLimit) {
	t.Helper()
	in := &meshv1.Service{Name: srv.name, Namespace: "default", Ports: srv.svc.Ports}
	if err := srv.proxy.Update(&meshv1.Snapshot{Version: version, Inbound: in, InboundPolicy: &meshv1.InboundPolicy{RateLimits: rls}}); err != nil {
		t.Fatal(err)
	}
}

// TestInboundRateLimitThroughProxies: a Service's token bucket on its
// receiving proxy answers 429 with the draft's fields once the burst is
// spent, counts both decisions, and keeps its state across a snapshot that
// does not change it (and only then).
func TestInboundRateLimitThroughProxies(t *testing.T) {
	ca, srvs := newShop(t, "orders")
	srv := srvs[0]
	limitInbound(t, srv, "2", rateLimit("default/orders", 3, time.Minute, 3))
	client, c := clientFor(t, ca, srv.svc, nil)
	_ = client
	for i := range 3 {
		if resp, body := get(t, c, "http://orders/", nil); resp.StatusCode != 200 {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, body)
		}
	}
	resp, body := get(t, c, "http://orders/", nil)
	if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(body, "rate limited by policy default/orders") {
		t.Fatalf("4th request: %d %q, want 429", resp.StatusCode, body)
	}
	for h, want := range map[string]string{
		"Retry-After":      "20",
		"Ratelimit-Policy": `"default/orders";q=3;w=60`,
		"X-Trellis-Error":  "RL",
	} {
		if got := resp.Header.Get(h); got != want {
			t.Errorf("%s: %q, want %q", h, got, want)
		}
	}
	if got := resp.Header.Get("Ratelimit"); !strings.HasPrefix(got, `"default/orders";r=0;t=`) {
		t.Errorf("RateLimit: %q", got)
	}
	assertMetric(t, srv.proxy, `trellis_proxy_ratelimit_decisions_total{decision="allowed",direction="inbound",policy="default/orders"} 3`)
	assertMetric(t, srv.proxy, `trellis_proxy_ratelimit_decisions_total{decision="limited",direction="inbound",policy="default/orders"} 1`)
	assertMetric(t, srv.proxy, `trellis_requests_total{reporter="destination",destination_service="orders",destination_namespace="default",response_code="429",response_flags="RL"} 1`)

	// Same policy, new snapshot: still empty.
	limitInbound(t, srv, "3", rateLimit("default/orders", 3, time.Minute, 3))
	if resp, _ := get(t, c, "http://orders/", nil); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("after an unchanged push: %d, want 429 (the bucket was refilled)", resp.StatusCode)
	}
	// A changed policy starts full.
	limitInbound(t, srv, "4", rateLimit("default/orders", 4, time.Minute, 4))
	if resp, _ := get(t, c, "http://orders/", nil); resp.StatusCode != 200 {
		t.Fatalf("after a changed policy: %d, want 200", resp.StatusCode)
	}
}

// TestInboundRateLimitPerIdentity: per-identity buckets, and an override
// for one caller.
func TestInboundRateLimitPerIdentity(t *testing.T) {
	ca, srvs := newShop(t, "orders")
	srv := srvs[0]
	rl := rateLimit("default/orders", 1, time.Minute, 1)
	rl.Scope = meshv1.RateLimit_SOURCE_IDENTITY
	rl.Overrides = []*meshv1.RateLimitOverride{{Identities: []string{spiffeFor("batch")},
		Limit: &meshv1.RateLimitValue{Requests: 3, Period: durationpb.New(time.Minute), Burst: 3}}}
	limitInbound(t, srv, "2", rl)
	callers := map[string]int{"frontend": 1, "web": 1, "batch": 3}
	for name, want := range callers {
		s := ca.svid(t, spiffeFor(name))
		client := startClient(t, ca, Options{ClientTLS: ca.clientTLS(s)})
		if err := client.Update(snapshot("1", srv.svc)); err != nil {
			t.Fatal(err)
		}
		c := proxyClient(client)
		ok := 0
		for range want + 2 {
			if resp, _ := get(t, c, "http://orders/", nil); resp.StatusCode == 200 {
				ok++
			}
		}
		if ok != want {
			t.Errorf("%s: %d admitted, want %d", name, ok, want)
		}
	}
}

// TestRouteLeakyBucketThroughProxy: a route's leaky bucket on the sending
// proxy admits one request now and queue more, refuses the rest, and
// releases the admitted ones one interval apart.
func TestRouteLeakyBucketThroughProxy(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	var mu sync.Mutex
	var arrivals []time.Time
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		arrivals = append(arrivals, time.Now())
		mu.Unlock()
	}))
	srv := startServer(t, ca, "search", app, port(80, app, meshv1.Protocol_HTTP))
	rl := rateLimit("default/search", 10, time.Second, 2) // 100 ms slots, 2 waiting
	rl.Algorithm = meshv1.RateLimit_LEAKY_BUCKET
	rs := []*meshv1.Route{
		{Name: "default/warm/rules[0]", Matches: []*meshv1.Match{{Path: prefix("/warm")}}, Backends: backendTo("search")},
		{Name: "default/search/rules[0]", Matches: []*meshv1.Match{{Path: prefix("/")}}, Backends: backendTo("search"), RateLimits: []*meshv1.RateLimit{rl}},
	}
	client, c := routed(t, ca, Options{}, rs, srv)
	// Connect to the peer first, so the handshake does not skew the gaps.
	get(t, c, "http://shop/warm", nil)
	mu.Lock()
	arrivals = nil
	mu.Unlock()
	codes := make(chan int, 6)
	var wg sync.WaitGroup
	for range 6 {
		wg.Go(func() {
			resp, _ := get(t, c, "http://shop/", nil)
			codes <- resp.StatusCode
		})
	}
	wg.Wait()
	close(codes)
	n := map[int]int{}
	for code := range codes {
		n[code]++
	}
	if n[200] != 3 || n[429] != 3 {
		t.Fatalf("statuses %v, want 3 admitted (1 + queue 2) and 3 refused", n)
	}
	for i := 1; i < len(arrivals); i++ {
		// 100 ms apart as released, less the jitter of the hop.
		if gap := arrivals[i].Sub(arrivals[i-1]); gap < 80*time.Millisecond {
			t.Errorf("admitted requests %d and %d reached the app %v apart, want ≥ 100 ms", i-1, i, gap)
		}
	}
	assertMetric(t, client, `trellis_proxy_ratelimit_decisions_total{decision="limited",direction="outbound",policy="default/search"} 3`)
}

// TestGRPCRateLimited: a limited gRPC call fails RESOURCE_EXHAUSTED.
func TestGRPCRateLimited(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)
	app := ln.Addr().String()
	srv := startServer(t, ca, "greeter", app, port(9090, app, meshv1.Protocol_GRPC))
	limitInbound(t, srv, "2", rateLimit("default/greeter", 1, time.Minute, 1))
	client := startClient(t, ca, Options{})
	if err := client.Update(snapshot("1", srv.svc)); err != nil {
		t.Fatal(err)
	}
	hc := healthpb.NewHealthClient(greeterConn(t, client))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("first Check: %v", err)
	}
	_, err = hc.Check(ctx, &healthpb.HealthCheckRequest{})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "default/greeter") {
		t.Fatalf("second Check: %v, want ResourceExhausted naming the policy", err)
	}
}

// TestRateLimitNACK: a bad limit refuses the snapshot, naming the field.
func TestRateLimitNACK(t *testing.T) {
	ca, srvs := newShop(t, "orders")
	_ = ca
	in := &meshv1.Service{Name: "orders", Namespace: "default"}
	for _, tc := range []struct {
		rl   *meshv1.RateLimit
		want string
	}{
		{rateLimit("default/a", 0, time.Second, 1), "inbound_policy.rate_limits[0].limit: ratelimit: invalid limit: requests 0"},
		{rateLimit("", 1, time.Second, 1), "inbound_policy.rate_limits[0].name"},
		{&meshv1.RateLimit{Name: "default/a"}, "inbound_policy.rate_limits[0].limit: required"},
		{&meshv1.RateLimit{Name: "default/a", Scope: meshv1.RateLimit_HEADER, Limit: rateLimit("x", 1, time.Second, 1).Limit}, "inbound_policy.rate_limits[0].header"},
	} {
		err := srvs[0].proxy.Update(&meshv1.Snapshot{Version: "x", Inbound: in, InboundPolicy: &meshv1.InboundPolicy{RateLimits: []*meshv1.RateLimit{tc.rl}}})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err %v, want %q", tc.rl, err, tc.want)
		}
	}
}

// BenchmarkRateLimitFilter: one inbound decision through the filter, the
// clock read included, to a handler that answers at once.
func BenchmarkRateLimitFilter(b *testing.B) {
	for _, algo := range []meshv1.RateLimit_Algorithm{meshv1.RateLimit_TOKEN_BUCKET, meshv1.RateLimit_LEAKY_BUCKET} {
		b.Run(algo.String(), func(b *testing.B) {
			p, err := New(Options{})
			if err != nil {
				b.Fatal(err)
			}
			rl := rateLimit("default/bench", 1_000_000_000, time.Second, 0)
			rl.Algorithm = algo
			specs, err := compileRateLimits("bench", []*meshv1.RateLimit{rl})
			if err != nil {
				b.Fatal(err)
			}
			lims := p.bindRateLimits("inbound", "service", specs, map[string]*ratelimit.Entry{})
			ok := &Response{Status: 200}
			h := p.routeRateLimitFilter(lims)(HandlerFunc(func(*Exchange) *Response { return ok }))
			ex := &Exchange{Header: http.Header{}, ctx: context.Background()}
			b.ReportAllocs()
			for b.Loop() {
				h.Serve(ex)
			}
		})
	}
}

// TestGlobalLimitSafeShare: before any grant a global limit runs on the
// limit ÷ the endpoints of the proxy's own service in its snapshot, and
// follows that count when it changes.
func TestGlobalLimitSafeShare(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	p, err := New(Options{Service: "inventory", ClientTLS: ca.clientTLS(ca.svid(t, spiffeFor("inventory")))})
	if err != nil {
		t.Fatal(err)
	}
	rl := rateLimit("default/inventory", 300, time.Second, 30)
	rl.Global = true
	snap := func(version string, n int) *meshv1.Snapshot {
		own := &meshv1.Service{Name: "inventory", Namespace: "default"}
		for i := range n {
			own.Endpoints = append(own.Endpoints, &meshv1.Endpoint{Id: fmt.Sprint(i), Address: fmt.Sprintf("127.0.0.1:%d", 1000+i), Identity: spiffeFor("inventory"), Healthy: true})
		}
		return &meshv1.Snapshot{Version: version, Inbound: &meshv1.Service{Name: "inventory", Namespace: "default"},
			Services: []*meshv1.Service{own}, InboundPolicy: &meshv1.InboundPolicy{RateLimits: []*meshv1.RateLimit{rl}}}
	}
	share := func() float64 {
		e := p.cfg.Load().inbound.rateLimits[0].entry
		return e.Policy().Share()
	}
	if err := p.Update(snap("1", 3)); err != nil {
		t.Fatal(err)
	}
	if got := share(); got != 1.0/3 {
		t.Errorf("3 endpoints: share %v, want 1/3", got)
	}
	if err := p.Update(snap("2", 2)); err != nil {
		t.Fatal(err)
	}
	if got := share(); got != 0.5 {
		t.Errorf("2 endpoints: share %v, want 1/2", got)
	}
	if d := p.RateLimits().Demands(); len(d) != 1 || d[0].Limit.Requests != 300 {
		t.Errorf("demands %+v, want the one global limit", d)
	}
}
