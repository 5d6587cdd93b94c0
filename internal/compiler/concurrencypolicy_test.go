package compiler

import (
	"testing"
	"testing/synctest"
	"time"
)

// TestConcurrencyPolicyCompiled: a ConcurrencyPolicy sets the inbound
// policy of the targeted Service's own proxies, defaults spelled out, and
// changes their snapshot's version; a proxy of another service that routes
// to it gets none; deleting the policy clears it.
func TestConcurrencyPolicyCompiled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		e.register("i1", "inventory", "default", true)
		e.register("o1", "orders", "default", true)
		before := e.snap("inventory", "default").GetVersion()
		e.apply(`apiVersion: trellis.dev/v1alpha1
kind: ConcurrencyPolicy
metadata: {name: inventory}
spec:
  targetRefs: [{kind: Service, name: inventory}]
  adaptive: {maxLimit: 200, buffer: 50}
`)
		s := e.snap("inventory", "default")
		cp := s.GetInboundPolicy().GetConcurrency()
		if cp.GetMaxLimit() != 200 || cp.GetMinLimit() != 3 || cp.GetInitialLimit() != 50 || cp.GetBuffer() != 0.5 ||
			cp.GetPercentile() != 0.9 || cp.GetInterval().AsDuration() != 100*time.Millisecond ||
			cp.GetMinRttInterval().AsDuration() != 30*time.Second || cp.GetMinRttRequests() != 50 || cp.GetJitter() != 0.15 {
			t.Fatalf("inventory's concurrency policy %v", cp)
		}
		if s.GetVersion() == before {
			t.Fatal("the snapshot's version did not change with its inbound policy")
		}
		if got := e.snap("orders", "default", "inventory").GetInboundPolicy().GetConcurrency(); got != nil {
			t.Fatalf("orders' proxy got inventory's limit: %v", got)
		}
		e.delete("ConcurrencyPolicy", "default", "inventory")
		if got := e.snap("inventory", "default").GetInboundPolicy().GetConcurrency(); got != nil {
			t.Fatalf("policy left after delete: %v", got)
		}
	})
}
