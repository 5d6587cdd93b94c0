package compiler

import (
	"testing"
	"testing/synctest"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// TestInboundMTLSMode: a proxy's snapshot carries its own Service's mTLS
// mode (STRICT without a Service or without spec.mtls), and a change of
// mode changes the snapshot's version, so it is pushed.
func TestInboundMTLSMode(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		e.register("o1", "orders", "default", true)
		s := e.snap("orders", "default")
		if got := s.GetInboundPolicy().GetMtlsMode(); got != meshv1.MtlsMode_STRICT {
			t.Fatalf("no Service: mode %v, want STRICT", got)
		}
		e.apply("apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata: {name: orders}\nspec:\n  ports: [{port: 80}]\n")
		strict := e.snap("orders", "default")
		if got := strict.GetInboundPolicy().GetMtlsMode(); got != meshv1.MtlsMode_STRICT {
			t.Fatalf("Service without spec.mtls: mode %v, want STRICT", got)
		}
		e.apply("apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata: {name: orders}\nspec:\n  ports: [{port: 80}]\n  mtls: {mode: PERMISSIVE}\n")
		perm := e.snap("orders", "default")
		if got := perm.GetInboundPolicy().GetMtlsMode(); got != meshv1.MtlsMode_PERMISSIVE {
			t.Fatalf("PERMISSIVE Service: mode %v", got)
		}
		if perm.Version == strict.Version {
			t.Fatal("the mode changed but the version did not")
		}
		// Another proxy's snapshot names its own service's mode only.
		if got := e.snap("frontend", "default").GetInboundPolicy().GetMtlsMode(); got != meshv1.MtlsMode_STRICT {
			t.Fatalf("frontend: mode %v, want STRICT", got)
		}
	})
}
