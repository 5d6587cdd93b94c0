package compiler

import (
	"strings"
	"testing"
	"testing/synctest"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

func policyNames(s *meshv1.Snapshot) string {
	var out []string
	for _, p := range s.GetInboundPolicy().GetAuthorization().GetPolicies() {
		out = append(out, p.GetName())
	}
	return strings.Join(out, " ")
}

// TestAuthorizationCompiled: a proxy's snapshot carries the policies that
// apply to its own service — targeted, its namespace's, the mesh-wide ones
// — in name order, and no others; a change to one moves the version; the
// default action is the compiler's.
func TestAuthorizationCompiled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		e.register("o1", "orders", "shop", true)
		e.register("w1", "web", "shop", true)
		e.register("b1", "billing", "fin", true)
		e.apply(`apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: orders-only, namespace: shop}
spec: {targetRefs: [{name: orders}], action: ALLOW, rules: [{from: [{namespace: shop}]}]}
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: shop-wide, namespace: shop}
spec: {action: DENY, rules: [{paths: [{prefix: /admin}]}]}
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: mesh-wide, namespace: trellis-system}
spec: {action: DENY, rules: [{headers: [{name: x-evil, present: true}]}]}
`)
		orders := e.snap("orders", "shop")
		if got := policyNames(orders); got != "shop/orders-only shop/shop-wide trellis-system/mesh-wide" {
			t.Fatalf("orders' policies: %q", got)
		}
		if got := policyNames(e.snap("web", "shop")); got != "shop/shop-wide trellis-system/mesh-wide" {
			t.Fatalf("web's policies: %q", got)
		}
		billing := e.snap("billing", "fin")
		if got := policyNames(billing); got != "trellis-system/mesh-wide" {
			t.Fatalf("billing's policies: %q", got)
		}
		if a := billing.GetInboundPolicy().GetAuthorization(); a.GetDefaultAction() != meshv1.AuthzAction_AUTHZ_ALLOW {
			t.Fatalf("default action %v", a.GetDefaultAction())
		}
		e.apply(`apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: orders-only, namespace: shop}
spec: {targetRefs: [{name: orders}], action: ALLOW, rules: [{from: [{namespace: fin}]}]}
`)
		if again := e.snap("orders", "shop"); again.GetVersion() == orders.GetVersion() {
			t.Fatal("a changed policy kept the snapshot version")
		}
		if again := e.snap("billing", "fin"); again.GetVersion() != billing.GetVersion() {
			t.Fatal("a policy of another namespace changed billing's snapshot")
		}
		e.delete("AuthorizationPolicy", "trellis-system", "mesh-wide")
		if got := policyNames(e.snap("billing", "fin")); got != "" {
			t.Fatalf("billing's policies after delete: %q", got)
		}
	})
}

// TestDefaultAuthorizationDeny: the compiler's default travels in every
// snapshot, with no policy at all.
func TestDefaultAuthorizationDeny(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		e.c.opts.DefaultAuthorization = meshv1.AuthzAction_AUTHZ_DENY
		e.register("o1", "orders", "shop", true)
		a := e.snap("orders", "shop").GetInboundPolicy().GetAuthorization()
		if a == nil || a.GetDefaultAction() != meshv1.AuthzAction_AUTHZ_DENY || len(a.GetPolicies()) != 0 {
			t.Fatalf("authorization %v", a)
		}
	})
}
