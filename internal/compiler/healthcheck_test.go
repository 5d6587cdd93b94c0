package compiler

import (
	"testing"
	"testing/synctest"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// TestInboundHealthCheck: a proxy's snapshot carries its own Service's
// healthCheck (a change is pushed), a caller's copy of the Service does
// not, and an endpoint turning unhealthy leaves callers' snapshots and
// returns when healthy.
func TestInboundHealthCheck(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		e.register("o1", "orders", "default", true)
		e.register("o2", "orders", "default", true)
		if hc := e.snap("orders", "default").GetInbound().GetHealthCheck(); hc != nil {
			t.Fatalf("no Service: health check %v, want none (the proxy's TCP default)", hc)
		}
		e.apply("apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata: {name: orders}\nspec:\n  ports: [{name: http, port: 80}]\n  healthCheck: {type: http, path: /healthz}\n")
		s := e.snap("orders", "default")
		hc := s.GetInbound().GetHealthCheck()
		if hc.GetType() != meshv1.HealthCheck_HTTP || hc.GetPath() != "/healthz" || hc.GetUnhealthyThreshold() != 3 {
			t.Fatalf("inbound health check %v, want http /healthz with defaults", hc)
		}
		e.apply("apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata: {name: orders}\nspec:\n  ports: [{name: http, port: 80}]\n  healthCheck: {type: http, path: /ready}\n")
		if again := e.snap("orders", "default"); again.Version == s.Version {
			t.Fatal("the health check changed but the version did not")
		}
		fe := e.snap("frontend", "default", "orders.default")
		if got := service(t, fe, "orders", "default").GetHealthCheck(); got != nil {
			t.Errorf("a caller's copy of orders carries its health check %v", got)
		}
		if got := endpointIDs(service(t, fe, "orders", "default")); got != "o1,o2" {
			t.Fatalf("endpoints %s, want o1,o2", got)
		}
		lease := e.leaseOf("o2")
		if err := e.reg.SetHealth(t.Context(), lease, false, "HTTP 503"); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if got := endpointIDs(service(t, e.snap("frontend", "default", "orders.default"), "orders", "default")); got != "o1" {
			t.Fatalf("after o2 turned unhealthy: endpoints %s, want o1", got)
		}
		if err := e.reg.SetHealth(t.Context(), lease, true, ""); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if got := endpointIDs(service(t, e.snap("frontend", "default", "orders.default"), "orders", "default")); got != "o1,o2" {
			t.Fatalf("after o2 turned healthy again: endpoints %s, want o1,o2", got)
		}
	})
}

// leaseOf is the lease endpoint id is registered under.
func (e *env) leaseOf(id string) int64 {
	e.t.Helper()
	kvs, _, err := e.st.List(e.t.Context(), "/registry/endpoints/")
	if err != nil {
		e.t.Fatal(err)
	}
	for _, kv := range kvs {
		if len(kv.Key) > len(id) && kv.Key[len(kv.Key)-len(id)-1:] == "/"+id {
			return int64(kv.Lease)
		}
	}
	e.t.Fatalf("endpoint %s not registered", id)
	return 0
}
