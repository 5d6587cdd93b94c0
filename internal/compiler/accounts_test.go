package compiler

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// TestEndpointsRunAsDeclaredAccounts: a snapshot leaves out an endpoint
// whose certificate's service account its Service does not run as (one
// registered before the Service's accounts changed), and takes it in once
// the Service lists the account.
func TestEndpointsRunAsDeclaredAccounts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		svc := func(accounts string) string {
			return "apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata: {name: payments}\nspec: {ports: [{port: 80}]" + accounts + "}\n"
		}
		e.apply(svc(""))
		reg := func(id, identity string) {
			ep := &meshv1.Endpoint{Id: id, Service: "payments", Namespace: "default", Address: "127.0.0.1:" + id,
				Labels: map[string]string{}, Healthy: true, Identity: identity}
			if _, _, err := e.reg.Register(context.Background(), ep, time.Minute); err != nil {
				t.Fatal(err)
			}
			synctest.Wait()
		}
		reg("1", "spiffe://trellis.local/ns/default/sa/payments")
		reg("2", "spiffe://trellis.local/ns/default/sa/web")
		reg("3", "spiffe://trellis.local/ns/other/sa/payments")
		reg("4", "not a spiffe id")
		if got := endpointIDs(service(t, e.snap("web", "default", "payments.default"), "payments", "default")); got != "1" {
			t.Fatalf("payments endpoints %s, want 1 (the others run as web, in another namespace, or as nobody)", got)
		}
		e.apply(svc(", serviceAccounts: [payments, web]"))
		if got := endpointIDs(service(t, e.snap("web", "default", "payments.default"), "payments", "default")); got != "1,2" {
			t.Fatalf("payments endpoints %s after listing web, want 1,2", got)
		}
	})
}
