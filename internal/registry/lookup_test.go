package registry

import (
	"errors"
	"testing"
	"time"
)

// TestLookup finds an endpoint by namespace and id with its lease, and only
// in that namespace; a revoked lease leaves nothing to find.
func TestLookup(t *testing.T) {
	st := newStore(t)
	r := New(st, nil)
	ep := endpoint("orders-1", "orders")
	lease, _, err := r.Register(t.Context(), ep, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Register(t.Context(), endpoint("orders-10", "orders"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	got, gotLease, err := r.Lookup(t.Context(), "default", "orders-1")
	if err != nil {
		t.Fatal(err)
	}
	if gotLease != lease || got.GetId() != "orders-1" || got.GetIdentity() != ep.GetIdentity() {
		t.Fatalf("Lookup = %v lease %d, want orders-1 lease %d", got, gotLease, lease)
	}
	if _, _, err := r.Lookup(t.Context(), "prod", "orders-1"); !errors.Is(err, ErrLeaseExpired) {
		t.Fatalf("other namespace: err = %v, want ErrLeaseExpired", err)
	}
	if _, _, err := r.Lookup(t.Context(), "default", "a/b"); err == nil || errors.Is(err, ErrLeaseExpired) {
		t.Fatalf("bad id: err = %v, want a validation error", err)
	}
	if err := r.Deregister(t.Context(), lease); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Lookup(t.Context(), "default", "orders-1"); !errors.Is(err, ErrLeaseExpired) {
		t.Fatalf("after deregister: err = %v, want ErrLeaseExpired", err)
	}
}
