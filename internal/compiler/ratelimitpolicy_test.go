package compiler

import (
	"testing"
	"testing/synctest"
)

// TestRateLimitPolicyCompiled: a Service target puts the limit in that
// service's own snapshot's inbound policy (and changes its version), not in
// the Service other proxies see; an HTTPRoute target puts it on that
// route's compiled routes.
func TestRateLimitPolicyCompiled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		e.register("i1", "inventory", "default", true)
		e.register("o1", "orders", "default", true)
		before := e.snap("inventory", "default")
		e.apply(`apiVersion: trellis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: inv}
spec:
  targetRefs: [{kind: Service, name: inventory}, {kind: HTTPRoute, name: inv-route}]
  rate: {requests: 10}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: inv-route}
spec:
  parentRefs: [{group: "", kind: Service, name: inventory}]
  rules:
  - backendRefs: [{name: inventory}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: orders-route}
spec:
  parentRefs: [{group: "", kind: Service, name: orders}]
  rules:
  - backendRefs: [{name: orders}]
`)
		own := e.snap("inventory", "default")
		rls := own.GetInboundPolicy().GetRateLimits()
		if len(rls) != 1 || rls[0].GetName() != "default/inv" || rls[0].GetLimit().GetRequests() != 10 {
			t.Fatalf("inventory's inbound policy %v", own.GetInboundPolicy())
		}
		if own.GetVersion() == before.GetVersion() {
			t.Error("the inbound policy did not change the snapshot's version")
		}
		if p := e.snap("orders", "default").GetInboundPolicy(); len(p.GetRateLimits()) != 0 {
			t.Errorf("orders got inventory's inbound limit: %v", p)
		}
		s := e.snap("orders", "default", "inventory")
		for _, r := range service(t, s, "inventory", "default").GetRoutes() {
			if len(r.GetRateLimits()) != 1 {
				t.Errorf("route %s: rate limits %v", r.GetName(), r.GetRateLimits())
			}
		}
		for _, r := range service(t, s, "orders", "default").GetRoutes() {
			if len(r.GetRateLimits()) != 0 {
				t.Errorf("untargeted route %s got %v", r.GetName(), r.GetRateLimits())
			}
		}
	})
}
