package config

import (
	"bytes"
	"os"
	"testing"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

func telemetry(name, ns, spec string) string {
	return "apiVersion: trellis.dev/v1alpha1\nkind: Telemetry\nmetadata: {name: " + name + ", namespace: " + ns + "}\nspec: " + spec + "\n"
}

func TestTelemetryValidation(t *testing.T) {
	const at = "v.yaml: document 1 (Telemetry default/t): "
	tel := func(spec string) string { return telemetry("t", "default", spec) }
	runValidation(t, []validationCase{
		{"tracing", tel("{tracing: {randomSamplingPercentage: 100}}"), nil},
		{"access logs targeted", tel("{targetRefs: [{kind: Service, name: orders}], accessLogging: {}}"), nil},
		{"access logs off", tel("{accessLogging: {disabled: true}}"), nil},
		{"empty", tel("{}"), []string{at + "spec: give tracing, accessLogging or both"}},
		{"no percentage", tel("{tracing: {}}"), []string{at + "spec.tracing.randomSamplingPercentage: required"}},
		{"percentage", tel("{tracing: {randomSamplingPercentage: 101}}"), []string{at + "spec.tracing.randomSamplingPercentage: must be between 0 and 100, got 101"}},
		{"target kind", tel("{targetRefs: [{kind: Pod, name: x}], accessLogging: {}}"), []string{at + `spec.targetRefs[0].kind: must be Service, got "Pod"`}},
		{"target twice", tel("{targetRefs: [{kind: Service, name: x}, {kind: Service, name: x}], accessLogging: {}}"), []string{at + "spec.targetRefs[1].name: Service x is already targeted by spec.targetRefs[0]"}},
		{"unknown field", tel("{accessLogging: {sink: stdout}}"), []string{"spec.accessLogging.sink: unknown field"}},
	})
}

func TestTelemetryConflicts(t *testing.T) {
	ns1 := telemetry("a", "default", "{accessLogging: {}}")
	ns2 := telemetry("b", "default", "{tracing: {randomSamplingPercentage: 5}}")
	svc1 := telemetry("c", "default", "{targetRefs: [{kind: Service, name: orders}], accessLogging: {}}")
	svc2 := telemetry("d", "default", "{targetRefs: [{kind: Service, name: orders}], accessLogging: {disabled: true}}")
	mesh := telemetry("mesh", RootNamespace, "{accessLogging: {}}")
	wantErrs(t, CheckSet(mustDecode(t, "set.yaml", []byte(ns1+"---\n"+ns2))),
		"Telemetry default/a: spec.targetRefs: Telemetry default/b also applies to the whole namespace default")
	wantErrs(t, CheckSet(mustDecode(t, "set.yaml", []byte(svc1+"---\n"+svc2))),
		"Telemetry default/c: spec.targetRefs[0]: Service default/orders is also targeted by Telemetry default/d")
	if err := CheckSet(mustDecode(t, "set.yaml", []byte(ns1+"---\n"+svc1+"---\n"+mesh))); err != nil {
		t.Errorf("one per scope refused: %v", err)
	}
}

// TestTelemetryScopes: mesh-wide, then namespace, then service, the
// narrower winning field by field.
func TestTelemetryScopes(t *testing.T) {
	objs := mustDecode(t, "s.yaml", []byte(
		telemetry("mesh", RootNamespace, "{tracing: {randomSamplingPercentage: 10}, accessLogging: {}}")+"---\n"+
			telemetry("nsw", "shop", "{tracing: {randomSamplingPercentage: 50}}")+"---\n"+
			telemetry("svc", "shop", "{targetRefs: [{kind: Service, name: orders}], accessLogging: {disabled: true}}")))
	m, n, s := objs[0].(*Telemetry), objs[1].(*Telemetry), objs[2].(*Telemetry)
	orders := ServiceKey{Namespace: "shop", Name: "orders"}
	for _, tc := range []struct {
		o     *Telemetry
		k     ServiceKey
		scope Scope
		ok    bool
	}{
		{m, orders, ScopeMesh, true},
		{m, ServiceKey{Namespace: "other", Name: "x"}, ScopeMesh, true},
		{n, orders, ScopeNamespace, true},
		{n, ServiceKey{Namespace: "other", Name: "orders"}, 0, false},
		{s, orders, ScopeService, true},
		{s, ServiceKey{Namespace: "shop", Name: "payments"}, 0, false},
	} {
		sc, ok := tc.o.AppliesTo(tc.k)
		if sc != tc.scope || ok != tc.ok {
			t.Errorf("%s applies to %v: %v %v, want %v %v", tc.o.Name, tc.k, sc, ok, tc.scope, tc.ok)
		}
	}
	snap := &meshv1.Snapshot{}
	for _, o := range []*Telemetry{m, n, s} {
		o.ContributeProxy(snap)
	}
	if snap.Telemetry.GetTracingSamplingPercent() != 50 || snap.Telemetry.AccessLog == nil || *snap.Telemetry.AccessLog {
		t.Errorf("merged telemetry %v, want sampling 50, access log off", snap.Telemetry)
	}
}

// FuzzDecodeTelemetry: FuzzDecode's invariants, seeded with Telemetry
// documents; an accepted Telemetry's proxy hooks never panic and set a
// valid sampling rate.
func FuzzDecodeTelemetry(f *testing.F) {
	if data, err := os.ReadFile("../../examples/observability/telemetry.yaml"); err == nil {
		f.Add(data)
	}
	f.Add([]byte(telemetry("t", "default", "{targetRefs: [{kind: Service, name: a}], tracing: {randomSamplingPercentage: 0.5}, accessLogging: {disabled: true}}")))
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, err := Decode("fuzz.yaml", data)
		if err != nil {
			return
		}
		for _, o := range objs {
			b, err := Encode(o)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			back, err := DecodeStored(o.Ref().Kind, b)
			if err != nil {
				t.Fatalf("DecodeStored(%s): %v", b, err)
			}
			if b2, err := Encode(back); err != nil || !bytes.Equal(b, b2) {
				t.Fatalf("not a fixed point:\n%s\n%s", b, b2)
			}
			if ps, ok := back.(ProxyScoped); ok {
				snap := &meshv1.Snapshot{}
				_, _ = ps.AppliesTo(ServiceKey{Namespace: "default", Name: "a"})
				ps.ContributeProxy(snap)
				if p := snap.GetTelemetry().TracingSamplingPercent; p != nil && (*p < 0 || *p > 100) {
					t.Fatalf("sampling %v from %s", *p, b)
				}
			}
		}
		_ = CheckSet(objs)
	})
}
