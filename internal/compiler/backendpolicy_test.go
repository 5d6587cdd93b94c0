package compiler

import (
	"testing"
	"testing/synctest"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// TestBackendPolicyCompiled: a BackendPolicy sets the backend_policy of the
// Services it targets, explicit, and of no other; deleting it clears it.
func TestBackendPolicyCompiled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		e.register("i1", "inventory", "default", true)
		e.register("o1", "orders", "default", true)
		e.apply(`apiVersion: trellis.dev/v1alpha1
kind: BackendPolicy
metadata: {name: inventory}
spec:
  targetRefs: [{kind: Service, name: inventory}]
  loadBalancer: {type: round-robin}
  retry: {attempts: 3}
  outlierDetection: {consecutive5xx: 2}
`)
		s := e.snap("orders", "default", "inventory")
		bp := service(t, s, "inventory", "default").GetBackendPolicy()
		if bp.GetLoadBalancer() != meshv1.LoadBalancer_ROUND_ROBIN || bp.GetRetry().GetAttempts() != 3 ||
			bp.GetRetry().GetBudget().GetRetryRatio() != 0.2 || bp.GetOutlierDetection().GetConsecutive_5Xx() != 2 ||
			bp.GetOutlierDetection().GetBaseEjectionTime().AsDuration().Seconds() != 30 || bp.GetCircuitBreaker() != nil {
			t.Fatalf("inventory's backend policy %v", bp)
		}
		if got := service(t, s, "orders", "default").GetBackendPolicy(); got != nil {
			t.Fatalf("orders got a policy it is not targeted by: %v", got)
		}
		e.delete("BackendPolicy", "default", "inventory")
		s = e.snap("orders", "default", "inventory")
		if got := service(t, s, "inventory", "default").GetBackendPolicy(); got != nil {
			t.Fatalf("policy left after delete: %v", got)
		}
	})
}
