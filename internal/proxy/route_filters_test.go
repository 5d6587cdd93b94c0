package proxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// namedApp answers "<name> <host> <path>?<query>" so a test sees where a
// request went and what arrived.
func namedApp(t testing.TB, name string) string {
	return startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, name+" "+r.Host+" "+r.URL.RequestURI())
	}))
}

// routed builds a mesh "shop" whose routes are rs, backed by servers; the
// client proxy gets the snapshot.
func routed(t *testing.T, ca *testCA, opts Options, rs []*meshv1.Route, servers ...*server) (*Proxy, *http.Client) {
	t.Helper()
	shop := &meshv1.Service{Name: "shop", Namespace: "default", Ports: []*meshv1.Port{{Name: "http", Port: 80}}, Routes: rs}
	svcs := []*meshv1.Service{shop}
	for _, s := range servers {
		svcs = append(svcs, s.svc)
	}
	client := startClient(t, ca, opts)
	if err := client.Update(snapshot("1", svcs...)); err != nil {
		t.Fatal(err)
	}
	return client, proxyClient(client)
}

func backendTo(name string) []*meshv1.Backend {
	return []*meshv1.Backend{{Service: name, Namespace: "default", Weight: 1}}
}

func prefix(p string) *meshv1.PathMatch {
	return &meshv1.PathMatch{Type: meshv1.PathMatch_PREFIX, Value: p}
}

// newShop starts the named backends behind their own proxies.
func newShop(t *testing.T, names ...string) (*testCA, []*server) {
	t.Helper()
	ca := newTestCA(t, "trellis.local")
	var out []*server
	for _, n := range names {
		out = append(out, startServer(t, ca, n, namedApp(t, n), port(80, "127.0.0.1:1", meshv1.Protocol_HTTP)))
	}
	return ca, out
}

func TestQueryParamMatchThroughProxies(t *testing.T) {
	ca, srvs := newShop(t, "v1", "v2")
	_, c := routed(t, ca, Options{}, []*meshv1.Route{
		{Name: "q", Matches: []*meshv1.Match{{Path: prefix("/"), QueryParams: []*meshv1.QueryParamMatch{
			{Name: "version", Value: "2"},
			{Name: "debug", Type: meshv1.QueryParamMatch_REGEX, Value: "1|true"},
		}}}, Backends: backendTo("v2")},
		{Name: "rest", Backends: backendTo("v1")},
	}, srvs...)
	for _, tc := range []struct{ query, want string }{
		{"version=2&debug=true", "v2"},
		{"debug=1&version=2", "v2"},
		{"version=2&version=3&debug=1", "v2"},
		{"version=3&version=2&debug=1", "v1"}, // only the first of a name counts
		{"version&version=2&debug=1", "v1"},   // even when it is empty
		{"version=2", "v1"},
		{"version=2&debug=yes", "v1"}, // regex matches the whole value
		{"ver%73ion=%32&debug=1", "v2"},
		{"Version=2&debug=1", "v1"}, // names are case-sensitive
		{"", "v1"},
	} {
		_, body := get(t, c, "http://shop/x?"+tc.query, nil)
		if !strings.HasPrefix(body, tc.want+" ") {
			t.Errorf("?%s went to %q, want %s", tc.query, body, tc.want)
		}
	}
}

func TestURLRewriteThroughProxies(t *testing.T) {
	ca, srvs := newShop(t, "api")
	rewrite := func(host string, typ meshv1.PathModifier_Type, v string) []*meshv1.RouteFilter {
		return []*meshv1.RouteFilter{{Filter: &meshv1.RouteFilter_UrlRewrite{UrlRewrite: &meshv1.URLRewrite{
			Hostname: host, Path: &meshv1.PathModifier{Type: typ, Value: v}}}}}
	}
	_, c := routed(t, ca, Options{}, []*meshv1.Route{
		{Name: "prefix", Matches: []*meshv1.Match{{Path: prefix("/old")}, {Path: prefix("/legacy/api")}}, Backends: backendTo("api"),
			Filters: rewrite("", meshv1.PathModifier_REPLACE_PREFIX_MATCH, "/v2")},
		{Name: "strip", Matches: []*meshv1.Match{{Path: prefix("/strip")}}, Backends: backendTo("api"),
			Filters: rewrite("", meshv1.PathModifier_REPLACE_PREFIX_MATCH, "/")},
		{Name: "full", Matches: []*meshv1.Match{{Path: &meshv1.PathMatch{Type: meshv1.PathMatch_EXACT, Value: "/full"}}}, Backends: backendTo("api"),
			Filters: rewrite("api.internal", meshv1.PathModifier_REPLACE_FULL_PATH, "/replaced")},
	}, srvs...)
	for _, tc := range []struct{ path, want string }{
		{"/old", "api shop /v2"},
		{"/old/items/7?x=1", "api shop /v2/items/7?x=1"},
		{"/legacy/api/a", "api shop /v2/a"}, // the match that matched, not the first
		{"/strip/a/b", "api shop /a/b"},
		{"/strip", "api shop /"},
		{"/full?q=1", "api api.internal /replaced?q=1"},
	} {
		if _, body := get(t, c, "http://shop"+tc.path, nil); body != tc.want {
			t.Errorf("%s arrived as %q, want %q", tc.path, body, tc.want)
		}
	}
}

func TestRedirectThroughProxy(t *testing.T) {
	ca, srvs := newShop(t, "api")
	redirect := func(r *meshv1.RequestRedirect) []*meshv1.RouteFilter {
		return []*meshv1.RouteFilter{{Filter: &meshv1.RouteFilter_RequestRedirect{RequestRedirect: r}}}
	}
	_, c := routed(t, ca, Options{}, []*meshv1.Route{
		{Name: "https", Matches: []*meshv1.Match{{Path: prefix("/secure")}}, Filters: redirect(&meshv1.RequestRedirect{Scheme: "https", StatusCode: 301})},
		{Name: "moved", Matches: []*meshv1.Match{{Path: prefix("/old")}},
			Filters: redirect(&meshv1.RequestRedirect{Hostname: "new.example", Port: 8080, Path: &meshv1.PathModifier{Type: meshv1.PathModifier_REPLACE_PREFIX_MATCH, Value: "/new"}})},
		{Name: "rest", Backends: backendTo("api")},
	}, srvs...)
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	for _, tc := range []struct {
		url, host string
		status    int
		location  string
	}{
		{"http://shop/secure/a?b=1", "shop", 301, "https://shop/secure/a?b=1"},
		{"http://shop:80/secure", "shop:8080", 301, "https://shop/secure"}, // a scheme given: its well-known port
		{"http://shop/old/x", "shop:8081", 302, "http://new.example:8080/new/x"},
	} {
		resp, _ := get(t, c, tc.url, map[string]string{"Host": tc.host})
		if resp.StatusCode != tc.status || resp.Header.Get("Location") != tc.location {
			t.Errorf("%s (Host %s): %d %q, want %d %q", tc.url, tc.host, resp.StatusCode, resp.Header.Get("Location"), tc.status, tc.location)
		}
	}
	if _, body := get(t, c, "http://shop/other", nil); !strings.HasPrefix(body, "api ") {
		t.Errorf("other paths still reach the backend: %q", body)
	}
}

// TestMirrorNeverTouchesTheResponse: a mirror that takes 2 s and one that
// fails leave the response as fast and as good as without them; copies
// arrive at the mirror; with the bound reached, further copies are dropped
// and counted, not queued.
func TestMirrorNeverTouchesTheResponse(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	primary := startServer(t, ca, "primary", namedApp(t, "primary"), port(80, "127.0.0.1:1", meshv1.Protocol_HTTP))
	var slowSeen atomic.Int32
	release := make(chan struct{})
	slowApp := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		slowSeen.Add(1)
		select {
		case <-release:
		case <-time.After(2 * time.Second):
		}
		w.WriteHeader(200)
	}))
	slow := startServer(t, ca, "slow-mirror", slowApp, port(80, "127.0.0.1:1", meshv1.Protocol_HTTP))
	var failSeen atomic.Int32
	failApp := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		failSeen.Add(1)
		if h, ok := w.(http.Hijacker); ok {
			conn, _, _ := h.Hijack()
			conn.Close() // a broken mirror: the connection dies
		}
	}))
	failing := startServer(t, ca, "failing-mirror", failApp, port(80, "127.0.0.1:1", meshv1.Protocol_HTTP))
	mirrorTo := func(name string) *meshv1.RouteFilter {
		return &meshv1.RouteFilter{Filter: &meshv1.RouteFilter_RequestMirror{RequestMirror: &meshv1.RequestMirror{
			Backend: &meshv1.Backend{Service: name, Namespace: "default"}}}}
	}
	client, c := routed(t, ca, Options{MaxMirrors: 4}, []*meshv1.Route{
		{Name: "mirrored", Backends: backendTo("primary"), Filters: []*meshv1.RouteFilter{mirrorTo("slow-mirror"), mirrorTo("failing-mirror")}},
	}, primary, slow, failing)
	defer close(release)

	const n = 10
	start := time.Now()
	for i := range n {
		resp, body := get(t, c, "http://shop/m", nil)
		if resp.StatusCode != 200 || !strings.HasPrefix(body, "primary ") {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("%d mirrored requests took %v: the mirror's latency reached the response", n, d)
	}
	// 4 slots: the slow mirror holds up to 4; the failing one frees its
	// slot at once. So of 20 copies, at least 20-4-n(failing) are dropped...
	waitFor(t, func() bool { return slowSeen.Load() >= 1 && failSeen.Load() >= 1 })
	if got := slowSeen.Load(); got > 4 {
		t.Errorf("the slow mirror has %d copies in flight, over the bound of 4", got)
	}
	metrics := scrapeText(t, client)
	dropped := mirrorMetric(metrics, `trellis_proxy_mirror_requests_total{result="dropped"}`)
	if dropped < n-4 {
		t.Errorf("dropped mirrors = %v, want at least %d:\n%s", dropped, n-4, grepLines(metrics, "mirror"))
	}
	waitFor(t, func() bool {
		return mirrorMetric(scrapeText(t, client), `trellis_proxy_mirror_requests_total{result="failed"}`) >= 1
	})
}

func waitFor(t *testing.T, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func scrapeText(t *testing.T, p *Proxy) string {
	t.Helper()
	resp, err := http.Get("http://" + p.AdminAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// mirrorMetric is the value of the metric line starting with series, or -1.
func mirrorMetric(text, series string) float64 {
	for l := range strings.SplitSeq(text, "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			var f float64
			for _, c := range v {
				if c < '0' || c > '9' {
					break
				}
				f = f*10 + float64(c-'0')
			}
			return f
		}
	}
	return -1
}

func faultFilterOf(f *meshv1.Fault) []*meshv1.RouteFilter {
	return []*meshv1.RouteFilter{{Filter: &meshv1.RouteFilter_Fault{Fault: f}}}
}

func TestFaultAbortThroughProxies(t *testing.T) {
	ca, srvs := newShop(t, "api")
	client, c := routed(t, ca, Options{}, []*meshv1.Route{
		{Name: "always", Matches: []*meshv1.Match{{Path: prefix("/always")}}, Backends: backendTo("api"),
			Filters: faultFilterOf(&meshv1.Fault{Abort: &meshv1.FaultAbort{HttpStatus: 418, Percent: 100}})},
		{Name: "half", Matches: []*meshv1.Match{{Path: prefix("/half")}}, Backends: backendTo("api"),
			Filters: faultFilterOf(&meshv1.Fault{Abort: &meshv1.FaultAbort{HttpStatus: 503, Percent: 50}})},
		{Name: "never", Backends: backendTo("api"),
			Filters: faultFilterOf(&meshv1.Fault{Abort: &meshv1.FaultAbort{HttpStatus: 503, Percent: 0}})},
	}, srvs...)
	resp, body := get(t, c, "http://shop/always", nil)
	if resp.StatusCode != 418 || resp.Header.Get("X-Trellis-Error") != "FI" || !strings.Contains(body, "fault injected by route always") {
		t.Fatalf("abort: %d %q %q", resp.StatusCode, resp.Header.Get("X-Trellis-Error"), body)
	}
	if resp, body := get(t, c, "http://shop/other", nil); resp.StatusCode != 200 || !strings.HasPrefix(body, "api ") {
		t.Fatalf("0%%: %d %q", resp.StatusCode, body)
	}
	aborted := 0
	const n = 200
	for range n {
		if resp, _ := get(t, c, "http://shop/half", nil); resp.StatusCode == 503 {
			aborted++
		}
	}
	// Binomial(200, 0.5): 100 ± 7; outside 60..140 is a broken draw.
	if aborted < 60 || aborted > 140 {
		t.Errorf("50%% abort aborted %d of %d", aborted, n)
	}
	assertMetric(t, client, `trellis_requests_total{reporter="source",destination_service="shop",destination_namespace="default",response_code="418",response_flags="FI",route="always"} 1`)
}

func TestFaultDelayThroughProxies(t *testing.T) {
	ca, srvs := newShop(t, "api")
	client, c := routed(t, ca, Options{}, []*meshv1.Route{
		{Name: "slow", Backends: backendTo("api"), Timeouts: &meshv1.RouteTimeouts{Request: durationpb.New(100 * time.Millisecond)},
			Filters: faultFilterOf(&meshv1.Fault{Delay: &meshv1.FaultDelay{FixedDelay: durationpb.New(300 * time.Millisecond), Percent: 100}})},
	}, srvs...)
	start := time.Now()
	resp, body := get(t, c, "http://shop/x", nil)
	// The delay comes before the route's timeout: delayed, not timed out.
	if d := time.Since(start); resp.StatusCode != 200 || d < 300*time.Millisecond || !strings.HasPrefix(body, "api ") {
		t.Fatalf("delay: %d %q after %v", resp.StatusCode, body, d)
	}
	assertMetric(t, client, `trellis_requests_total{reporter="source",destination_service="api",destination_namespace="default",response_code="200",response_flags="DI"} 1`)
}

// TestFaultDelaySynctest: the delay holds the request exactly its
// duration, a client that leaves during it ends it at once, and delay and
// abort draw independently.
func TestFaultDelaySynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var reached int
		next := HandlerFunc(func(*Exchange) *Response { reached++; return &Response{Status: 200} })
		f, err := compileFault("f", &meshv1.Fault{Delay: &meshv1.FaultDelay{FixedDelay: durationpb.New(2 * time.Second), Percent: 100}})
		if err != nil {
			t.Fatal(err)
		}
		h := faultFilter(f, func(uint32) uint32 { return 0 })(next)
		ex := testExchange()
		start := time.Now()
		if resp := h.Serve(ex); resp.Status != 200 || time.Since(start) != 2*time.Second || ex.Flags != FlagDI || reached != 1 {
			t.Fatalf("delay: %d after %v, flags %v, reached %d", resp.Status, time.Since(start), ex.Flags, reached)
		}
		ex.release()

		ctx, cancel := context.WithCancel(context.Background())
		ex = testExchange()
		ex.ctx, ex.clientCtx = ctx, ctx
		time.AfterFunc(500*time.Millisecond, cancel)
		start = time.Now()
		if resp := h.Serve(ex); resp.Status != statusClientClosed || time.Since(start) != 500*time.Millisecond || reached != 1 {
			t.Fatalf("client gone: %d after %v, reached %d", resp.Status, time.Since(start), reached)
		}
		ex.release()

		// 10% delay, 10% abort: a draw of 50,000 ppm (5%) hits both.
		f, _ = compileFault("f", &meshv1.Fault{
			Delay: &meshv1.FaultDelay{FixedDelay: durationpb.New(time.Second), Percent: 10},
			Abort: &meshv1.FaultAbort{HttpStatus: 503, Percent: 10},
		})
		for _, tc := range []struct {
			draw   uint32
			status int
			wait   time.Duration
		}{{50_000, 503, time.Second}, {150_000, 200, 0}} {
			h = faultFilter(f, func(uint32) uint32 { return tc.draw })(next)
			ex = testExchange()
			ex.Route = &route{name: "r"}
			start = time.Now()
			if resp := h.Serve(ex); resp.Status != tc.status || time.Since(start) != tc.wait {
				t.Errorf("draw %d: %d after %v, want %d after %v", tc.draw, resp.Status, time.Since(start), tc.status, tc.wait)
			}
			ex.release()
		}
	})
}

// TestGRPCFaultAbort: a gRPC call gets the configured grpc-status in an
// HTTP 200 (the client sees that code, not a transport error), and a
// route matching a gRPC method by path takes only that method.
func TestGRPCFaultAbort(t *testing.T) {
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
	greeter := srv.svc
	greeter.Routes = []*meshv1.Route{
		{Name: "watch-fails", Matches: []*meshv1.Match{{Path: &meshv1.PathMatch{Type: meshv1.PathMatch_EXACT, Value: "/grpc.health.v1.Health/Watch"}}},
			Backends: backendTo("greeter"), Filters: faultFilterOf(&meshv1.Fault{Abort: &meshv1.FaultAbort{HttpStatus: 503, GrpcStatus: ptr(uint32(8)), Percent: 100}})},
		{Name: "rest", Backends: backendTo("greeter")},
	}
	client := startClient(t, ca, Options{})
	if err := client.Update(snapshot("1", greeter)); err != nil {
		t.Fatal(err)
	}
	hc := healthpb.NewHealthClient(greeterConn(t, client))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("Check (no fault): %v", err)
	}
	w, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err == nil {
		_, err = w.Recv()
	}
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "fault injected") {
		t.Fatalf("Watch: %v, want ResourceExhausted from the injected fault", err)
	}
	assertMetric(t, client, `trellis_requests_total{reporter="source",destination_service="greeter",destination_namespace="default",response_code="200",response_flags="FI"} 1`)
}

func ptr[T any](v T) *T { return &v }

func TestPathRewrite(t *testing.T) {
	pm := func(p string) *match { return &match{hasPath: true, pathType: meshv1.PathMatch_PREFIX, path: p} }
	for _, tc := range []struct {
		prefix, value, path, want string
	}{
		{"/foo", "/bar", "/foo", "/bar"},
		{"/foo", "/bar", "/foo/x", "/bar/x"},
		{"/foo", "/bar/", "/foo/x", "/bar/x"},
		{"/foo", "/", "/foo/x", "/x"},
		{"/foo", "/", "/foo", "/"},
		{"/foo", "/", "/foo/", "/"},
		{"/", "/v2", "/x", "/v2/x"},
		{"/", "/v2", "/", "/v2"},
		{"/", "/", "/x", "/x"},
	} {
		pr := &pathRewrite{prefix: true, value: tc.value}
		if got := pr.apply(tc.path, pm(tc.prefix)); got != tc.want {
			t.Errorf("prefix %s → %s on %s = %s, want %s", tc.prefix, tc.value, tc.path, got, tc.want)
		}
	}
}

func TestFilterSnapshotRefusals(t *testing.T) {
	env := testEnv(t)
	bad := func(f *meshv1.RouteFilter, ms ...*meshv1.Match) *meshv1.Snapshot {
		api := &meshv1.Service{Name: "api", Namespace: "default", Routes: []*meshv1.Route{{Name: "r", Matches: ms, Backends: backendTo("api"), Filters: []*meshv1.RouteFilter{f}}}}
		return snapshot("1", api)
	}
	for _, tc := range []struct {
		name string
		snap *meshv1.Snapshot
		want string
	}{
		{"mirror to a service not in the snapshot", bad(&meshv1.RouteFilter{Filter: &meshv1.RouteFilter_RequestMirror{RequestMirror: &meshv1.RequestMirror{Backend: &meshv1.Backend{Service: "nope"}}}}),
			"filters[0].request_mirror.backend.service: nope.default is not in the snapshot"},
		{"prefix rewrite on an exact match", bad(&meshv1.RouteFilter{Filter: &meshv1.RouteFilter_UrlRewrite{UrlRewrite: &meshv1.URLRewrite{Path: &meshv1.PathModifier{Type: meshv1.PathModifier_REPLACE_PREFIX_MATCH, Value: "/a"}}}},
			&meshv1.Match{Path: &meshv1.PathMatch{Type: meshv1.PathMatch_EXACT, Value: "/x"}}), "REPLACE_PREFIX_MATCH needs PathPrefix matches"},
		{"abort status", bad(&meshv1.RouteFilter{Filter: &meshv1.RouteFilter_Fault{Fault: &meshv1.Fault{Abort: &meshv1.FaultAbort{HttpStatus: 99}}}}), "abort.http_status: 99 is not 200..599"},
		{"fault percent", bad(&meshv1.RouteFilter{Filter: &meshv1.RouteFilter_Fault{Fault: &meshv1.Fault{Delay: &meshv1.FaultDelay{Percent: 120}}}}), "delay.percent: 120 is not 0..100"},
		{"redirect status", bad(&meshv1.RouteFilter{Filter: &meshv1.RouteFilter_RequestRedirect{RequestRedirect: &meshv1.RequestRedirect{StatusCode: 200}}}), "request_redirect.status_code: 200 is not a redirect status"},
		{"query regex", snapshot("1", &meshv1.Service{Name: "api", Namespace: "default", Routes: []*meshv1.Route{{Name: "r", Backends: backendTo("api"),
			Matches: []*meshv1.Match{{QueryParams: []*meshv1.QueryParamMatch{{Name: "a", Type: meshv1.QueryParamMatch_REGEX, Value: "("}}}}}}}), "query_params[0].value: bad regex"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := compile(tc.snap, env)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("compile: %v, want %q", err, tc.want)
			}
		})
	}
}

// TestMirrorCopiesBodies: a request body reaches both the backend and the
// mirror, whether its length is known or streamed (chunked); one over
// 64 KiB reaches only the backend, and the drop is counted.
func TestMirrorCopiesBodies(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	echo := func(name string, seen chan<- string) string {
		return startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			if seen != nil {
				seen <- string(b)
			}
			_, _ = io.WriteString(w, name+" got "+strconv.Itoa(len(b)))
		}))
	}
	mirrored := make(chan string, 8)
	primary := startServer(t, ca, "primary", echo("primary", nil), port(80, "127.0.0.1:1", meshv1.Protocol_HTTP))
	shadow := startServer(t, ca, "shadow", echo("shadow", mirrored), port(80, "127.0.0.1:1", meshv1.Protocol_HTTP))
	client, c := routed(t, ca, Options{}, []*meshv1.Route{{Name: "m", Backends: backendTo("primary"),
		Filters: []*meshv1.RouteFilter{{Filter: &meshv1.RouteFilter_RequestMirror{RequestMirror: &meshv1.RequestMirror{
			Backend: &meshv1.Backend{Service: "shadow", Namespace: "default"}}}}}}}, primary, shadow)
	post := func(body io.Reader) string {
		t.Helper()
		resp, err := c.Post("http://shop/orders", "text/plain", body)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if got := post(strings.NewReader("sku=42")); got != "primary got 6" {
		t.Fatalf("primary answered %q", got)
	}
	if got := <-mirrored; got != "sku=42" {
		t.Fatalf("mirror got %q", got)
	}
	// Over HTTP/1.1 between proxies too (the copy completes at EOF, which
	// that transport also reads for a body of known length).
	client.hopH2 = false
	if got := post(strings.NewReader("sku=43")); got != "primary got 6" {
		t.Fatalf("primary answered %q (HTTP/1.1 hop)", got)
	}
	select {
	case got := <-mirrored:
		if got != "sku=43" {
			t.Fatalf("mirror got %q (HTTP/1.1 hop)", got)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("a body of known length sent over HTTP/1.1 was not mirrored")
	}
	client.hopH2 = true
	pr, pw := io.Pipe()
	go func() { _, _ = io.WriteString(pw, "streamed"); pw.Close() }()
	if got := post(pr); got != "primary got 8" { // no length: chunked
		t.Fatalf("primary answered %q", got)
	}
	if got := <-mirrored; got != "streamed" {
		t.Fatalf("mirror got %q", got)
	}
	big := strings.Repeat("x", 70<<10)
	pr, pw = io.Pipe()
	go func() { _, _ = io.WriteString(pw, big); pw.Close() }()
	if got := post(pr); got != "primary got "+strconv.Itoa(len(big)) {
		t.Fatalf("primary answered %q", got)
	}
	waitFor(t, func() bool {
		return mirrorMetric(scrapeText(t, client), `trellis_proxy_mirror_requests_total{result="dropped"}`) == 1
	})
	select {
	case got := <-mirrored:
		t.Fatalf("a %d-byte body was mirrored (%d bytes)", len(big), len(got))
	case <-time.After(200 * time.Millisecond):
	}
}
