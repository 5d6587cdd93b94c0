package control

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"testing"
	"time"

	"trellis.dev/trellis/internal/push"
	"trellis.dev/trellis/internal/store"
	"trellis.dev/trellis/internal/store/etcdtest"
)

func proxiesOf(t *testing.T, c *Control) []push.ProxyStatus {
	t.Helper()
	status, body := newClient(t, c).do("GET", "/v1/proxies", nil)
	var list []push.ProxyStatus
	if status != http.StatusOK || json.Unmarshal(body, &list) != nil {
		t.Fatalf("GET /v1/proxies: %d %s", status, body)
	}
	return list
}

// TestProxyStatusFromAnyReplica: a proxy attached to one replica is listed,
// with that replica's id, by every replica; its record is written once per
// change (not per flush), and it leaves with the proxy's lease.
func TestProxyStatusFromAnyReplica(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	e := store.EtcdOptions{Endpoints: []string{srv.Endpoint}, Prefix: "/ha"}
	a, b := startEtcdReplica(t, e, "a"), startEtcdReplica(t, e, "b")
	startProxySession(t, a, "inventory")

	var seen push.ProxyStatus
	deadline := time.Now().Add(5 * time.Second)
	for seen.State != push.StateSynced {
		if time.Now().After(deadline) {
			t.Fatalf("replica b never listed inventory-1 as SYNCED; last %+v", seen)
		}
		time.Sleep(20 * time.Millisecond)
		for _, p := range proxiesOf(t, b) {
			if p.NodeID == "inventory-1" {
				seen = p
			}
		}
	}
	if seen.Replica != "a" {
		t.Fatalf("b lists inventory-1 on replica %q, want a", seen.Replica)
	}
	if own := proxiesOf(t, a); len(own) != 1 || own[0].Replica != "a" {
		t.Fatalf("a lists %+v", own)
	}

	// Unchanged statuses are not rewritten: a second of flushes (ten)
	// writes nothing new.
	before := a.status.puts.Load()
	time.Sleep(time.Second)
	if got := a.status.puts.Load() - before; got != 0 {
		t.Fatalf("%d status writes in a second without a change, want 0", got)
	}
	if n := b.status.puts.Load(); n != 0 {
		t.Fatalf("replica b wrote %d records for a proxy it does not serve", n)
	}
	t.Logf("status writes for one proxy attaching and syncing: %d records in %d transactions", a.status.puts.Load(), a.status.txns.Load())

	// apply --wait through b, which serves no proxy, waits for a's.
	st, ans := newClient(t, b).apply(false, file{"svc.yaml", serviceYAML})
	if st != http.StatusOK {
		t.Fatalf("apply through b: %d %+v", st, ans)
	}
	status, body := newClient(t, b).do("GET", fmt.Sprintf("/v1/proxies?minRevision=%d&wait=10s", ans.Revision), nil)
	var waited []push.ProxyStatus
	if status != http.StatusOK || json.Unmarshal(body, &waited) != nil {
		t.Fatalf("wait through b: %d %s", status, body)
	}
	if len(waited) != 1 || !waited[0].AtRevision(ans.Revision) {
		t.Fatalf("wait through b for revision %d returned %+v; want inventory-1 at it", ans.Revision, waited)
	}

	// The proxy's lease ends (it died): its record goes with it.
	if err := a.reg.Deregister(t.Context(), a.push.NodeLease("inventory-1")); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); len(proxiesOf(t, b)) != 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("b still lists %+v after the proxy's lease ended", proxiesOf(t, b))
		}
	}
}

// fakeStatusStore records transactions; leases in dead are gone.
type fakeStatusStore struct {
	txns [][]statusRecord
	dead map[int64]bool
	recs map[string][]byte
}

func (f *fakeStatusStore) put(_ context.Context, recs []statusRecord) error {
	for _, r := range recs {
		if f.dead[r.lease] {
			return fmt.Errorf("fake: %w", errStatusLease)
		}
	}
	f.txns = append(f.txns, recs)
	for _, r := range recs {
		f.recs[r.node] = r.value
	}
	return nil
}

func (f *fakeStatusStore) list(context.Context) ([][]byte, error) {
	var out [][]byte
	for _, v := range f.recs {
		out = append(out, v)
	}
	return out, nil
}

// TestStatusShareWritesChangesInBatches: 1,000 proxies are written once, in
// transactions of at most 100; an unchanged status is not rewritten; a
// lapsed lease costs only its own record; a closed stream's record stays
// for the replica it moves to.
func TestStatusShareWritesChangesInBatches(t *testing.T) {
	list := make([]push.ProxyStatus, 1000)
	for i := range list {
		list[i] = push.ProxyStatus{NodeID: fmt.Sprintf("p%04d", i), Replica: "a", State: push.StateSynced, Revision: 10}
	}
	fs := &fakeStatusStore{dead: map[int64]bool{}, recs: map[string][]byte{}}
	leaseOf := func(id string) int64 { return int64(100+len(id)) + int64(id[len(id)-1]) }
	s := newStatusShare(fs, func() []push.ProxyStatus { return slices.Clone(list) }, leaseOf, slog.New(slog.DiscardHandler))

	s.flush(t.Context())
	if s.puts.Load() != 1000 || len(fs.txns) != 10 {
		t.Fatalf("first flush: %d records in %d transactions, want 1000 in 10", s.puts.Load(), len(fs.txns))
	}
	for _, tx := range fs.txns {
		if len(tx) > statusTxnOps {
			t.Fatalf("a transaction of %d records, over %d", len(tx), statusTxnOps)
		}
	}
	s.flush(t.Context())
	if s.puts.Load() != 1000 {
		t.Fatalf("unchanged flush wrote %d more", s.puts.Load()-1000)
	}

	// Five proxies reach a new revision; one of them has just died.
	for i := range 5 {
		list[i].Revision = 11
	}
	fs.dead[leaseOf(list[2].NodeID)] = true
	s.flush(t.Context())
	if got := s.puts.Load() - 1000; got != 4 {
		t.Fatalf("after 5 changes, one lease gone: %d written, want 4", got)
	}

	// p0000's stream closes here: its record stays (another replica
	// rewrites it); if it comes back here, it is written again.
	gone := list[0]
	list = list[1:]
	s.flush(t.Context())
	list = append(list, gone)
	before := s.puts.Load()
	s.flush(t.Context())
	if s.puts.Load()-before != 1 {
		t.Fatalf("a returning stream wrote %d records, want 1", s.puts.Load()-before)
	}
	mesh, err := s.mesh(t.Context())
	if err != nil || len(mesh) != 1000 {
		t.Fatalf("mesh: %d proxies, %v; want 1000", len(mesh), err)
	}
}

// BenchmarkStatusFlush: one flush over 1,000 attached proxies of which 10
// changed, the steady state of a busy replica.
func BenchmarkStatusFlush(b *testing.B) {
	list := make([]push.ProxyStatus, 1000)
	for i := range list {
		list[i] = push.ProxyStatus{NodeID: fmt.Sprintf("p%04d", i), Replica: "a", State: push.StateSynced, Revision: 10}
	}
	fs := &fakeStatusStore{dead: map[int64]bool{}, recs: map[string][]byte{}}
	s := newStatusShare(fs, func() []push.ProxyStatus { return list }, func(string) int64 { return 1 }, slog.New(slog.DiscardHandler))
	s.flush(b.Context())
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		for j := range 10 {
			list[(i*10+j)%len(list)].Revision++
		}
		fs.txns = fs.txns[:0]
		s.flush(b.Context())
	}
}
