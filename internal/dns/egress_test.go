package dns

import (
	"context"
	"testing"

	mdns "github.com/miekg/dns"

	"trellis.dev/trellis/internal/config"
	"trellis.dev/trellis/internal/store"
)

// TestExternalServiceNotInDNS: an ExternalService is outside the mesh, so
// the mesh zone has no name for it (its selector is nil, which would
// otherwise take every endpoint of its namespace), while a mesh service
// beside it still answers.
func TestExternalServiceNotInDNS(t *testing.T) {
	m := newMesh(t)
	m.service("default", "orders", "http:80")
	m.endpoint("default", "orders", "orders-default-00000001", "127.0.0.1:15001", true)
	b := []byte(`{"apiVersion":"trellis.dev/v1alpha1","kind":"ExternalService","metadata":{"name":"payments","namespace":"default"},` +
		`"spec":{"hosts":["api.payments.example"],"ports":[{"number":80}],"resolution":"DNS"}}`)
	m.txn(store.Put(config.StoreKey(config.Ref{Kind: "ExternalService", Namespace: "default", Name: "payments"}), b, store.Any))
	h := m.handler(nil)
	if r := h.answer(context.Background(), query("payments.default.svc.trellis.local.", mdns.TypeA), false); r.Rcode != mdns.RcodeNameError {
		t.Errorf("payments.default.svc: rcode %s, want NXDOMAIN; answer %v", mdns.RcodeToString[r.Rcode], r.Answer)
	}
	if r := h.answer(context.Background(), query("orders.default.svc.trellis.local.", mdns.TypeA), false); len(r.Answer) != 1 {
		t.Errorf("orders: %v", r.Answer)
	}
}
