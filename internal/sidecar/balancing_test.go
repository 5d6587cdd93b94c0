package sidecar

import (
	"fmt"
	"testing"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// TestSourceIdentityHashing: the sidecar gives its proxy its own SPIFFE ID,
// so a service hashed by source identity sends every request of one client
// workload to one replica.
func TestSourceIdentityHashing(t *testing.T) {
	cp := startControlPlane(t)
	cp.mesh.update(func(m *mesh) {
		m.policy = map[string]*meshv1.BackendPolicy{"orders": {
			LoadBalancer: meshv1.LoadBalancer_MAGLEV,
			Hash:         &meshv1.HashPolicy{Key: &meshv1.HashPolicy_SourceIdentity{SourceIdentity: true}},
		}}
	})
	for i := range 4 {
		startSidecar(t, cp, Options{Service: "orders", AppAddr: startApp(t, fmt.Sprint("orders-", i))})
	}
	for _, sa := range []string{"web", "batch", "admin"} {
		fe := startSidecar(t, cp, Options{Service: "frontend", ServiceAccount: sa, OutboundAddr: "127.0.0.1:0", Upstreams: map[string]string{"orders": "127.0.0.1:0"}})
		_, home := call(t, fe, "orders")
		for range 6 {
			if code, body := call(t, fe, "orders"); code != 200 || body != home {
				t.Fatalf("identity %s: GET orders = %d %q, earlier %q; want one replica for one identity", sa, code, body, home)
			}
		}
		t.Logf("identity %s → %s", sa, home)
	}
}
