package cli

import (
	"bytes"
	"testing"

	"trellis.dev/trellis/internal/control"
)

// TestAuthCheckOutput: the human output names the decision, the deciding
// policy and rule, and each rule's first failed condition.
func TestAuthCheckOutput(t *testing.T) {
	rule := 0
	var b bytes.Buffer
	req := &control.AuthzCheckRequest{From: "spiffe://trellis.local/ns/shop/sa/web", To: "orders.shop", Method: "GET", Path: "/admin"}
	resp := &control.AuthzCheckResponse{
		Service: "orders.shop", Port: 80, Protocol: "http", Decision: "deny", Reason: "denied by policy",
		Policy: "shop/no-admin", Rule: &rule, DefaultAction: "allow", Revision: 12,
		Policies: []control.AuthzPolicyTrace{
			{Name: "shop/no-admin", Action: "DENY", Rules: []control.AuthzRuleTrace{{Index: 0, Matched: true}}},
			{Name: "shop/orders-callers", Action: "ALLOW", Rules: []control.AuthzRuleTrace{{Index: 0, Failed: "paths"}, {Index: 1, Failed: "from"}}},
		},
	}
	if err := printAuthzCheck(&b, req, resp); err != nil {
		t.Fatal(err)
	}
	b.WriteString("---\n")
	req = &control.AuthzCheckRequest{To: "web.shop"}
	resp = &control.AuthzCheckResponse{Service: "web.shop", Port: 5432, Protocol: "tcp", Decision: "deny", Reason: "default", DefaultAction: "deny", Revision: 3}
	if err := printAuthzCheck(&b, req, resp); err != nil {
		t.Fatal(err)
	}
	golden(t, "auth-check", b.Bytes())
}

func TestParseHeaders(t *testing.T) {
	var req control.AuthzCheckRequest
	if err := parseHeaders([]string{"X-Tenant: acme", "x-tenant:b"}, &req); err != nil {
		t.Fatal(err)
	}
	if got := req.Headers["X-Tenant"]; len(got) != 1 || got[0] != "acme" || req.Headers["x-tenant"][0] != "b" {
		t.Fatalf("headers %v", req.Headers)
	}
	if err := parseHeaders([]string{"novalue"}, &req); err == nil {
		t.Fatal("a header without ':' accepted")
	}
}
