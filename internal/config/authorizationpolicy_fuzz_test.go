package config

import (
	"testing"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/authz"
)

// FuzzAuthorizationPolicy: whatever AuthorizationPolicy Decode accepts
// compiles into an engine the proxy accepts (validation here is at least
// as strict as the proxy's, so a valid apply never makes proxies NACK),
// and deciding with it does not panic.
func FuzzAuthorizationPolicy(f *testing.F) {
	f.Add([]byte(authzPolicy("shop", "p", `{targetRefs: [{name: orders}], action: ALLOW, rules: [{
  from: [{identity: "spiffe://td/ns/shop/sa/web"}, {identityPrefix: "spiffe://td/ns/x"}, {namespace: ops}, {authenticated: true}],
  ports: [80], methods: [GET], paths: [{exact: /x}, {prefix: /api}],
  headers: [{name: x-a, exact: b}, {name: x-c, present: true}], grpc: [{service: a.B, method: C}]}]}`)))
	f.Add([]byte(authzPolicy(RootNamespace, "deny", `{action: DENY, rules: [{paths: [{prefix: /}]}]}`)))
	f.Add([]byte(authzPolicy("a", "b", `{action: ALLOW, rules: [{from: [{identity: "spiffe://x/ns/a/sa/b/c"}]}]}`)))
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, err := Decode("fuzz.yaml", data)
		if err != nil {
			return
		}
		ip := &meshv1.InboundPolicy{}
		for _, o := range objs {
			if p, ok := o.(*AuthorizationPolicy); ok {
				p.ContributeInbound(ip)
			}
		}
		if ip.Authorization == nil {
			return
		}
		e, err := authz.Compile(ip.Authorization)
		if err != nil {
			t.Fatalf("valid policy refused by the proxy: %v\n%s", err, data)
		}
		e.Decide(&authz.Facts{PeerID: "spiffe://td/ns/shop/sa/web", Port: 80, Method: "GET", Path: "/api/x"})
		e.Decide(&authz.Facts{TCP: true})
	})
}
