package compiler

import (
	"testing"
	"testing/synctest"
)

// TestTelemetryCompiled: a proxy's snapshot carries the Telemetry that
// applies to its own service, mesh-wide overridden by its service's; a
// change moves the snapshot's version; another service gets only the
// mesh-wide settings.
func TestTelemetryCompiled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		e.register("o1", "orders", "default", true)
		e.register("p1", "payments", "default", true)
		before := e.snap("orders", "default").GetVersion()
		e.apply(`apiVersion: trellis.dev/v1alpha1
kind: Telemetry
metadata: {name: mesh, namespace: trellis-system}
spec:
  tracing: {randomSamplingPercentage: 10}
  accessLogging: {}
---
apiVersion: trellis.dev/v1alpha1
kind: Telemetry
metadata: {name: orders}
spec:
  targetRefs: [{kind: Service, name: orders}]
  tracing: {randomSamplingPercentage: 100}
`)
		s := e.snap("orders", "default")
		if tel := s.GetTelemetry(); tel.GetTracingSamplingPercent() != 100 || !tel.GetAccessLog() {
			t.Fatalf("orders' telemetry %v, want sampling 100 (its own), access log on (mesh)", tel)
		}
		if s.GetVersion() == before {
			t.Error("telemetry did not change the snapshot's version")
		}
		if tel := e.snap("payments", "default").GetTelemetry(); tel.GetTracingSamplingPercent() != 10 || !tel.GetAccessLog() {
			t.Fatalf("payments' telemetry %v, want the mesh-wide 10%%, access log on", tel)
		}
		e.delete("Telemetry", "trellis-system", "mesh")
		e.delete("Telemetry", "default", "orders")
		if s := e.snap("orders", "default"); s.GetTelemetry() != nil || s.GetVersion() != before {
			t.Fatalf("after delete: telemetry %v, version %s (want none, %s)", s.GetTelemetry(), s.GetVersion(), before)
		}
	})
}
