package config

import (
	"strings"
	"testing"
)

func TestCheckSet(t *testing.T) {
	const services = `apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: inventory}
spec:
  ports: [{name: http, port: 8080}, {name: db, port: 5432, protocol: tcp}]
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: inventory-v1}
spec: {ports: [{port: 8080}]}
`
	routeTo := func(name, parentPort, backendPort string) string {
		return "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: " + name + "}\nspec:\n" +
			"  parentRefs: [{kind: Service, name: inventory" + parentPort + "}]\n" +
			"  rules: [{backendRefs: [{name: inventory-v1" + backendPort + "}]}]\n"
	}
	matchRoute := func(kind, name, parentPort, match string) string {
		return "---\napiVersion: gateway.networking.k8s.io/v1\nkind: " + kind + "\nmetadata: {name: " + name + "}\nspec:\n" +
			"  parentRefs: [{kind: Service, name: inventory" + parentPort + "}]\n" +
			"  rules: [{matches: [" + match + "], backendRefs: [{name: inventory-v1}]}]\n"
	}
	const conflictAB = "HTTPRoute default/a: spec.rules[0].matches[0]: conflicts with HTTPRoute default/b spec.rules[0].matches[0]: both attach to Service default/inventory port 8080 with an identical match"
	const conflictBA = "HTTPRoute default/b: spec.rules[0].matches[0]: conflicts with HTTPRoute default/a spec.rules[0].matches[0]: both attach to Service default/inventory port 8080 with an identical match"
	cases := []struct {
		name string
		in   string
		want []string
	}{
		{"demo set", string(readFile(t, "testdata/inventory.yaml")), nil},
		{"two routes on one service are allowed", services + routeTo("a", ", port: 8080", "") + matchRoute("HTTPRoute", "b", "", "{path: {value: /b}}"), nil},
		{"identical default matches conflict", services + routeTo("a", ", port: 8080", "") + routeTo("b", "", ", port: 8080"), []string{conflictAB, conflictBA}},
		{"header order does not make matches differ", services +
			matchRoute("HTTPRoute", "a", ", port: 8080", "{headers: [{name: X-A, value: '1'}, {name: x-b, value: '2'}]}") +
			matchRoute("HTTPRoute", "b", ", port: 8080", "{headers: [{name: x-b, value: '2'}, {name: x-a, value: '1'}], path: {type: PathPrefix, value: /}}"), []string{conflictAB, conflictBA}},
		{"different ports do not conflict", services + routeTo("a", ", port: 8080", "") + routeTo("b", ", port: 5432", ""),
			[]string{"HTTPRoute default/b: spec.parentRefs[0].port: port 5432 of Service default/inventory is tcp"}},
		{"a query param makes matches differ", services + matchRoute("HTTPRoute", "a", "", "{path: {value: /x}}") +
			matchRoute("HTTPRoute", "b", "", "{path: {value: /x}, queryParams: [{name: v, value: '2'}]}"), nil},
		{"GRPCRoute against HTTPRoute on the same path", services +
			matchRoute("GRPCRoute", "g", "", "{method: {service: shop.Inventory, method: Get}}") +
			matchRoute("HTTPRoute", "h", "", "{path: {type: Exact, value: /shop.Inventory/Get}}"),
			[]string{"GRPCRoute default/g: spec.rules[0].matches[0]: conflicts with HTTPRoute default/h spec.rules[0].matches[0]: both attach to Service default/inventory with an identical match",
				"HTTPRoute default/h: spec.rules[0].matches[0]: conflicts with GRPCRoute default/g"}},
		{"ports of services outside the set are not checked", routeTo("a", ", port: 1234", ", port: 4321"), nil},
		{"duplicate service", services + "---\n" + strings.SplitN(services, "---\n", 2)[1], []string{"Service default/inventory-v1: defined more than once in the set; keep one"}},
		{"duplicate route", services + routeTo("a", "", "") + routeTo("a", "", ""), []string{"HTTPRoute default/a: defined more than once in the set; keep one"}},
		{"parent port missing", services + routeTo("a", ", port: 9999", ""), []string{"HTTPRoute default/a: spec.parentRefs[0].port: Service default/inventory has no port 9999"}},
		{"parent port is tcp", services + routeTo("a", ", port: 5432", ""), []string{"HTTPRoute default/a: spec.parentRefs[0].port: port 5432 of Service default/inventory is tcp"}},
		{"backend port missing", services + routeTo("a", "", ", port: 9090"), []string{"HTTPRoute default/a: spec.rules[0].backendRefs[0].port: Service default/inventory-v1 has no port 9090"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// Duplicates must get past Decode, which checks documents one by one.
			objs := mustDecode(t, "set.yaml", []byte(tc.in))
			err := CheckSet(objs)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			wantErrs(t, err, tc.want...)
		})
	}
}

// TestCheckSetInNamesFiles: a resource defined twice names the file of
// each definition (a directory holding two versions of one route), not
// positions in the set that match nothing a user sees.
func TestCheckSetInNamesFiles(t *testing.T) {
	route := func(weight string) []Object {
		return mustDecode(t, "r.yaml", []byte("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: split}\nspec:\n"+
			"  parentRefs: [{kind: Service, name: inventory}]\n  rules: [{backendRefs: [{name: inventory-v1, weight: "+weight+"}]}]\n"))
	}
	objs := append(append(route("90"), route("10")...), route("50")...)
	files := []string{"demo/a.yaml", "demo/a.yaml", "demo/b.yaml"}
	err := CheckSetIn(objs, func(i int) string { return files[i] })
	wantErrs(t, err,
		"demo/b.yaml: HTTPRoute default/split: defined more than once: also in demo/a.yaml; keep one",
		"demo/a.yaml: HTTPRoute default/split: defined more than once in this file; keep one")
	if n := len(Errors(err)); n != 2 {
		t.Errorf("got %d errors, want 2: %v", n, err)
	}
	if strings.Contains(err.Error(), "items") {
		t.Errorf("error still numbers items of the set: %v", err)
	}
}

func TestCheckSetAcrossNamespaces(t *testing.T) {
	in := `apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: inventory, namespace: shop}
spec: {ports: [{port: 8080}]}
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: inventory}
spec: {ports: [{port: 8080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: consumer, namespace: web}
spec:
  parentRefs: [{kind: Service, name: inventory, namespace: shop, port: 9090}]
  rules: [{backendRefs: [{name: inventory, namespace: shop, port: 8080}]}]
`
	objs := mustDecode(t, "ns.yaml", []byte(in))
	wantErrs(t, CheckSet(objs), "HTTPRoute web/consumer: spec.parentRefs[0].port: Service shop/inventory has no port 9090")
	if n := len(Errors(CheckSet(objs))); n != 1 {
		t.Errorf("got %d errors, want 1", n)
	}
}
