package push

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// TestWatchStatusReport: a proxy's concurrency limit and shed count reach
// its status with its first message and, as they change, in status-only
// messages every StatusInterval; those are no ACK (the ACK count stays)
// and no NACK, and do not clear one.
func TestWatchStatusReport(t *testing.T) {
	ca := newTestCA(t)
	e := startEnv(t, ca, "127.0.0.1:0", nil)
	c := e.dial(t, e.ca.workloadCert(t, spiffe("default", "orders"), time.Time{}))
	p := &proxySim{applied: make(chan string, 1000)}
	var limit atomic.Uint32
	var shed atomic.Uint64
	limit.Store(7)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- c.RunSession(ctx, SessionOptions{Endpoint: endpoint("orders-1", "orders"), Heartbeat: time.Second,
			Subscriptions: p.subscriptions, Apply: p.apply, StatusInterval: 20 * time.Millisecond,
			Status: func(r *meshv1.WatchRequest) { r.ConcurrencyLimit, r.ConcurrencyShed = limit.Load(), shed.Load() }})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("RunSession: %v", err)
		}
	})
	p.expect(t, "v0|orders.default")
	st := waitState(t, e.srv, "orders-1", StateSynced, "v0|orders.default")
	if st.ConcurrencyLimit != 7 {
		t.Fatalf("limit %d after the first messages, want 7", st.ConcurrencyLimit)
	}
	acks := e.srv.Counters().Acks
	limit.Store(12)
	shed.Store(30)
	eventually(t, "the new status", func() bool {
		st, _ := statusOf(e.srv, "orders-1")
		return st.ConcurrencyLimit == 12 && st.ConcurrencyShed == 30
	})
	if st, _ := statusOf(e.srv, "orders-1"); st.State != StateSynced || st.AckedVersion != "v0|orders.default" || e.srv.Counters().Acks != acks {
		t.Fatalf("a status-only message changed the sync state: %+v, acks %d -> %d", st, acks, e.srv.Counters().Acks)
	}

	// NACKed, then a status-only message: still NACKED, error kept.
	p.set(func(p *proxySim) { p.refuse = "v1" })
	e.snaps.bump(true)
	p.expect(t, "v1|orders.default")
	waitState(t, e.srv, "orders-1", StateNacked, "v0|orders.default")
	shed.Store(31)
	eventually(t, "the status after the NACK", func() bool {
		st, _ := statusOf(e.srv, "orders-1")
		return st.ConcurrencyShed == 31
	})
	if st, _ := statusOf(e.srv, "orders-1"); st.State != StateNacked || st.Error == "" {
		t.Fatalf("a status-only message cleared the NACK: %+v", st)
	}
}
