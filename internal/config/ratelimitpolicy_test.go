package config

import (
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

func rlPolicy(name, spec string) string {
	return "apiVersion: trellis.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: " + name + "}\nspec: " + spec + "\n"
}

const (
	rlOrders = "targetRefs: [{name: orders}], rate: {requests: 100}"
	batchID  = "spiffe://trellis.local/ns/default/sa/batch"
)

func TestRateLimitPolicyValidation(t *testing.T) {
	const at = "v.yaml: document 1 (RateLimitPolicy default/p): "
	p := func(spec string) string { return rlPolicy("p", "{"+rlOrders+", "+spec+"}") }
	runValidation(t, []validationCase{
		{"minimal", rlPolicy("p", "{"+rlOrders+"}"), nil},
		{"every field", p(`algorithm: TokenBucket, burst: 10, scope: Header, header: X-Tenant, maxKeys: 50, mode: Global,
  overrides: [{identities: [` + batchID + `], rate: {requests: 5, per: 1m}, burst: 2}]`), nil},
		{"route targets", rlPolicy("p", "{targetRefs: [{kind: HTTPRoute, name: r}, {group: gateway.networking.k8s.io, kind: GRPCRoute, name: r}], rate: {requests: 1}}"), nil},
		{"leaky", p("algorithm: LeakyBucket, queue: 0"), nil},
		{"no targets", rlPolicy("p", "{rate: {requests: 1}}"), []string{at + "spec.targetRefs: at least one targetRef is required"}},
		{"target kind", rlPolicy("p", "{targetRefs: [{kind: Gateway, name: x}], rate: {requests: 1}}"), []string{at + `spec.targetRefs[0].kind: must be Service, HTTPRoute or GRPCRoute, got "Gateway"`}},
		{"route group", rlPolicy("p", "{targetRefs: [{group: trellis.dev, kind: HTTPRoute, name: x}], rate: {requests: 1}}"), []string{at + `spec.targetRefs[0].group: must be gateway.networking.k8s.io for a HTTPRoute, got "trellis.dev"`}},
		{"service group", rlPolicy("p", "{targetRefs: [{group: apps, name: x}], rate: {requests: 1}}"), []string{at + `spec.targetRefs[0].group: must be "" (core) or trellis.dev for a Service`}},
		{"target twice", rlPolicy("p", "{targetRefs: [{name: x}, {name: x}], rate: {requests: 1}}"), []string{at + "spec.targetRefs[1].name: Service x is already targeted by spec.targetRefs[0]"}},
		{"no rate", rlPolicy("p", "{targetRefs: [{name: x}]}"), []string{at + "spec.rate.requests: must be between 1 and 1000000000, got 0"}},
		{"per too short", rlPolicy("p", "{targetRefs: [{name: x}], rate: {requests: 1, per: 100us}}"), []string{at + "spec.rate.per: must be between 1ms and 24h, got 100µs"}},
		{"algorithm", p("algorithm: SlidingWindow"), []string{at + `spec.algorithm: must be TokenBucket or LeakyBucket, got "SlidingWindow"`}},
		{"too fast", rlPolicy("p", "{targetRefs: [{name: x}], rate: {requests: 2000, per: 1ms}}"), []string{at + "spec.rate: 2000 per 1ms is more than one request per microsecond"}},
		{"per range", rlPolicy("p", "{targetRefs: [{name: x}], rate: {requests: 1, per: 25h}}"), []string{at + "spec.rate.per: must be between 1ms and 24h, got 25h0m0s"}},
		{"queue with token", p("queue: 3"), []string{at + "spec.queue: only for algorithm LeakyBucket"}},
		{"burst with leaky", p("algorithm: LeakyBucket, burst: 3"), []string{at + "spec.burst: only for algorithm TokenBucket"}},
		{"burst zero", p("burst: 0"), []string{at + "spec.burst: must be between 1 and 1000000000, got 0"}},
		{"queue negative", p("algorithm: LeakyBucket, queue: -1"), []string{at + "spec.queue: must be between 0 and 1000000000, got -1"}},
		{"scope", p("scope: PerCaller"), []string{at + `spec.scope: must be All, SourceIdentity or Header, got "PerCaller"`}},
		{"header scope needs header", p("scope: Header"), []string{at + "spec.header: required with scope Header"}},
		{"header without scope", p("header: x-a"), []string{at + "spec.header: only with scope Header, scope is All"}},
		{"bad header", p("scope: Header, header: 'a b'"), []string{at + `spec.header: "a b" is not a header name`}},
		{"max keys on All", p("maxKeys: 5"), []string{at + "spec.maxKeys: only with scope SourceIdentity or Header"}},
		{"max keys range", p("scope: SourceIdentity, maxKeys: 0"), []string{at + "spec.maxKeys: must be between 1 and 1000000, got 0"}},
		{"mode", p("mode: Cluster"), []string{at + `spec.mode: must be Local or Global, got "Cluster"`}},
		{"override no ids", p("overrides: [{rate: {requests: 1}}]"), []string{at + "spec.overrides[0].identities: at least one SPIFFE ID is required"}},
		{"override bad id", p("overrides: [{identities: [batch], rate: {requests: 1}}]"), []string{at + `spec.overrides[0].identities[0]: "batch" is not a SPIFFE ID`}},
		{"override twice", p("overrides: [{identities: [" + batchID + "], rate: {requests: 1}}, {identities: [" + batchID + "], rate: {requests: 2}}]"),
			[]string{at + "spec.overrides[1].identities[0]: " + batchID + " is already overridden by spec.overrides[0].identities[0]"}},
		{"override rate", p("overrides: [{identities: [" + batchID + "], rate: {requests: 0}}]"), []string{at + "spec.overrides[0].rate.requests: must be between 1"}},
		{"override slack", p("overrides: [{identities: [" + batchID + "], rate: {requests: 1}, queue: 1}]"), []string{at + "spec.overrides[0].queue: only for algorithm LeakyBucket"}},
		{"unknown field", p("burts: 3"), []string{"spec.burts: unknown field"}},
	})
}

// TestRateLimitPolicyCompile: defaults are spelled out in the compiled
// form, which a Service target puts in the inbound policy and a route
// target on the route.
func TestRateLimitPolicyCompile(t *testing.T) {
	objs := mustDecode(t, "p.yaml", []byte(rlPolicy("p", `{targetRefs: [{name: orders}, {kind: HTTPRoute, name: r}],
  algorithm: LeakyBucket, rate: {requests: 500}, scope: SourceIdentity, mode: Global,
  overrides: [{identities: [`+batchID+`], rate: {requests: 20, per: 2s}}]}`)))
	p := objs[0].(*RateLimitPolicy)
	for _, tc := range []struct {
		svc  ServiceKey
		want bool
	}{{ServiceKey{Namespace: "default", Name: "orders"}, true}, {ServiceKey{Namespace: "default", Name: "r"}, false}, {ServiceKey{Namespace: "other", Name: "orders"}, false}} {
		if got := p.AppliesTo(tc.svc); got != tc.want {
			t.Errorf("AppliesTo(%v) = %v, want %v", tc.svc, got, tc.want)
		}
	}
	if got := p.RouteTargets(); len(got) != 1 || got[0] != (Ref{Kind: "HTTPRoute", Namespace: "default", Name: "r"}) {
		t.Errorf("route targets %v", got)
	}
	var ip meshv1.InboundPolicy
	p.ContributeInbound(&ip)
	var want meshv1.InboundPolicy
	if err := prototext.Unmarshal([]byte(`rate_limits {
		name: "default/p" algorithm: LEAKY_BUCKET scope: SOURCE_IDENTITY max_keys: 10000 global: true
		limit { requests: 500 period { seconds: 1 } burst: 50 }
		overrides { identities: "`+batchID+`" limit { requests: 20 period { seconds: 2 } burst: 1 } }
	}`), &want); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(&ip, &want) {
		t.Errorf("compiled\n%v\nwant\n%v", prototext.Format(&ip), prototext.Format(&want))
	}
	tb := mustDecode(t, "p.yaml", []byte(rlPolicy("p", "{"+rlOrders+"}")))[0].(*RateLimitPolicy)
	if c := tb.compile(); c.Limit.Burst != 100 || c.Limit.Period.AsDuration() != time.Second || c.Global {
		t.Errorf("token bucket defaults: %v", c)
	}
}

// TestRateLimitPolicyRoutes: a route target's policy is on every route
// compiled from that route, and only those.
func TestRateLimitPolicyRoutes(t *testing.T) {
	objs := mustDecode(t, "r.yaml", []byte(rlPolicy("lim", "{targetRefs: [{kind: HTTPRoute, name: r}], rate: {requests: 5}}")+"---\n"+
		route(rules("  - matches: [{path: {value: /a}}, {path: {value: /b}}]\n    backendRefs: [{name: inventory-v1}]\n"))))
	pol := objs[0].(*RateLimitPolicy)
	rt := objs[1].(Attacher)
	b := NewServiceBuild(&meshv1.Service{Name: "inventory", Namespace: "default"})
	b.RoutePolicies = func(ref Ref) []RouteAttacher {
		if ref == (Ref{Kind: "HTTPRoute", Namespace: "default", Name: "r"}) {
			return []RouteAttacher{pol}
		}
		return nil
	}
	for _, at := range rt.Attachments() {
		rt.Contribute(b, at, 1)
	}
	b.Finish()
	if len(b.Service.Routes) != 2 {
		t.Fatalf("%d routes", len(b.Service.Routes))
	}
	for _, r := range b.Service.Routes {
		if len(r.RateLimits) != 1 || r.RateLimits[0].Name != "default/lim" {
			t.Errorf("route %s: rate limits %v", r.Name, r.RateLimits)
		}
	}
}
