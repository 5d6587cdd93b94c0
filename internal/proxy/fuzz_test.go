package proxy

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

func fuzzSeedSnapshots() []*meshv1.Snapshot {
	ep := func(a string) *meshv1.Endpoint {
		return &meshv1.Endpoint{Address: a, Identity: spiffeFor("x"), Healthy: true}
	}
	hm := &meshv1.HeaderModifier{Set: []*meshv1.HeaderValue{{Name: "x-a", Value: "1"}}, Add: []*meshv1.HeaderValue{{Name: "x-b", Value: "2"}}, Remove: []string{"x-c"}}
	return []*meshv1.Snapshot{
		{},
		snapshot("1", &meshv1.Service{Name: "orders", Namespace: "default", Ports: []*meshv1.Port{{Port: 80}, {Port: 82, Protocol: meshv1.Protocol_TCP}},
			Endpoints: []*meshv1.Endpoint{ep("127.0.0.1:1"), ep("127.0.0.1:2")}}),
		snapshot("2",
			&meshv1.Service{Name: "reviews", Namespace: "default",
				BackendPolicy: &meshv1.BackendPolicy{LoadBalancer: meshv1.LoadBalancer_ROUND_ROBIN},
				Routes: []*meshv1.Route{{
					Name:     "r0",
					Port:     80,
					Matches:  []*meshv1.Match{{Path: &meshv1.PathMatch{Type: meshv1.PathMatch_PREFIX, Value: "/api/"}, Method: "GET", Headers: []*meshv1.HeaderMatch{{Name: "x-v", Value: "2"}}}},
					Backends: []*meshv1.Backend{{Service: "v1", Weight: 3}, {Service: "v2", Weight: 1, Port: 8080}},
					Filters: []*meshv1.RouteFilter{
						{Filter: &meshv1.RouteFilter_RequestHeaderModifier{RequestHeaderModifier: hm}},
						{Filter: &meshv1.RouteFilter_ResponseHeaderModifier{ResponseHeaderModifier: hm}},
					},
					Timeouts: &meshv1.RouteTimeouts{Request: durationpb.New(time.Second), BackendRequest: durationpb.New(time.Second / 2)},
				}, {
					Matches:  []*meshv1.Match{{Path: &meshv1.PathMatch{Type: meshv1.PathMatch_REGEX, Value: "/items/[0-9]+"}}},
					Backends: []*meshv1.Backend{{Service: "v2", Namespace: "default", Weight: 1}},
				}}},
			&meshv1.Service{Name: "v1", Namespace: "default", Endpoints: []*meshv1.Endpoint{ep("127.0.0.1:3")}},
			&meshv1.Service{Name: "v2", Namespace: "default"}),
		rateLimitedSeed(),
	}
}

// rateLimitedSeed has inbound and route rate limits of every kind.
func rateLimitedSeed() *meshv1.Snapshot {
	rl := func(name string, algo meshv1.RateLimit_Algorithm, scope meshv1.RateLimit_Scope) *meshv1.RateLimit {
		return &meshv1.RateLimit{Name: name, Algorithm: algo, Scope: scope, Header: "x-tenant", MaxKeys: 10, Global: scope == meshv1.RateLimit_WHOLE,
			Limit:     &meshv1.RateLimitValue{Requests: 5, Period: durationpb.New(time.Second), Burst: 2},
			Overrides: []*meshv1.RateLimitOverride{{Identities: []string{spiffeFor("batch")}, Limit: &meshv1.RateLimitValue{Requests: 9, Period: durationpb.New(time.Minute)}}}}
	}
	s := snapshot("3", &meshv1.Service{Name: "orders", Namespace: "default", Routes: []*meshv1.Route{{
		Name: "default/r/rules[0]", Backends: []*meshv1.Backend{{Service: "orders", Weight: 1}},
		RateLimits: []*meshv1.RateLimit{rl("default/a", meshv1.RateLimit_LEAKY_BUCKET, meshv1.RateLimit_HEADER)},
	}}})
	s.InboundPolicy = &meshv1.InboundPolicy{RateLimits: []*meshv1.RateLimit{
		rl("default/b", meshv1.RateLimit_TOKEN_BUCKET, meshv1.RateLimit_WHOLE),
		rl("default/c", meshv1.RateLimit_TOKEN_BUCKET, meshv1.RateLimit_SOURCE_IDENTITY),
	}}
	return s
}

// FuzzCompileSnapshot: any bytes that decode as a Snapshot compile or are
// refused with ErrInvalidSnapshot, never panic; an accepted snapshot's
// routes are consistent with its services.
func FuzzCompileSnapshot(f *testing.F) {
	for _, s := range fuzzSeedSnapshots() {
		b, err := proto.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var s meshv1.Snapshot
		if proto.Unmarshal(b, &s) != nil {
			return
		}
		c, err := compile(&s, testEnv(t))
		if err != nil {
			if !strings.Contains(err.Error(), ErrInvalidSnapshot.Error()) {
				t.Fatalf("refusal without ErrInvalidSnapshot: %v", err)
			}
			return
		}
		for host, svc := range c.byHost {
			if c.byKey[svc.key] != svc {
				t.Fatalf("host %s → a service not in byKey", host)
			}
		}
		for key, svc := range c.byKey {
			checkCompiledService(t, c, key, svc)
		}
	})
}

func checkCompiledService(t *testing.T, c *compiled, key string, svc *service) {
	t.Helper()
	if svc.key != key || svc.picker == nil || svc.metrics == nil || len(svc.eps) != len(svc.peers) {
		t.Fatalf("%s: incomplete service", key)
	}
	if len(svc.routes) == 0 {
		t.Fatalf("%s: no routes (want at least the default)", key)
	}
	for i := range svc.routes {
		rt := &svc.routes[i]
		if rt.handler == nil || len(rt.backends) == 0 || len(rt.backends) != len(rt.cum) {
			t.Fatalf("%s route %d: handler %v, %d backends, %d weights", key, i, rt.handler != nil, len(rt.backends), len(rt.cum))
		}
		var prev uint32
		for j, b := range rt.backends {
			if c.byKey[b.svc.key] != b.svc {
				t.Fatalf("%s route %d backend %d: service not in the snapshot", key, i, j)
			}
			if rt.cum[j] <= prev {
				t.Fatalf("%s route %d: cumulative weights %v not increasing", key, i, rt.cum)
			}
			prev = rt.cum[j]
		}
		if rt.timeout > 0 && rt.attemptTimeout > rt.timeout {
			t.Fatalf("%s route %d: attempt timeout %v > request timeout %v", key, i, rt.attemptTimeout, rt.timeout)
		}
	}
}

// FuzzRouteMatch matches random request shapes against a compiled table:
// no panic, the first matching route wins, and a prefix route matches
// exactly its path elements (Gateway API PathPrefix).
func FuzzRouteMatch(f *testing.F) {
	prefixes := []string{"/api", "/v2/", "/"}
	var routes []*meshv1.Route
	for i, p := range prefixes[:2] {
		routes = append(routes, &meshv1.Route{
			Name:     "prefix" + p,
			Matches:  []*meshv1.Match{{Path: &meshv1.PathMatch{Type: meshv1.PathMatch_PREFIX, Value: p}}},
			Backends: []*meshv1.Backend{{Service: "b", Weight: uint32(i + 1)}},
		})
	}
	routes = append([]*meshv1.Route{
		{Name: "exact", Matches: []*meshv1.Match{{Path: &meshv1.PathMatch{Type: meshv1.PathMatch_EXACT, Value: "/exact"}}}, Backends: []*meshv1.Backend{{Service: "b", Weight: 1}}},
		{Name: "header", Matches: []*meshv1.Match{{Method: "POST", Headers: []*meshv1.HeaderMatch{{Type: meshv1.HeaderMatch_REGEX, Name: "x-v", Value: "v[0-9]"}}}}, Backends: []*meshv1.Backend{{Service: "b", Weight: 1}}},
	}, routes...)
	snap := &meshv1.Snapshot{Services: []*meshv1.Service{{Name: "front", Namespace: "default", Routes: routes}, backendSvc("b")}}
	for _, s := range []struct{ method, path, hdr string }{
		{"GET", "/api", ""}, {"GET", "/api/x", ""}, {"GET", "/apix", ""}, {"GET", "/v2", ""}, {"GET", "/v2/a", ""},
		{"POST", "/", "v1"}, {"GET", "/exact", ""}, {"GET", "", ""}, {"PUT", "//api", "v"},
	} {
		f.Add(s.method, s.path, s.hdr, uint16(80))
	}
	c, err := compile(snap, testEnv(f))
	if err != nil {
		f.Fatal(err)
	}
	front := c.byKey["front.default"]
	f.Fuzz(func(t *testing.T, method, path, hdr string, port uint16) {
		ex := &Exchange{Method: method, Path: path, Header: http.Header{}}
		if hdr != "" {
			ex.Header["X-V"] = []string{hdr}
		}
		rt := front.match(ex, uint32(port))
		for i := range front.routes {
			r := &front.routes[i]
			if r == rt {
				break
			}
			for j := range r.matches {
				if r.matches[j].ok(ex) {
					t.Fatalf("route %s matched %q before the chosen one", r.name, path)
				}
			}
		}
		p := path
		if p == "" {
			p = "/"
		}
		for _, pre := range []string{"/api", "/v2"} {
			want := p == pre || strings.HasPrefix(p, pre+"/")
			if got := prefixMatch(pre, p); got != want {
				t.Fatalf("prefixMatch(%q, %q) = %v, want %v", pre, p, got, want)
			}
		}
		if rt != nil && strings.HasPrefix(rt.name, "prefix") {
			pre := strings.TrimSuffix(strings.TrimPrefix(rt.name, "prefix"), "/")
			if p != pre && !strings.HasPrefix(p, pre+"/") {
				t.Fatalf("%q routed by prefix %q", p, pre)
			}
		}
	})
}

// FuzzRemoveHopHeaders: after removal no hop-by-hop header survives, nor
// any header the Connection header named, and TE is only "trailers".
func FuzzRemoveHopHeaders(f *testing.F) {
	for _, s := range []string{
		"Connection: keep-alive, X-Secret\nX-Secret: 1\nKeep-Alive: timeout=5",
		"Te: trailers, deflate\nTransfer-Encoding: chunked\nUpgrade: websocket",
		"Connection: te\nTe: trailers",
		"Te: gzip\nProxy-Connection: close\nConnection: ,, x-a , \nX-A: b",
		"Trailer: X-T\nX-T: v\nConnection: Connection",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		h := http.Header{}
		for line := range strings.SplitSeq(raw, "\n") {
			k, v, _ := strings.Cut(line, ":")
			if k = strings.TrimSpace(k); k != "" {
				h.Add(k, strings.TrimSpace(v))
			}
		}
		named := append([]string(nil), h["Connection"]...)
		removeHopHeaders(h)
		for _, k := range hopHeaders {
			if _, ok := h[k]; ok {
				t.Fatalf("hop-by-hop %s survived: %v", k, h)
			}
		}
		for _, v := range named {
			for tok := range strings.SplitSeq(v, ",") {
				if tok = strings.TrimSpace(tok); tok == "" {
					continue
				}
				if _, ok := h[http.CanonicalHeaderKey(tok)]; ok {
					t.Fatalf("%s, named by Connection, survived: %v", tok, h)
				}
			}
		}
		if te, ok := h["Te"]; ok && (len(te) != 1 || te[0] != "trailers") {
			t.Fatalf("TE = %q, want only trailers", te)
		}
	})
}

// hopHeaders, the list the tests hold hopHeader to: dropped at every hop (RFC 9110 §7.6.1, plus the de-facto
// Keep-Alive and Proxy-Connection). TE is handled separately.
var hopHeaders = [...]string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Trailer", "Transfer-Encoding", "Upgrade",
	// Connection-specific by RFC 7540 §3.2.1: it only ever rides an h2c
	// upgrade, which the proxy does not take (upgradeType).
	"Http2-Settings",
}

// TestHopHeaderList: the switch in hopHeader names exactly hopHeaders and TE.
func TestHopHeaderList(t *testing.T) {
	for _, k := range append(hopHeaders[:], "Te") {
		if !hopHeader(k) {
			t.Errorf("%s is hop-by-hop", k)
		}
		h := http.Header{k: {"x"}, "Content-Type": {"text/plain"}}
		removeHopHeaders(h)
		if _, ok := h[k]; ok && k != "Te" {
			t.Errorf("%s survived removeHopHeaders", k)
		}
		if len(h["Content-Type"]) != 1 {
			t.Errorf("removing %s took Content-Type too: %v", k, h)
		}
	}
	for _, k := range []string{"Content-Type", "Content-Length", "Host", "Connection-Id", "Tee"} {
		if hopHeader(k) {
			t.Errorf("%s is end-to-end", k)
		}
	}
}
