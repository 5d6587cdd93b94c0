package authz

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

const (
	web   = "spiffe://trellis.local/ns/shop/sa/web"
	batch = "spiffe://trellis.local/ns/shop/sa/batch-7"
	other = "spiffe://trellis.local/ns/ops/sa/admin"
)

func id(s string) *meshv1.AuthzSource {
	return &meshv1.AuthzSource{Match: &meshv1.AuthzSource_Identity{Identity: s}}
}
func idPrefix(s string) *meshv1.AuthzSource {
	return &meshv1.AuthzSource{Match: &meshv1.AuthzSource_IdentityPrefix{IdentityPrefix: s}}
}
func ns(s string) *meshv1.AuthzSource {
	return &meshv1.AuthzSource{Match: &meshv1.AuthzSource_Namespace{Namespace: s}}
}
func anyAuth() *meshv1.AuthzSource {
	return &meshv1.AuthzSource{Match: &meshv1.AuthzSource_Authenticated{Authenticated: true}}
}
func exact(p string) *meshv1.AuthzPath {
	return &meshv1.AuthzPath{Match: &meshv1.AuthzPath_Exact{Exact: p}}
}
func prefix(p string) *meshv1.AuthzPath {
	return &meshv1.AuthzPath{Match: &meshv1.AuthzPath_Prefix{Prefix: p}}
}

func pol(name string, deny bool, rules ...*meshv1.AuthzRule) *meshv1.AuthzPolicy {
	a := meshv1.AuthzAction_AUTHZ_ALLOW
	if deny {
		a = meshv1.AuthzAction_AUTHZ_DENY
	}
	return &meshv1.AuthzPolicy{Name: name, Action: a, Rules: rules}
}

func mustCompile(t testing.TB, defDeny bool, ps ...*meshv1.AuthzPolicy) *Engine {
	t.Helper()
	az := &meshv1.Authorization{Policies: ps}
	if defDeny {
		az.DefaultAction = meshv1.AuthzAction_AUTHZ_DENY
	}
	e, err := Compile(az)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func get(peer, p string) *Facts {
	return &Facts{PeerID: peer, Port: 80, Method: "GET", Path: p, Header: http.Header{}}
}

func TestDecide(t *testing.T) {
	allowWeb := pol("shop/allow-web", false, &meshv1.AuthzRule{From: []*meshv1.AuthzSource{id(web)}})
	denyAdmin := pol("shop/deny-admin", true, &meshv1.AuthzRule{Paths: []*meshv1.AuthzPath{prefix("/admin")}})
	tests := []struct {
		name    string
		defDeny bool
		pols    []*meshv1.AuthzPolicy
		facts   *Facts
		allow   bool
		reason  Reason
		policy  int
		rule    int
	}{
		{"no policy default allow", false, nil, get(web, "/"), true, ReasonDefault, -1, -1},
		{"no policy default deny", true, nil, get(web, "/"), false, ReasonDefault, -1, -1},
		{"allow exact", false, []*meshv1.AuthzPolicy{allowWeb}, get(web, "/"), true, ReasonAllowed, 0, 0},
		{"allow exact, other id", false, []*meshv1.AuthzPolicy{allowWeb}, get(other, "/"), false, ReasonNoAllowMatch, -1, -1},
		{"allow beats default deny", true, []*meshv1.AuthzPolicy{allowWeb}, get(web, "/"), true, ReasonAllowed, 0, 0},
		{"unauthenticated never matches a source", false, []*meshv1.AuthzPolicy{allowWeb}, get("", "/"), false, ReasonNoAllowMatch, -1, -1},
		{"deny before allow", false, []*meshv1.AuthzPolicy{allowWeb, denyAdmin}, get(web, "/admin/x"), false, ReasonDenied, 1, 0},
		{"deny prefix by segment", false, []*meshv1.AuthzPolicy{denyAdmin}, get(web, "/administrator"), true, ReasonDefault, -1, -1},
		{"deny sees dot segments", false, []*meshv1.AuthzPolicy{denyAdmin}, get(web, "/public/../admin"), false, ReasonDenied, 0, 0},
		{"deny sees double slash", false, []*meshv1.AuthzPolicy{denyAdmin}, get(web, "//admin"), false, ReasonDenied, 0, 0},
		{"prefix id", false, []*meshv1.AuthzPolicy{pol("a/p", false, &meshv1.AuthzRule{From: []*meshv1.AuthzSource{idPrefix("spiffe://trellis.local/ns/shop/sa/batch-")}})}, get(batch, "/"), true, ReasonAllowed, 0, 0},
		{"prefix id miss", false, []*meshv1.AuthzPolicy{pol("a/p", false, &meshv1.AuthzRule{From: []*meshv1.AuthzSource{idPrefix("spiffe://trellis.local/ns/shop/sa/batch-")}})}, get(web, "/"), false, ReasonNoAllowMatch, -1, -1},
		{"namespace", false, []*meshv1.AuthzPolicy{pol("a/p", false, &meshv1.AuthzRule{From: []*meshv1.AuthzSource{ns("shop")}})}, get(batch, "/"), true, ReasonAllowed, 0, 0},
		{"namespace miss", false, []*meshv1.AuthzPolicy{pol("a/p", false, &meshv1.AuthzRule{From: []*meshv1.AuthzSource{ns("shop")}})}, get(other, "/"), false, ReasonNoAllowMatch, -1, -1},
		{"namespace not a sa named like it", false, []*meshv1.AuthzPolicy{pol("a/p", false, &meshv1.AuthzRule{From: []*meshv1.AuthzSource{ns("shop")}})}, get("spiffe://td/ns/ops/sa/ns/shop/sa/x", "/"), false, ReasonNoAllowMatch, -1, -1},
		{"namespace, extra path segments", false, []*meshv1.AuthzPolicy{pol("a/p", false, &meshv1.AuthzRule{From: []*meshv1.AuthzSource{ns("shop")}})}, get("spiffe://td/ns/shop/sa/a/b", "/"), false, ReasonNoAllowMatch, -1, -1},
		{"any authenticated", false, []*meshv1.AuthzPolicy{pol("a/p", false, &meshv1.AuthzRule{From: []*meshv1.AuthzSource{anyAuth()}})}, get(other, "/"), true, ReasonAllowed, 0, 0},
		{"any authenticated, plaintext", false, []*meshv1.AuthzPolicy{pol("a/p", false, &meshv1.AuthzRule{From: []*meshv1.AuthzSource{anyAuth()}})}, get("", "/"), false, ReasonNoAllowMatch, -1, -1},
		{"empty rule matches all", false, []*meshv1.AuthzPolicy{pol("a/p", false, &meshv1.AuthzRule{})}, get("", "/"), true, ReasonAllowed, 0, 0},
		{"method", false, []*meshv1.AuthzPolicy{pol("a/p", false, &meshv1.AuthzRule{Methods: []string{"POST"}})}, get(web, "/"), false, ReasonNoAllowMatch, -1, -1},
		{"second rule", false, []*meshv1.AuthzPolicy{pol("a/p", false, &meshv1.AuthzRule{Methods: []string{"POST"}}, &meshv1.AuthzRule{Paths: []*meshv1.AuthzPath{exact("/x")}})}, get(web, "/x"), true, ReasonAllowed, 0, 1},
		{"exact path miss", false, []*meshv1.AuthzPolicy{pol("a/p", false, &meshv1.AuthzRule{Paths: []*meshv1.AuthzPath{exact("/x")}})}, get(web, "/x/"), false, ReasonNoAllowMatch, -1, -1},
		{"port", false, []*meshv1.AuthzPolicy{pol("a/p", false, &meshv1.AuthzRule{Ports: []uint32{8080}})}, get(web, "/"), false, ReasonNoAllowMatch, -1, -1},
		{"header exact", false, []*meshv1.AuthzPolicy{pol("a/p", false, &meshv1.AuthzRule{Headers: []*meshv1.AuthzHeader{{Name: "X-Tenant", Match: &meshv1.AuthzHeader_Exact{Exact: "acme"}}}})}, &Facts{PeerID: web, Port: 80, Method: "GET", Path: "/", Header: http.Header{"X-Tenant": {"other", "acme"}}}, true, ReasonAllowed, 0, 0},
		{"header exact miss", false, []*meshv1.AuthzPolicy{pol("a/p", false, &meshv1.AuthzRule{Headers: []*meshv1.AuthzHeader{{Name: "X-Tenant", Match: &meshv1.AuthzHeader_Exact{Exact: "acme"}}}})}, &Facts{PeerID: web, Port: 80, Method: "GET", Path: "/", Header: http.Header{"X-Tenant": {"acme2"}}}, false, ReasonNoAllowMatch, -1, -1},
		{"header present", false, []*meshv1.AuthzPolicy{pol("a/p", false, &meshv1.AuthzRule{Headers: []*meshv1.AuthzHeader{{Name: "X-Debug", Match: &meshv1.AuthzHeader_Present{Present: true}}}})}, get(web, "/"), false, ReasonNoAllowMatch, -1, -1},
		{"grpc method", false, []*meshv1.AuthzPolicy{pol("a/p", false, &meshv1.AuthzRule{Grpc: []*meshv1.AuthzGRPC{{Service: "shop.Orders", Method: "Get"}}})}, &Facts{PeerID: web, Path: "/shop.Orders/Get", GRPC: true}, true, ReasonAllowed, 0, 0},
		{"grpc other method", false, []*meshv1.AuthzPolicy{pol("a/p", false, &meshv1.AuthzRule{Grpc: []*meshv1.AuthzGRPC{{Service: "shop.Orders", Method: "Get"}}})}, &Facts{PeerID: web, Path: "/shop.Orders/Delete", GRPC: true}, false, ReasonNoAllowMatch, -1, -1},
		{"grpc any method", false, []*meshv1.AuthzPolicy{pol("a/p", false, &meshv1.AuthzRule{Grpc: []*meshv1.AuthzGRPC{{Service: "shop.Orders"}}})}, &Facts{PeerID: web, Path: "/shop.Orders/Delete", GRPC: true}, true, ReasonAllowed, 0, 0},
		{"grpc on an http port", false, []*meshv1.AuthzPolicy{pol("a/p", false, &meshv1.AuthzRule{Grpc: []*meshv1.AuthzGRPC{{Service: "shop.Orders"}}})}, &Facts{PeerID: web, Path: "/shop.Orders/Delete"}, false, ReasonNoAllowMatch, -1, -1},
		{"tcp: allow rule with http conditions does not match", false, []*meshv1.AuthzPolicy{pol("a/p", false, &meshv1.AuthzRule{From: []*meshv1.AuthzSource{id(web)}, Paths: []*meshv1.AuthzPath{prefix("/")}})}, &Facts{PeerID: web, Port: 80, TCP: true}, false, ReasonNoAllowMatch, -1, -1},
		{"tcp: allow by id and port", false, []*meshv1.AuthzPolicy{pol("a/p", false, &meshv1.AuthzRule{From: []*meshv1.AuthzSource{id(web)}, Ports: []uint32{80}})}, &Facts{PeerID: web, Port: 80, TCP: true}, true, ReasonAllowed, 0, 0},
		{"tcp: deny rule with http conditions denies", false, []*meshv1.AuthzPolicy{pol("a/p", true, &meshv1.AuthzRule{From: []*meshv1.AuthzSource{id(web)}, Methods: []string{"DELETE"}})}, &Facts{PeerID: web, Port: 80, TCP: true}, false, ReasonDenied, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := mustCompile(t, tt.defDeny, tt.pols...)
			d := e.Decide(tt.facts)
			want := Decision{Allow: tt.allow, Reason: tt.reason, Policy: tt.policy, Rule: tt.rule}
			if d != want {
				t.Fatalf("Decide = %+v, want %+v", d, want)
			}
			ex := e.Explain(tt.facts)
			if ex.Decision != d {
				t.Fatalf("Explain decision %+v != Decide %+v", ex.Decision, d)
			}
		})
	}
}

func TestCompileRefuses(t *testing.T) {
	bad := []struct {
		name string
		p    *meshv1.AuthzPolicy
		want string
	}{
		{"no name", &meshv1.AuthzPolicy{Rules: []*meshv1.AuthzRule{{}}}, "name: empty"},
		{"no rules", pol("a/b", false), "rules: empty"},
		{"bad action", &meshv1.AuthzPolicy{Name: "a/b", Action: 9, Rules: []*meshv1.AuthzRule{{}}}, "action"},
		{"bad id", pol("a/b", false, &meshv1.AuthzRule{From: []*meshv1.AuthzSource{id("web")}}), "want spiffe://"},
		{"empty source", pol("a/b", false, &meshv1.AuthzRule{From: []*meshv1.AuthzSource{{}}}), "from[0]: no match"},
		{"port 0", pol("a/b", false, &meshv1.AuthzRule{Ports: []uint32{0}}), "ports[0]"},
		{"lower method", pol("a/b", false, &meshv1.AuthzRule{Methods: []string{"get"}}), "methods[0]"},
		{"relative path", pol("a/b", false, &meshv1.AuthzRule{Paths: []*meshv1.AuthzPath{exact("x")}}), "paths[0]"},
		{"header name", pol("a/b", false, &meshv1.AuthzRule{Headers: []*meshv1.AuthzHeader{{Name: "x-a", Match: &meshv1.AuthzHeader_Present{Present: true}}}}), "canonical"},
		{"grpc slash", pol("a/b", false, &meshv1.AuthzRule{Grpc: []*meshv1.AuthzGRPC{{Service: "a/b"}}}), "grpc[0]"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Compile(&meshv1.Authorization{Policies: []*meshv1.AuthzPolicy{tt.p}})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
	if _, err := Compile(&meshv1.Authorization{DefaultAction: 7}); err == nil {
		t.Fatal("bad default action accepted")
	}
	e, err := Compile(nil)
	if err != nil || !e.Decide(get("", "/")).Allow {
		t.Fatalf("nil authorization: %v, must allow", err)
	}
}

func TestExplain(t *testing.T) {
	e := mustCompile(t, false,
		pol("shop/allow", false, &meshv1.AuthzRule{From: []*meshv1.AuthzSource{id(web)}}, &meshv1.AuthzRule{Methods: []string{"POST"}}),
		pol("shop/deny", true, &meshv1.AuthzRule{Paths: []*meshv1.AuthzPath{prefix("/admin")}}),
	)
	ex := e.Explain(get(other, "/x"))
	if ex.Decision.Allow || ex.Decision.Reason != ReasonNoAllowMatch {
		t.Fatalf("decision %+v", ex.Decision)
	}
	// DENY first.
	if len(ex.Policies) != 2 || ex.Policies[0].Name != "shop/deny" || ex.Policies[1].Name != "shop/allow" {
		t.Fatalf("order %+v", ex.Policies)
	}
	if got := ex.Policies[1].Rules; got[0].Failed != CondFrom || got[1].Failed != CondMethods {
		t.Fatalf("rule traces %+v", got)
	}
	if got := ex.Policies[0].Rules[0].Failed; got != CondPaths {
		t.Fatalf("deny trace %v", got)
	}
}

func TestCleanPath(t *testing.T) {
	for in, want := range map[string]string{
		"":            "/",
		"/":           "/",
		"/a/b":        "/a/b",
		"/a/./b":      "/a/b",
		"/a/../b":     "/b",
		"//a":         "/a",
		"/a/":         "/a/",
		"/a/..":       "/",
		"/..a/b.":     "/..a/b.",
		"/a/.../b":    "/a/.../b",
		"/x/..//y/./": "/y/",
	} {
		if got := cleanPath(in); got != want {
			t.Errorf("cleanPath(%q) = %q, want %q", in, got, want)
		}
	}
}

// hundredRules is one ALLOW policy of 100 rules, each an identity and a
// path prefix, and one DENY policy of a rule: the request that matches the
// last rule walks all of them.
func hundredRules(b testing.TB) *Engine {
	var rules []*meshv1.AuthzRule
	for i := range 100 {
		rules = append(rules, &meshv1.AuthzRule{
			From:    []*meshv1.AuthzSource{id(fmt.Sprintf("spiffe://trellis.local/ns/shop/sa/client-%d", i))},
			Methods: []string{"GET", "POST"},
			Paths:   []*meshv1.AuthzPath{prefix(fmt.Sprintf("/api/v%d", i))},
		})
	}
	return mustCompile(b, false,
		pol("shop/deny-debug", true, &meshv1.AuthzRule{Headers: []*meshv1.AuthzHeader{{Name: "X-Debug", Match: &meshv1.AuthzHeader_Present{Present: true}}}}),
		pol("shop/allow-clients", false, rules...),
	)
}

func BenchmarkAuthz100Rules(b *testing.B) {
	e := hundredRules(b)
	f := &Facts{PeerID: "spiffe://trellis.local/ns/shop/sa/client-99", Port: 80, Method: "POST",
		Path: "/api/v99/orders", Header: http.Header{"Content-Type": {"application/json"}}}
	b.ReportAllocs()
	for b.Loop() {
		if d := e.Decide(f); !d.Allow || d.Rule != 99 {
			b.Fatalf("decision %+v", d)
		}
	}
}

func BenchmarkAuthz100RulesNoMatch(b *testing.B) {
	e := hundredRules(b)
	f := &Facts{PeerID: "spiffe://trellis.local/ns/shop/sa/client-99", Port: 80, Method: "POST",
		Path: "/other", Header: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		if d := e.Decide(f); d.Allow {
			b.Fatalf("decision %+v", d)
		}
	}
}

func TestDecideDoesNotAllocate(t *testing.T) {
	e := hundredRules(t)
	f := &Facts{PeerID: "spiffe://trellis.local/ns/shop/sa/client-50", Port: 80, Method: "GET", Path: "/api/v50/x", Header: http.Header{}}
	if n := testing.AllocsPerRun(100, func() { e.Decide(f) }); n != 0 {
		t.Fatalf("Decide allocates %v per call", n)
	}
}

// BenchmarkAuthz100OpenRules: 100 rules no identity index can narrow
// (namespace sources), the request matching the last one.
func BenchmarkAuthz100OpenRules(b *testing.B) {
	var rules []*meshv1.AuthzRule
	for i := range 100 {
		rules = append(rules, &meshv1.AuthzRule{
			From:    []*meshv1.AuthzSource{ns(fmt.Sprintf("team-%d", i))},
			Methods: []string{"GET", "POST"},
			Paths:   []*meshv1.AuthzPath{prefix(fmt.Sprintf("/api/v%d", i))},
		})
	}
	e := mustCompile(b, false, pol("shop/allow-teams", false, rules...))
	f := &Facts{PeerID: "spiffe://trellis.local/ns/team-99/sa/web", Port: 80, Method: "POST",
		Path: "/api/v99/orders", Header: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		if d := e.Decide(f); !d.Allow || d.Rule != 99 {
			b.Fatalf("decision %+v", d)
		}
	}
}

// TestIndexAgreesWithScan: the identity/namespace index picks the same
// first rule as trying every rule in order, for rules mixing every source
// kind and callers of every shape.
func TestIndexAgreesWithScan(t *testing.T) {
	srcs := []*meshv1.AuthzSource{id(web), id(batch), ns("shop"), ns("ops"), idPrefix("spiffe://trellis.local/ns/shop/"), idPrefix(web)}
	var rules []*meshv1.AuthzRule
	for i := range 128 {
		r := &meshv1.AuthzRule{}
		for j, s := range srcs {
			if i&(1<<j) != 0 {
				r.From = append(r.From, s)
			}
		}
		if i%3 == 0 {
			r.Methods = []string{"POST"}
		}
		if i%5 == 0 {
			r.From = append(r.From, anyAuth())
		}
		rules = append(rules, r)
	}
	// Prefixes in more lengths than are indexed: their rules stay open.
	var many []*meshv1.AuthzRule
	for i := range maxPrefixLens + 3 {
		many = append(many, &meshv1.AuthzRule{From: []*meshv1.AuthzSource{idPrefix("spiffe://trellis.local/ns/shop/sa/" + strings.Repeat("b", i))}})
	}
	many = append(many, rules...)
	e := mustCompile(t, false, pol("a/p", false, rules...), pol("a/many", false, many...))
	if len(e.policies[0].prefixLens) != 2 || len(e.policies[1].prefixLens) != 0 {
		t.Fatalf("prefix lengths indexed: %v, %v", e.policies[0].prefixLens, e.policies[1].prefixLens)
	}
	// Every suffix of the rule list too, so each rule is the first match
	// of some policy.
	var ps []*meshv1.AuthzPolicy
	for k := range rules {
		ps = append(ps, pol(fmt.Sprint("a/from-", k), false, rules[k:]...))
	}
	e.policies = append(e.policies, mustCompile(t, false, ps...).policies...)
	for pi := range e.policies {
		p := &e.policies[pi]
		for _, peer := range []string{web, web + "x", batch, other, "", "spiffe://x/ns/shop/sa/z", "spiffe://x/other", "spiffe://trellis.local/ns/shop/sa/bbbb"} {
			for _, m := range []string{"GET", "POST"} {
				q := query{Facts: &Facts{PeerID: peer, Method: m, Path: "/"}, ns: namespaceOf(peer)}
				want := -1
				for i := range p.rules {
					if p.rules[i].mismatch(&q, false) == condNone {
						want = i
						break
					}
				}
				if got := p.match(&q); got != want {
					t.Errorf("%s: peer %q %s: match = %d, scan = %d", p.name, peer, m, got, want)
				}
			}
		}
	}
}

// BenchmarkAuthz100PrefixRules: the worst case, 100 rules by identity
// prefix that no index narrows, the request matching the last one.
func BenchmarkAuthz100PrefixRules(b *testing.B) {
	var rules []*meshv1.AuthzRule
	for i := range 100 {
		rules = append(rules, &meshv1.AuthzRule{
			From:    []*meshv1.AuthzSource{idPrefix(fmt.Sprintf("spiffe://trellis.local/ns/shop/sa/team-%d-", i))},
			Methods: []string{"GET", "POST"},
			Paths:   []*meshv1.AuthzPath{prefix(fmt.Sprintf("/api/v%d", i))},
		})
	}
	e := mustCompile(b, false, pol("shop/allow-teams", false, rules...))
	f := &Facts{PeerID: "spiffe://trellis.local/ns/shop/sa/team-99-web", Port: 80, Method: "POST",
		Path: "/api/v99/orders", Header: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		if d := e.Decide(f); !d.Allow || d.Rule != 99 {
			b.Fatalf("decision %+v", d)
		}
	}
}
