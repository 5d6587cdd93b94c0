package config

import (
	"testing"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

func grpcRoute(rules string) string {
	return "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g}\nspec:\n" +
		"  parentRefs: [{kind: Service, name: inventory}]\n  rules:\n" + rules
}

func TestGRPCRouteValidation(t *testing.T) {
	const at = "v.yaml: document 1 (GRPCRoute default/g): spec.rules[0]."
	cases := []validationCase{
		{"service and method", grpcRoute("  - matches: [{method: {service: shop.Inventory, method: Get}, headers: [{name: x-env, value: beta}]}]\n    backendRefs: [{name: inventory-v2}]\n"), nil},
		{"filters", grpcRoute("  - filters:\n    - {type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: x-a, value: b}]}}\n    - {type: ExtensionRef, extensionRef: {group: trellis.dev, kind: FaultInjection, name: f}}\n    backendRefs: [{name: a}]\n"), nil},
		{"no service nor method", grpcRoute("  - matches: [{method: {type: Exact}}]\n    backendRefs: [{name: a}]\n"), []string{at + "matches[0].method: give service, method or both"}},
		{"bad service", grpcRoute("  - matches: [{method: {service: 'shop/Inventory'}}]\n    backendRefs: [{name: a}]\n"), []string{at + `matches[0].method.service: "shop/Inventory" is not a gRPC service name`}},
		{"bad regex", grpcRoute("  - matches: [{method: {type: RegularExpression, method: '('}}]\n    backendRefs: [{name: a}]\n"), []string{at + "matches[0].method.method: invalid regular expression"}},
		{"bad header", grpcRoute("  - matches: [{headers: [{name: 'a b', value: x}]}]\n    backendRefs: [{name: a}]\n"), []string{at + `matches[0].headers[0].name: "a b" is not a valid HTTP header name`}},
		{"no backends", grpcRoute("  - matches: [{method: {service: a.B}}]\n"), []string{at + "backendRefs: at least one backendRef is required"}},
		{"sessionPersistence", grpcRoute("  - sessionPersistence: {sessionName: s}\n    backendRefs: [{name: a}]\n"), []string{at + "sessionPersistence: sessionPersistence is not supported"}},
		{"gateway parent", "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g}\nspec:\n  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: a}]}]\n",
			[]string{"spec.parentRefs[0].kind: required: when omitted it means Gateway"}},
		{"ExtensionRef elsewhere", grpcRoute("  - filters: [{type: ExtensionRef, extensionRef: {group: x.io, kind: Auth, name: f}}]\n    backendRefs: [{name: a}]\n"),
			[]string{at + "filters[0].extensionRef: ExtensionRef to Auth"}},
	}
	runValidation(t, cases)
}

// TestGRPCRouteCompiles: service and method become the request path, exact
// or by regular expression, and precedence puts the exact method first.
func TestGRPCRouteCompiles(t *testing.T) {
	objs := mustDecode(t, "g.yaml", []byte(grpcRoute(`  - matches: [{method: {service: shop.Inventory}}]
    backendRefs: [{name: svc-only}]
  - matches: [{method: {type: RegularExpression, service: "shop\\..*", method: "Li.*"}}]
    backendRefs: [{name: regex}]
  - matches: [{method: {method: Watch}}]
    backendRefs: [{name: method-only}]
  - matches: [{method: {service: shop.Inventory, method: Get}, headers: [{name: X-Env, value: beta}]}]
    backendRefs: [{name: exact}]
  - backendRefs: [{name: everything}]
`)))
	g := objs[0].(*GRPCRoute)
	b := NewServiceBuild(&meshv1.Service{Name: "inventory", Namespace: "default"})
	g.Contribute(b, Attachment{Service: ServiceKey{"default", "inventory"}}, 1)
	b.Finish()
	type want struct {
		backend string
		typ     meshv1.PathMatch_Type
		path    string
	}
	wants := []want{
		{"exact", meshv1.PathMatch_EXACT, "/shop.Inventory/Get"},
		{"regex", meshv1.PathMatch_REGEX, `/(?:shop\..*)/(?:Li.*)`},
		{"method-only", meshv1.PathMatch_REGEX, "/[^/]+/Watch"},
		{"svc-only", meshv1.PathMatch_PREFIX, "/shop.Inventory"},
		{"everything", meshv1.PathMatch_PREFIX, "/"},
	}
	if len(b.Service.Routes) != len(wants) {
		t.Fatalf("got %d routes", len(b.Service.Routes))
	}
	for i, w := range wants {
		r := b.Service.Routes[i]
		p := r.Matches[0].Path
		if r.Backends[0].Service != w.backend || p.Type != w.typ || p.Value != w.path {
			t.Errorf("routes[%d] = %s %v %q, want %s %v %q", i, r.Backends[0].Service, p.Type, p.Value, w.backend, w.typ, w.path)
		}
	}
	if h := b.Service.Routes[0].Matches[0].Headers; len(h) != 1 || h[0].Name != "x-env" {
		t.Errorf("headers: %v", h)
	}
}
