package store

import (
	"context"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

type opRecorder struct {
	mu  sync.Mutex
	ops []string
}

func (r *opRecorder) ObserveStoreOp(op string, d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if d < 0 {
		op += "(negative)"
	}
	r.ops = append(r.ops, op)
}

// TestObservedReportsEveryOperation runs each operation through the wrapper
// on a real bolt store: each is reported once under its name and still does
// what the store does.
func TestObservedReportsEveryOperation(t *testing.T) {
	b, err := NewBolt(filepath.Join(t.TempDir(), "store.db"), BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rec := &opRecorder{}
	s := Observed(b, rec)
	defer s.Close()
	ctx := context.Background()

	rev, err := s.Txn(ctx, Put("/a", []byte("1"), Absent))
	if err != nil {
		t.Fatal(err)
	}
	if kv, err := s.Get(ctx, "/a"); err != nil || string(kv.Value) != "1" || kv.ModRevision != rev {
		t.Fatalf("Get = %+v, %v", kv, err)
	}
	if kvs, _, err := s.List(ctx, "/"); err != nil || len(kvs) != 1 {
		t.Fatalf("List = %v, %v", kvs, err)
	}
	if got, err := s.Revision(ctx); err != nil || got != rev {
		t.Fatalf("Revision = %d, %v; want %d", got, err, rev)
	}
	lease, err := s.Grant(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.KeepAlive(ctx, lease); err != nil {
		t.Fatal(err)
	}
	if err := s.Revoke(ctx, lease); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if _, err := s.Watch(wctx, "/", 0); err != nil {
		t.Fatal(err)
	}

	want := []string{OpNameTxn, OpNameGet, OpNameList, OpNameRevision, OpNameGrant, OpNameKeepAlive, OpNameRevoke}
	if !slices.Equal(rec.ops, want) {
		t.Fatalf("observed %v, want %v (Watch passes through untimed)", rec.ops, want)
	}
	names := OpNames()
	slices.Sort(names)
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Fatalf("OpNames() = %v, want %v", names, want)
	}
}
