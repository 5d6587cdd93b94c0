package control

import (
	"encoding/json"
	"strings"
	"testing"
)

const authzYAML = `apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: orders, namespace: shop}
spec:
  ports: [{name: http, port: 80}, {name: rpc, port: 9090, protocol: grpc}, {name: db, port: 5432, protocol: tcp}]
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: callers, namespace: shop}
spec:
  targetRefs: [{name: orders}]
  action: ALLOW
  rules:
  - from: [{identity: "spiffe://trellis.local/ns/shop/sa/web"}]
    methods: [GET]
  - from: [{namespace: ops}]
    grpc: [{service: shop.Orders, method: Get}]
  - from: [{identity: "spiffe://trellis.local/ns/shop/sa/db-client"}]
    ports: [5432]
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  action: DENY
  # HTTP conditions in a DENY rule are ignored for TCP (fail closed): the
  # ports keep this one off the tcp port.
  rules: [{ports: [80, 9090], paths: [{prefix: /admin}]}]
`

// TestAuthzCheck: the admin API explains decisions from the destination's
// compiled policies: the deciding policy and rule, every rule's first
// failed condition, the port's protocol from the Service.
func TestAuthzCheck(t *testing.T) {
	c := startControl(t, t.TempDir())
	cl := newClient(t, c)
	if st, a := cl.apply(false, file{"a.yaml", authzYAML}); st != 200 {
		t.Fatalf("apply: %d %+v", st, a)
	}
	check := func(req string) (int, AuthzCheckResponse, string) {
		t.Helper()
		st, b := cl.do("POST", "/v1/authz/check", []byte(req))
		var r AuthzCheckResponse
		_ = json.Unmarshal(b, &r)
		return st, r, string(b)
	}
	for _, tc := range []struct {
		name, req, decision, policy string
		rule                        int
		failed                      string // the ALLOW policy's rule traces, "from,methods,..."
	}{
		{"allowed GET", `{"from":"spiffe://trellis.local/ns/shop/sa/web","to":"orders.shop","method":"GET","path":"/o"}`, "allow", "shop/callers", 0, ",from,from"},
		{"method not allowed", `{"from":"spiffe://trellis.local/ns/shop/sa/web","to":"orders.shop","method":"POST","path":"/o"}`, "deny", "", -1, "methods,from,from"},
		{"deny before allow", `{"from":"spiffe://trellis.local/ns/shop/sa/web","to":"orders.shop","method":"GET","path":"/admin/x"}`, "deny", "shop/no-admin", 0, ",from,from"},
		{"grpc method", `{"from":"spiffe://trellis.local/ns/ops/sa/batch","to":"orders.shop","port":9090,"method":"POST","path":"/shop.Orders/Get"}`, "allow", "shop/callers", 1, "from,,from"},
		{"tcp port", `{"from":"spiffe://trellis.local/ns/shop/sa/db-client","to":"orders.shop","port":5432}`, "allow", "shop/callers", 2, "from,from,"},
		{"tcp port, allow rule with http conditions", `{"from":"spiffe://trellis.local/ns/shop/sa/web","to":"orders.shop","port":5432}`, "deny", "", -1, "tcp,from,from"},
		{"plaintext", `{"to":"orders.shop"}`, "deny", "", -1, "from,from,from"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, r, body := check(tc.req)
			if st != 200 || r.Decision != tc.decision || r.Policy != tc.policy {
				t.Fatalf("%d %s", st, body)
			}
			if tc.rule >= 0 && (r.Rule == nil || *r.Rule != tc.rule) {
				t.Fatalf("rule: %s", body)
			}
			var failed []string
			for _, p := range r.Policies {
				if p.Name == "shop/callers" {
					for _, rt := range p.Rules {
						failed = append(failed, rt.Failed)
					}
				}
			}
			if got := strings.Join(failed, ","); got != tc.failed {
				t.Fatalf("rule traces %q, want %q: %s", got, tc.failed, body)
			}
			if r.Policies[0].Name != "shop/no-admin" {
				t.Fatalf("DENY policies are not listed first: %s", body)
			}
		})
	}
	// The default, with no policy.
	st, r, body := check(`{"from":"spiffe://trellis.local/ns/shop/sa/web","to":"web.shop"}`)
	if st != 200 || r.Decision != "allow" || r.Reason != "default" || r.DefaultAction != "allow" || len(r.Policies) != 1 {
		t.Fatalf("web.shop: %d %s", st, body)
	}
	for _, bad := range []string{`{"to":"orders.shop","port":81}`, `{"to":"Orders!"}`, `{`} {
		if st, _, body := check(bad); st != 400 {
			t.Errorf("%s: %d %s, want 400", bad, st, body)
		}
	}
}
