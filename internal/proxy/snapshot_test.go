package proxy

import (
	"bufio"
	"bytes"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/lb"
	"trellis.dev/trellis/internal/meshname"
	"trellis.dev/trellis/internal/telemetry"

	"github.com/prometheus/client_golang/prometheus"
)

func testEnv(t testing.TB) compileEnv {
	m, err := telemetry.NewProxyMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return compileEnv{
		ownNS:    "default",
		balancer: lb.RoundRobin,
		picker:   func(_ string, cfg lb.Config, eps []*lb.Endpoint) (lb.Picker, error) { return lb.NewPicker(cfg, eps) },
		endpoint: func(_, addr string) *lb.Endpoint { return lb.NewEndpoint(addr) },
		peer:     func(addr, id string) *peer { return &peer{addr: addr, identity: id} },
		metrics:  m.Dest,
	}
}

func backendSvc(name string) *meshv1.Service {
	return &meshv1.Service{Name: name, Namespace: "default"}
}

func TestRouteMatchTable(t *testing.T) {
	routes := []*meshv1.Route{
		{Name: "exact", Matches: []*meshv1.Match{{Path: &meshv1.PathMatch{Type: meshv1.PathMatch_EXACT, Value: "/exact"}}},
			Backends: []*meshv1.Backend{{Service: "b-exact", Weight: 1}}},
		{Name: "regex", Matches: []*meshv1.Match{{Path: &meshv1.PathMatch{Type: meshv1.PathMatch_REGEX, Value: "/items/[0-9]+"}}},
			Backends: []*meshv1.Backend{{Service: "b-regex", Weight: 1}}},
		{Name: "header-and-method", Matches: []*meshv1.Match{{
			Method:  "POST",
			Headers: []*meshv1.HeaderMatch{{Name: "x-user", Value: "alice"}, {Type: meshv1.HeaderMatch_REGEX, Name: "x-ver", Value: "v[23]"}},
		}}, Backends: []*meshv1.Backend{{Service: "b-header", Weight: 1}}},
		{Name: "port-81", Port: 81, Backends: []*meshv1.Backend{{Service: "b-port", Weight: 1}}},
		{Name: "prefix-or", Matches: []*meshv1.Match{
			{Path: &meshv1.PathMatch{Type: meshv1.PathMatch_PREFIX, Value: "/api/"}},
			{Path: &meshv1.PathMatch{Type: meshv1.PathMatch_PREFIX, Value: "/v2"}},
		}, Backends: []*meshv1.Backend{{Service: "b-prefix", Weight: 1}}},
	}
	svc := &meshv1.Service{Name: "front", Namespace: "default", Routes: routes}
	snap := &meshv1.Snapshot{Services: []*meshv1.Service{svc,
		backendSvc("b-exact"), backendSvc("b-regex"), backendSvc("b-header"), backendSvc("b-port"), backendSvc("b-prefix")}}
	c, err := compile(snap, testEnv(t))
	if err != nil {
		t.Fatal(err)
	}
	front := c.byHost["front"]
	for _, tc := range []struct {
		method, path string
		port         uint32
		hdr          map[string]string
		want         string // backend service name, "" for no match
	}{
		{"GET", "/exact", 80, nil, "b-exact"},
		{"GET", "/exact/", 80, nil, ""},
		{"GET", "/items/42", 80, nil, "b-regex"},
		{"GET", "/items/42/x", 80, nil, ""}, // regex is anchored
		{"GET", "/items/abc", 80, nil, ""},
		{"POST", "/x", 80, map[string]string{"X-User": "alice", "X-Ver": "v3"}, "b-header"},
		{"GET", "/x", 80, map[string]string{"X-User": "alice", "X-Ver": "v3"}, ""},
		{"POST", "/x", 80, map[string]string{"X-User": "alice", "X-Ver": "v4"}, ""},
		{"POST", "/x", 80, map[string]string{"X-User": "bob", "X-Ver": "v2"}, ""},
		{"POST", "/x", 80, map[string]string{"X-Ver": "v2"}, ""},
		{"GET", "/anything", 81, nil, "b-port"},
		{"GET", "/api", 80, nil, "b-prefix"},
		{"GET", "/api/users", 80, nil, "b-prefix"},
		{"GET", "/apix", 80, nil, ""}, // prefix is element-wise
		{"GET", "/v2", 80, nil, "b-prefix"},
		{"GET", "/v2/x", 80, nil, "b-prefix"},
		{"GET", "/v23", 80, nil, ""},
		{"GET", "/exact", 81, nil, "b-exact"}, // snapshot order wins over the port route
	} {
		ex := &Exchange{Method: tc.method, Path: tc.path, Header: http.Header{}}
		for k, v := range tc.hdr {
			ex.Header.Set(k, v)
		}
		rt := front.match(ex, tc.port)
		got := ""
		if rt != nil {
			got = strings.TrimSuffix(rt.pick(rand.Uint32N).svc.key, ".default")
		}
		if got != tc.want {
			t.Errorf("%s %s port %d %v: routed to %q, want %q", tc.method, tc.path, tc.port, tc.hdr, got, tc.want)
		}
	}
}

func TestHostAliases(t *testing.T) {
	snap := &meshv1.Snapshot{Domain: "corp.example", Services: []*meshv1.Service{
		backendSvc("orders"),
		{Name: "orders", Namespace: "shop"},
		{Name: "billing", Namespace: "shop"},
	}}
	c, err := compile(snap, testEnv(t))
	if err != nil {
		t.Fatal(err)
	}
	for host, want := range map[string]string{
		"orders":                         "orders.default", // own namespace wins
		"orders.default":                 "orders.default",
		"orders.shop":                    "orders.shop",
		"orders.shop.svc":                "orders.shop",
		"orders.shop.svc.corp.example":   "orders.shop",
		"billing":                        "billing.shop", // unique name
		"orders.shop.svc.trellis.local":  "",
		"orders.shop.svc.corp.example.x": "",
	} {
		got := ""
		if s := c.byHost[host]; s != nil {
			got = s.key
		}
		if got != want {
			t.Errorf("%s → %q, want %q", host, got, want)
		}
	}
}

// TestWeightedPickBoundaries checks the cumulative-weight intervals
// exactly: weights 1,2,1 give cum 1,3,4, and draws 0..3 land on backends
// 0,1,1,2. An off-by-one (n <= c) sends draw 1 to backend 0 and 3 to 1.
func TestWeightedPickBoundaries(t *testing.T) {
	cum := []uint32{1, 3, 4}
	for n, want := range []int{0, 1, 1, 2} {
		if got := pickBackend(cum, uint32(n)); got != want {
			t.Errorf("draw %d → backend %d, want %d", n, got, want)
		}
	}
}

// TestWeightedPick drives the compiled route's pick with a seeded source: a
// zero-weight backend is never chosen and a 1:1 split is within ±2% over
// 10,000 picks (a 70/20/10 tolerance would hide an off-by-one; this does not).
func TestWeightedPick(t *testing.T) {
	svc := &meshv1.Service{Name: "front", Namespace: "default", Routes: []*meshv1.Route{{Backends: []*meshv1.Backend{
		{Service: "a", Weight: 1}, {Service: "zero", Weight: 0}, {Service: "b", Weight: 1},
	}}}}
	env := testEnv(t)
	r := rand.New(rand.NewPCG(1, 2))
	env.randN = r.Uint32N
	c, err := compile(&meshv1.Snapshot{Services: []*meshv1.Service{svc, backendSvc("a"), backendSvc("b"), backendSvc("zero")}}, env)
	if err != nil {
		t.Fatal(err)
	}
	rt := &c.byHost["front"].routes[0]
	if len(rt.backends) != 2 || rt.cum[0] != 1 || rt.cum[1] != 2 {
		t.Fatalf("compiled backends %d, cum %v; want 2 backends, cum [1 2]", len(rt.backends), rt.cum)
	}
	counts := map[string]int{}
	const n = 10000
	for range n {
		counts[rt.pick(env.randN).svc.key]++
	}
	if counts["zero.default"] != 0 {
		t.Fatalf("zero-weight backend chosen %d times", counts["zero.default"])
	}
	for _, k := range []string{"a.default", "b.default"} {
		if got := float64(counts[k]) / n; got < 0.48 || got > 0.52 {
			t.Errorf("%s got %.3f of picks, want 0.50±0.02 (all: %v)", k, got, counts)
		}
	}
}

func TestSplitAuthority(t *testing.T) {
	for _, tc := range []struct {
		in   string
		host string
		port uint32
		ok   bool
	}{
		{"orders", "orders", 0, true},
		{"Orders.Default:8080", "orders.default", 8080, true},
		{"orders.", "orders", 0, true},
		{"[::1]:443", "::1", 443, true},
		{"[::1]", "::1", 0, true},
		{"", "", 0, false},
		{":80", "", 0, false},
		{"orders:", "", 0, false},
		{"orders:0", "", 0, false},
		{"orders:65536", "", 0, false},
		{"orders:+80", "", 0, false},
		{"a:1:2", "", 0, false},
		{"[::1", "", 0, false},
		{"[::1]x", "", 0, false},
		{"or ders", "", 0, false},
		{"0..", "", 0, false},
		{".orders", "", 0, false},
		{"a..b", "", 0, false},
		{"orders/x", "", 0, false},
		{"user@orders", "", 0, false},
	} {
		host, port, err := splitAuthority(tc.in)
		if (err == nil) != tc.ok || host != tc.host || port != tc.port {
			t.Errorf("splitAuthority(%q) = %q, %d, %v", tc.in, host, port, err)
		}
	}
}

func FuzzSplitAuthority(f *testing.F) {
	for _, s := range []string{"orders", "orders.default:80", "[::1]:8080", "ORDERS.", "a:b:c", "[", "x:99999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		host, port, err := splitAuthority(s)
		if err != nil {
			return
		}
		if host == "" || port > 65535 || host != strings.ToLower(host) || strings.HasSuffix(host, ".") && !strings.HasPrefix(s, "[") {
			t.Fatalf("splitAuthority(%q) = %q, %d", s, host, port)
		}
		if name, ns, ok := meshname.ParseHost(host, "default", "trellis.local"); ok && (!meshname.IsLabel(name) || !meshname.IsLabel(ns)) {
			t.Fatalf("ParseHost(%q) = %q, %q", host, name, ns)
		}
	})
}

func TestPreamble(t *testing.T) {
	for _, tc := range []struct {
		in   string
		port uint32
		ok   bool
	}{
		{"5432\n", 5432, true},
		{"1\nextra", 1, true},
		{"65535\n", 65535, true},
		{"65536\n", 0, false},
		{"0\n", 0, false},
		{"\n", 0, false},
		{"abc\n", 0, false},
		{"123456789\n", 0, false}, // longer than the preamble allows
		{"80", 0, false},          // no newline before EOF
	} {
		br := bufio.NewReader(strings.NewReader(tc.in))
		var port uint32
		line, err := readLine(br, maxPreamble)
		if err == nil {
			port, err = parsePreamble(line)
		}
		if (err == nil) != tc.ok || port != tc.port {
			t.Errorf("preamble %q = %d, %v", tc.in, port, err)
		}
	}
}

func FuzzPreamble(f *testing.F) {
	for _, s := range []string{"5432\n", "0\n", "99999\n", "\n", "12a\n", "80"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		br := bufio.NewReader(bytes.NewReader(b))
		line, err := readLine(br, maxPreamble)
		if err != nil {
			return
		}
		if len(line) >= maxPreamble || bytes.IndexByte(line, '\n') >= 0 {
			t.Fatalf("line %q too long or holds a newline", line)
		}
		port, err := parsePreamble(line)
		if err == nil && (port == 0 || port > 65535) {
			t.Fatalf("port %d accepted from %q", port, line)
		}
	})
}
