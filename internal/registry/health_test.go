package registry

import (
	"errors"
	"testing"
	"time"
)

// TestSetHealth: an endpoint registered unhealthy turns healthy and back,
// keeps its lease (it still expires with it), and an unchanged verdict
// writes nothing.
func TestSetHealth(t *testing.T) {
	st := newStore(t)
	r := New(st, nil)
	ep := endpoint("p1", "orders")
	ep.Healthy, ep.HealthReason = false, "no check passed yet"
	lease, _, err := r.Register(t.Context(), ep, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	get := func() (bool, string, int64) {
		t.Helper()
		kv, err := st.Get(t.Context(), Key("default", "orders", "p1"))
		if err != nil {
			t.Fatal(err)
		}
		if int64(kv.Lease) != lease {
			t.Fatalf("key moved to lease %d, want %d", kv.Lease, lease)
		}
		got, err := Decode(kv.Value)
		if err != nil {
			t.Fatal(err)
		}
		return got.GetHealthy(), got.GetHealthReason(), kv.ModRevision
	}
	if h, reason, _ := get(); h || reason != "no check passed yet" {
		t.Fatalf("registered: healthy=%v reason %q", h, reason)
	}
	if err := r.SetHealth(t.Context(), lease, true, "ignored"); err != nil {
		t.Fatal(err)
	}
	h, reason, rev := get()
	if !h || reason != "" {
		t.Fatalf("after pass: healthy=%v reason %q, want healthy, no reason", h, reason)
	}
	if err := r.SetHealth(t.Context(), lease, true, ""); err != nil {
		t.Fatal(err)
	}
	if _, _, again := get(); again != rev {
		t.Errorf("unchanged verdict wrote the key (revision %d → %d)", rev, again)
	}
	if err := r.SetHealth(t.Context(), lease, false, "HTTP 503"); err != nil {
		t.Fatal(err)
	}
	if h, reason, _ := get(); h || reason != "HTTP 503" {
		t.Fatalf("after failure: healthy=%v reason %q", h, reason)
	}
	if err := r.SetHealth(t.Context(), lease+1000, true, ""); !errors.Is(err, ErrLeaseExpired) {
		t.Errorf("unknown lease: %v, want ErrLeaseExpired", err)
	}
	if err := r.SetHealth(t.Context(), 0, true, ""); !errors.Is(err, ErrLeaseExpired) {
		t.Errorf("lease 0: %v, want ErrLeaseExpired", err)
	}
}
