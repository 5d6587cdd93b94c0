package store

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

// TestGroupRerunUndoesSideEffects: a revoke, then a write that fails, then
// a put, queued into one group: the group is rolled back at the failing
// write and run again without it; the revoke's lease (taken out of memory
// on the first run) must be put back before the rerun, or the rerun finds
// no lease and the revoke fails.
func TestGroupRerunUndoesSideEffects(t *testing.T) {
	s, err := NewBolt(filepath.Join(t.TempDir(), "db"), BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	id, err := s.Grant(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Txn(ctx, Op{Type: OpPut, Key: "/leased", Value: []byte("v"), ExpectRevision: Any, Lease: id}); err != nil {
		t.Fatal(err)
	}

	// Hold the committer's role so the three writes queue, in this order.
	s.qmu.Lock()
	s.committing = true
	s.qmu.Unlock()
	queued := func(n int) {
		for {
			s.qmu.Lock()
			l := len(s.queue)
			s.qmu.Unlock()
			if l == n {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
	errs := make(chan error, 3)
	go func() { errs <- s.Revoke(ctx, id) }()
	queued(1)
	go func() {
		_, err := s.Txn(ctx, Put("/k", []byte("x"), 12345))
		if !errors.Is(err, ErrConflict) {
			err = errors.Join(errors.New("conflicting write"), err)
		} else {
			err = nil
		}
		errs <- err
	}()
	queued(2)
	go func() {
		_, err := s.Txn(ctx, Put("/other", []byte("v"), Any))
		errs <- err
	}()
	queued(3)
	before := s.Commits()
	s.commitQueued()
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := s.Commits() - before; got != 1 {
		t.Fatalf("%d commits, want the group in 1", got)
	}
	if kv, err := s.Get(ctx, "/leased"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("leased key after revoke: %v, %v", kv, err)
	}
	if err := s.KeepAlive(ctx, id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revoked lease kept alive: %v", err)
	}
}
