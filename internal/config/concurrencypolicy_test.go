package config

import (
	"testing"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

func concPolicy(name, spec string) string {
	return "apiVersion: trellis.dev/v1alpha1\nkind: ConcurrencyPolicy\nmetadata: {name: " + name + "}\nspec: " + spec + "\n"
}

func TestConcurrencyPolicyValidation(t *testing.T) {
	const at = "v.yaml: document 1 (ConcurrencyPolicy default/p): "
	p := func(adaptive string) string { return concPolicy("p", "{"+inv+", adaptive: "+adaptive+"}") }
	runValidation(t, []validationCase{
		{"targets only", concPolicy("p", "{"+inv+"}"), nil},
		{"every field", p(`{minLimit: 5, maxLimit: 500, initialLimit: 20, interval: 200ms, percentile: 50, buffer: 10,
  minRTTInterval: 1m, minRTTRequests: 25, jitter: 0}`), nil},
		{"no targets", concPolicy("p", "{adaptive: {}}"), []string{at + "spec.targetRefs: at least one targetRef is required"}},
		{"target kind", concPolicy("p", "{targetRefs: [{kind: Gateway, name: x}]}"), []string{at + `spec.targetRefs[0].kind: must be Service, got "Gateway": a ConcurrencyPolicy applies to Services`}},
		{"unknown field", p("{minimum: 3}"), []string{"spec.adaptive.minimum: unknown field"}},
		{"min zero", p("{minLimit: 0}"), []string{at + "spec.adaptive.minLimit: must be between 1 and 1.048576e+06, got 0"}},
		{"max below min", p("{minLimit: 10, maxLimit: 5, initialLimit: 5}"), []string{at + "spec.adaptive.maxLimit: 5 is below minLimit 10"}},
		{"initial outside", p("{maxLimit: 100, initialLimit: 200}"), []string{at + "spec.adaptive.initialLimit: 200 is outside minLimit..maxLimit (3..100)"}},
		{"percentile", p("{percentile: 0}"), []string{at + "spec.adaptive.percentile: must be between 1 and 100, got 0"}},
		{"buffer", p("{buffer: -5}"), []string{at + "spec.adaptive.buffer: must be between 0 and 1000, got -5"}},
		{"jitter", p("{jitter: 101}"), []string{at + "spec.adaptive.jitter: must be between 0 and 100, got 101"}},
		{"interval", p("{interval: 0s}"), []string{at + "spec.adaptive.interval: must be between 1ms and 1m, got 0s"}},
		{"minRTT interval", p("{interval: 1s, minRTTInterval: 500ms}"), []string{at + "spec.adaptive.minRTTInterval: must be between interval (1s) and 24h, got 500ms"}},
		{"minRTT requests", p("{minRTTRequests: 0}"), []string{at + "spec.adaptive.minRTTRequests: must be between 1 and"}},
	})
}

// TestConcurrencyPolicyCompile: the policy compiles into the inbound
// policy with every default filled in and percents as fractions; a small
// maxLimit caps the default initial limit.
func TestConcurrencyPolicyCompile(t *testing.T) {
	objs := mustDecode(t, "p.yaml", []byte(concPolicy("p", "{"+inv+"}")))
	p := objs[0].(*ConcurrencyPolicy)
	if !p.AppliesTo(ServiceKey{Namespace: "default", Name: "inventory"}) || p.AppliesTo(ServiceKey{Namespace: "default", Name: "orders"}) || p.AppliesTo(ServiceKey{Namespace: "other", Name: "inventory"}) {
		t.Fatal("AppliesTo: want the targeted Service of the policy's namespace only")
	}
	var ip meshv1.InboundPolicy
	p.ContributeInbound(&ip)
	var want meshv1.ConcurrencyPolicy
	if err := prototext.Unmarshal([]byte(`min_limit:3 max_limit:1000 initial_limit:50 interval:{nanos:100000000} percentile:0.9
buffer:0.25 min_rtt_interval:{seconds:30} min_rtt_requests:50 jitter:0.15`), &want); err != nil {
		t.Fatal(err)
	}
	if got := ip.GetConcurrency(); !proto.Equal(got, &want) {
		t.Fatalf("compiled\n%v\nwant\n%v", got, &want)
	}
	objs = mustDecode(t, "p.yaml", []byte(concPolicy("p", "{"+inv+", adaptive: {maxLimit: 10}}")))
	ip = meshv1.InboundPolicy{}
	objs[0].(*ConcurrencyPolicy).ContributeInbound(&ip)
	if got := ip.GetConcurrency().GetInitialLimit(); got != 10 {
		t.Fatalf("initial limit %d with maxLimit 10, want 10", got)
	}
}

// TestConcurrencyPolicyConflicts: two policies on one Service are refused,
// each naming the other; distinct Services are fine.
func TestConcurrencyPolicyConflicts(t *testing.T) {
	a := concPolicy("a", "{targetRefs: [{name: inventory}, {name: orders}]}")
	b := concPolicy("b", "{targetRefs: [{name: orders}]}")
	c := concPolicy("c", "{targetRefs: [{name: web}]}")
	objs := mustDecode(t, "set.yaml", []byte(a+"---\n"+b+"---\n"+c))
	wantErrs(t, CheckSet(objs),
		"ConcurrencyPolicy default/a: spec.targetRefs[1]: Service default/orders is also targeted by ConcurrencyPolicy default/b; a Service takes one ConcurrencyPolicy: merge them",
		"ConcurrencyPolicy default/b: spec.targetRefs[0]: Service default/orders is also targeted by ConcurrencyPolicy default/a")
	if n := len(Errors(CheckSet(objs))); n != 2 {
		t.Errorf("%d errors, want 2", n)
	}
	objs = mustDecode(t, "set.yaml", []byte(b+"---\n"+c))
	if err := CheckSet(objs); err != nil {
		t.Fatalf("policies on distinct Services: %v", err)
	}
}
