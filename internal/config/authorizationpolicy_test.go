package config

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/prototext"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

func authzPolicy(ns, name, spec string) string {
	return "apiVersion: trellis.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: " + name + ", namespace: " + ns + "}\nspec: " + spec + "\n"
}

func TestAuthorizationPolicyValidation(t *testing.T) {
	const at = "v.yaml: document 1 (AuthorizationPolicy shop/p): "
	p := func(spec string) string { return authzPolicy("shop", "p", spec) }
	runValidation(t, []validationCase{
		{"allow all", p("{action: ALLOW, rules: [{}]}"), nil},
		{"every field", p(`{targetRefs: [{kind: Service, name: orders}], action: DENY, rules: [{
  from: [{identity: "spiffe://trellis.local/ns/shop/sa/web"}, {identityPrefix: "spiffe://trellis.local/ns/shop/sa/batch-"}, {namespace: ops}, {authenticated: true}],
  ports: [8080], methods: [GET, POST], paths: [{exact: /x}, {prefix: /api}],
  headers: [{name: x-tenant, exact: acme}, {name: X-Debug, present: true}],
  grpc: [{service: shop.Orders, method: Get}, {service: shop.Admin}]}]}`), nil},
		{"no action", p("{rules: [{}]}"), []string{at + "spec.action: required: ALLOW or DENY"}},
		{"bad action", p("{action: allow, rules: [{}]}"), []string{at + `spec.action: must be ALLOW or DENY, got "allow"`}},
		{"no rules", p("{action: ALLOW}"), []string{at + "spec.rules: at least one rule is required"}},
		{"target kind", p("{targetRefs: [{kind: Gateway, name: x}], action: ALLOW, rules: [{}]}"), []string{at + `spec.targetRefs[0].kind: must be Service, got "Gateway"`}},
		{"target twice", p("{targetRefs: [{name: x}, {name: x}], action: ALLOW, rules: [{}]}"), []string{at + "spec.targetRefs[1].name: Service x is already targeted by spec.targetRefs[0]"}},
		{"unknown field", p("{action: ALLOW, rules: [{form: []}]}"), []string{"spec.rules[0].form: unknown field"}},
		{"empty source", p("{action: ALLOW, rules: [{from: [{}]}]}"), []string{at + "spec.rules[0].from[0]: set exactly one of identity, identityPrefix, namespace, authenticated"}},
		{"two sources in one", p("{action: ALLOW, rules: [{from: [{namespace: a, authenticated: true}]}]}"), []string{at + "spec.rules[0].from[0]: set exactly one"}},
		{"bad identity", p("{action: ALLOW, rules: [{from: [{identity: spiffe://td/web}]}]}"), []string{at + `spec.rules[0].from[0].identity: "spiffe://td/web" is not a workload ID`}},
		{"bad prefix", p("{action: ALLOW, rules: [{from: [{identityPrefix: web}]}]}"), []string{at + `spec.rules[0].from[0].identityPrefix: "web" must start with spiffe://`}},
		{"bad namespace", p("{action: ALLOW, rules: [{from: [{namespace: Shop}]}]}"), []string{at + "spec.rules[0].from[0].namespace:"}},
		{"port", p("{action: ALLOW, rules: [{ports: [0]}]}"), []string{at + "spec.rules[0].ports[0]: must be between 1 and 65535, got 0"}},
		{"method", p("{action: ALLOW, rules: [{methods: [get]}]}"), []string{at + `spec.rules[0].methods[0]: "get" is not an upper case HTTP method`}},
		{"path both", p("{action: ALLOW, rules: [{paths: [{exact: /a, prefix: /b}]}]}"), []string{at + "spec.rules[0].paths[0]: set exactly one of exact, prefix"}},
		{"path relative", p("{action: ALLOW, rules: [{paths: [{prefix: api}]}]}"), []string{at + `spec.rules[0].paths[0].prefix: "api" must start with /`}},
		{"header neither", p("{action: ALLOW, rules: [{headers: [{name: x}]}]}"), []string{at + "spec.rules[0].headers[0]: set exactly one of exact, present"}},
		{"header name", p("{action: ALLOW, rules: [{headers: [{name: 'a b', present: true}]}]}"), []string{at + `spec.rules[0].headers[0].name: "a b" is not a header name`}},
		{"grpc service", p("{action: ALLOW, rules: [{grpc: [{service: a/b}]}]}"), []string{at + `spec.rules[0].grpc[0].service: "a/b" is not a gRPC service name`}},
		{"long value echoed short", p("{action: " + strings.Repeat("X", 5000) + ", rules: [{}]}"), []string{at + `spec.action: must be ALLOW or DENY, got "` + strings.Repeat("X", 128) + `..."`}},
	})
}

func TestAuthorizationPolicyAppliesTo(t *testing.T) {
	dec := func(ns, spec string) *AuthorizationPolicy {
		t.Helper()
		return mustDecode(t, "p.yaml", []byte(authzPolicy(ns, "p", spec)))[0].(*AuthorizationPolicy)
	}
	targeted := dec("shop", "{targetRefs: [{name: orders}], action: ALLOW, rules: [{}]}")
	nsWide := dec("shop", "{action: ALLOW, rules: [{}]}")
	mesh := dec(RootNamespace, "{action: DENY, rules: [{}]}")
	for _, tt := range []struct {
		p    *AuthorizationPolicy
		svc  ServiceKey
		want bool
	}{
		{targeted, ServiceKey{"shop", "orders"}, true},
		{targeted, ServiceKey{"shop", "web"}, false},
		{targeted, ServiceKey{"other", "orders"}, false},
		{nsWide, ServiceKey{"shop", "web"}, true},
		{nsWide, ServiceKey{"other", "web"}, false},
		{mesh, ServiceKey{"other", "web"}, true},
		{mesh, ServiceKey{RootNamespace, "x"}, true},
	} {
		if got := tt.p.AppliesTo(tt.svc); got != tt.want {
			t.Errorf("%s AppliesTo(%v) = %v, want %v", tt.p.Ref(), tt.svc, got, tt.want)
		}
	}
}

func TestAuthorizationPolicyCompiles(t *testing.T) {
	p := mustDecode(t, "p.yaml", []byte(authzPolicy("shop", "p", `{action: DENY, rules: [{
  from: [{identity: "spiffe://td/ns/shop/sa/web"}, {identityPrefix: "spiffe://td/ns/x"}, {namespace: ops}, {authenticated: true}],
  ports: [80], methods: [DELETE], paths: [{exact: /x}, {prefix: /api}],
  headers: [{name: x-tenant, exact: acme}, {name: x-debug, present: true}],
  grpc: [{service: shop.Orders, method: Get}]}]}`)))[0].(*AuthorizationPolicy)
	ip := &meshv1.InboundPolicy{}
	p.ContributeInbound(ip)
	got := prototext.Format(ip)
	for _, want := range []string{
		`name:"shop/p"`, `action:AUTHZ_DENY`, `identity:"spiffe://td/ns/shop/sa/web"`, `identity_prefix:"spiffe://td/ns/x"`,
		`namespace:"ops"`, `authenticated:true`, `ports:80`, `methods:"DELETE"`, `exact:"/x"`, `prefix:"/api"`,
		`name:"X-Tenant"`, `exact:"acme"`, `name:"X-Debug"`, `present:true`, `service:"shop.Orders"`, `method:"Get"`,
	} {
		if !strings.Contains(strings.ReplaceAll(got, " ", ""), strings.ReplaceAll(want, " ", "")) {
			t.Errorf("compiled policy lacks %s:\n%s", want, got)
		}
	}
}

func TestAuthorizationPolicyPortsCheckedAgainstService(t *testing.T) {
	svc := "apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata: {name: orders, namespace: shop}\nspec: {ports: [{port: 8080}]}\n"
	good := mustDecode(t, "a.yaml", []byte(svc+"---\n"+authzPolicy("shop", "p", "{targetRefs: [{name: orders}], action: ALLOW, rules: [{ports: [8080]}]}")))
	if err := CheckSet(good); err != nil {
		t.Fatal(err)
	}
	bad := mustDecode(t, "a.yaml", []byte(svc+"---\n"+authzPolicy("shop", "p", "{targetRefs: [{name: orders}], action: ALLOW, rules: [{ports: [9090]}]}")))
	err := CheckSet(bad)
	if err == nil || !strings.Contains(err.Error(), "spec.rules[0].ports[0]: Service shop/orders declares no port 9090") {
		t.Fatalf("err = %v", err)
	}
}
