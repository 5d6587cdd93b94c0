package push

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// waitFor polls node's status until cond holds.
func waitFor(t testing.TB, s *Server, node, what string, cond func(ProxyStatus) bool) ProxyStatus {
	t.Helper()
	var st ProxyStatus
	eventually(t, node+": "+what, func() bool {
		var ok bool
		st, ok = statusOf(s, node)
		return ok && cond(st)
	})
	return st
}

func atRev(rev int64) func(ProxyStatus) bool {
	return func(st ProxyStatus) bool { return st.State == StateSynced && st.Revision == rev }
}

// TestRevisionFollowsWrites: a proxy's revision is that of the snapshot it
// ACKed, advanced without a push when a write leaves its config unchanged;
// a NACK does not advance it.
func TestRevisionFollowsWrites(t *testing.T) {
	ca := newTestCA(t)
	rec := &recordingMetrics{}
	e := startEnv(t, ca, "127.0.0.1:0", func(o *ServerOptions) { o.Metrics = rec })
	orders, _ := runProxy(t, e, "orders-1", "orders", time.Second)
	runProxy(t, e, "payments-1", "payments", time.Second)
	orders.next(t)
	waitFor(t, e.srv, "orders-1", "synced at 1", atRev(1))
	waitFor(t, e.srv, "payments-1", "synced at 1", atRev(1))
	pushes := e.srv.Counters().Pushes

	// A write that changes orders' config only: orders gets a push and its
	// ACK carries it to 2; payments is current at 2 without one.
	rev := e.snaps.write("orders")
	orders.expect(t, "v0|orders.default#1")
	waitFor(t, e.srv, "orders-1", "synced at 2", atRev(rev))
	waitFor(t, e.srv, "payments-1", "at 2 without a push", atRev(rev))
	if got := e.srv.Counters().Pushes - pushes; got != 1 {
		t.Fatalf("pushes for one write affecting one proxy = %d, want 1", got)
	}

	// orders refuses its next config: it stays at 2, with the refused
	// snapshot's revision as SentRevision; payments moves on.
	orders.set(func(p *proxySim) { p.refuse = "v0|orders.default#2" })
	rev = e.snaps.write("orders")
	orders.expect(t, "v0|orders.default#2")
	st := waitFor(t, e.srv, "orders-1", "NACKED", func(st ProxyStatus) bool { return st.State == StateNacked })
	if st.Revision != rev-1 || st.SentRevision != rev || !st.Refused(rev) || st.AtRevision(rev) {
		t.Fatalf("after NACK at %d: %+v; want Revision %d, SentRevision %d, refused", rev, st, rev-1, rev)
	}
	waitFor(t, e.srv, "payments-1", "at 3", atRev(rev))

	// A write nobody's config sees: the refused snapshot is still what
	// orders would get, so it is refused at the new revision too.
	rev = e.snaps.write()
	waitFor(t, e.srv, "payments-1", "at 4", atRev(rev))
	st = waitFor(t, e.srv, "orders-1", "sent at 4", func(st ProxyStatus) bool { return st.SentRevision == rev })
	if st.Revision != rev-2 || !st.Refused(rev) {
		t.Fatalf("NACKed proxy after an unrelated write: %+v; want Revision %d and refused", st, rev-2)
	}
	list := e.srv.AwaitRevision(context.Background(), rev) // settles at once: refused
	if !Settled(list, rev) || len(list) != 2 {
		t.Fatalf("AwaitRevision(%d) = %+v", rev, list)
	}

	// Fixed: the next config is ACKed and orders catches up.
	orders.set(func(p *proxySim) { p.refuse = "" })
	rev = e.snaps.write("orders")
	orders.expect(t, "v0|orders.default#3")
	waitFor(t, e.srv, "orders-1", "synced at 5", atRev(rev))

	if rec.get("nack") != 1 || rec.get("ack") < 4 || rec.get("push") != int(e.srv.Counters().Pushes) || rec.minAck <= 0 {
		t.Fatalf("metrics recorded %v (min ack latency %v), counters %+v", rec.counts, rec.minAck, e.srv.Counters())
	}
}

// TestRevisionWhileUnanswered: writes that leave a sent, not yet ACKed
// snapshot unchanged move its revision, and the ACK carries the proxy there.
func TestRevisionWhileUnanswered(t *testing.T) {
	ca := newTestCA(t)
	e := startEnv(t, ca, "127.0.0.1:0", nil)
	mesh := rawWatch(t, e, ca.workloadCert(t, spiffe("default", "orders"), time.Time{}))
	if _, err := mesh.Register(context.Background(), &meshv1.RegisterRequest{Endpoint: endpoint("orders-1", "orders")}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ws, err := mesh.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ws.Send(&meshv1.WatchRequest{NodeId: "orders-1"}); err != nil {
		t.Fatal(err)
	}
	snap, err := ws.Recv()
	if err != nil {
		t.Fatal(err)
	}
	rev := e.snaps.write() // does not change orders' config
	st := waitFor(t, e.srv, "orders-1", "sent revision moved", func(st ProxyStatus) bool { return st.SentRevision == rev })
	if st.State != StateStale || st.Revision != 0 {
		t.Fatalf("unanswered: %+v; want STALE at revision 0", st)
	}

	// AwaitRevision blocks while the proxy has not answered ...
	got := make(chan []ProxyStatus, 1)
	go func() { got <- e.srv.AwaitRevision(context.Background(), rev) }()
	select {
	case l := <-got:
		t.Fatalf("AwaitRevision returned before the ACK: %+v", l)
	case <-time.After(100 * time.Millisecond):
	}
	// ... and returns at its ACK, which carries the proxy to rev.
	if err := ws.Send(&meshv1.WatchRequest{Version: snap.GetVersion(), Nonce: snap.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	select {
	case l := <-got:
		if len(l) != 1 || l[0].Revision != rev || l[0].State != StateSynced {
			t.Fatalf("AwaitRevision(%d) = %+v", rev, l)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("AwaitRevision did not return after the ACK")
	}

	// A proxy that never answers: the wait ends with the context, naming it.
	rev = e.snaps.write("orders")
	wctx, wcancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer wcancel()
	l := e.srv.AwaitRevision(wctx, rev)
	if len(l) != 1 || l[0].AtRevision(rev) || l[0].Refused(rev) || l[0].State != StateStale {
		t.Fatalf("AwaitRevision after timeout = %+v; want orders-1 STALE behind %d", l, rev)
	}
}

// TestRevisionOnReconnect: a proxy that reconnects running the current
// version is current at the compiled revision without a push.
func TestRevisionOnReconnect(t *testing.T) {
	ca := newTestCA(t)
	e := startEnv(t, ca, "127.0.0.1:0", nil)
	e.snaps.write()
	e.snaps.write()
	mesh := rawWatch(t, e, ca.workloadCert(t, spiffe("default", "orders"), time.Time{}))
	if _, err := mesh.Register(context.Background(), &meshv1.RegisterRequest{Endpoint: endpoint("orders-1", "orders")}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ws, err := mesh.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ws.Send(&meshv1.WatchRequest{NodeId: "orders-1", Version: "v0|"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, e.srv, "orders-1", "at 3", atRev(e.snaps.revision()))
	if p := e.srv.Counters().Pushes; p != 0 {
		t.Fatalf("pushes = %d, want 0", p)
	}
}

func TestSettled(t *testing.T) {
	synced := func(rev int64) ProxyStatus { return ProxyStatus{State: StateSynced, Revision: rev, SentRevision: rev} }
	nacked := ProxyStatus{State: StateNacked, Revision: 4, SentRevision: 5}
	stale := ProxyStatus{State: StateStale, Revision: 4, SentRevision: 5}
	tests := []struct {
		list []ProxyStatus
		rev  int64
		want bool
	}{
		{nil, 5, true},
		{[]ProxyStatus{synced(5), synced(6)}, 5, true},
		{[]ProxyStatus{synced(5), synced(4)}, 5, false},
		{[]ProxyStatus{synced(5), stale}, 5, false},
		{[]ProxyStatus{stale, nacked}, 5, true},      // refused: no use waiting
		{[]ProxyStatus{synced(6), nacked}, 6, false}, // refused an older revision; 6 may still come
		{[]ProxyStatus{{State: StatePending}}, 1, false},
	}
	for i, tt := range tests {
		if got := Settled(tt.list, tt.rev); got != tt.want {
			t.Errorf("%d: Settled(%+v, %d) = %v, want %v", i, tt.list, tt.rev, got, tt.want)
		}
	}
}

// recordingMetrics counts what the server records.
type recordingMetrics struct {
	mu     sync.Mutex
	counts map[string]int
	minAck time.Duration
}

func (r *recordingMetrics) add(k string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.counts == nil {
		r.counts = map[string]int{}
	}
	r.counts[k]++
}

func (r *recordingMetrics) get(k string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.counts[k]
}

func (r *recordingMetrics) SnapshotPushed() { r.add("push") }
func (r *recordingMetrics) SnapshotAcked(d time.Duration) {
	r.add("ack")
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.minAck == 0 || d < r.minAck {
		r.minAck = d
	}
}
func (r *recordingMetrics) SnapshotNacked()     { r.add("nack") }
func (r *recordingMetrics) SlowConsumerClosed() { r.add("slow") }
func (r *recordingMetrics) CertificateIssued(renewal bool) {
	r.add(fmt.Sprintf("cert renewal=%v", renewal))
}
