package store_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"trellis.dev/trellis/internal/store"
)

// TestBoltGroupCommit: concurrent writes share commits, yet each gets its
// own revision and watchers see one batch per revision, in order; a write
// whose precondition fails fails alone, and a revoke grouped with it still
// deletes its lease's keys exactly once.
func TestBoltGroupCommit(t *testing.T) {
	s := openBolt(t, tempDB(t), store.BoltOptions{})
	ctx := context.Background()
	const leases = 10
	var ids []store.LeaseID
	for i := range leases {
		id, err := s.Grant(ctx, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Txn(ctx, store.Op{Type: store.OpPut, Key: fmt.Sprintf("/leased/%d", i), Value: []byte("v"), ExpectRevision: store.Any, Lease: id}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	from, _ := s.Revision(ctx)
	events, err := s.Watch(ctx, "/", from+1)
	if err != nil {
		t.Fatal(err)
	}
	commits := s.Commits()

	const puts, conflicts = 100, 10
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		revs    []int64
		refused int
	)
	for i := range puts + conflicts + leases {
		wg.Go(func() {
			var rev int64
			var err error
			switch {
			case i < puts:
				rev, err = s.Txn(ctx, store.Put(fmt.Sprintf("/k/%03d", i), []byte("v"), store.Any))
			case i < puts+conflicts:
				// Expects a revision /k/000 never has.
				_, err = s.Txn(ctx, store.Put("/k/000", []byte("x"), 1))
				if !errors.Is(err, store.ErrConflict) {
					t.Errorf("conflicting write: %v, want ErrConflict", err)
				}
				mu.Lock()
				refused++
				mu.Unlock()
				return
			default:
				err = s.Revoke(ctx, ids[i-puts-conflicts])
				rev = -1
			}
			if err != nil {
				t.Errorf("write %d: %v", i, err)
				return
			}
			mu.Lock()
			revs = append(revs, rev)
			mu.Unlock()
		})
	}
	wg.Wait()
	end, _ := s.Revision(ctx)
	writes := puts + leases
	if int(end-from) != writes {
		t.Fatalf("revisions %d..%d for %d writes", from, end, writes)
	}
	slices.Sort(revs)
	revs = slices.DeleteFunc(revs, func(r int64) bool { return r < 0 })
	for i, r := range revs {
		if i > 0 && r == revs[i-1] {
			t.Fatalf("two puts got revision %d", r)
		}
	}
	if got := s.Commits() - commits; got >= uint64(writes+refused) {
		t.Errorf("%d commits for %d writes: none grouped", got, writes+refused)
	} else {
		t.Logf("%d writes in %d commits", writes+refused, got)
	}
	// One batch per revision, in order, each revoke deleting its one key.
	next, deleted := from+1, 0
	for next <= end {
		select {
		case b := <-events:
			for _, ev := range b {
				if ev.KV.ModRevision != next && ev.Type == store.EventPut {
					t.Fatalf("batch for %d carries an event of %d", next, ev.KV.ModRevision)
				}
				if ev.Type == store.EventDelete {
					deleted++
				}
			}
			next++
		case <-time.After(10 * time.Second):
			t.Fatalf("no batch for revision %d", next)
		}
	}
	if deleted != leases {
		t.Fatalf("revokes deleted %d keys, want %d", deleted, leases)
	}
	kvs, _, err := s.List(ctx, "/k/")
	if err != nil || len(kvs) != puts {
		t.Fatalf("listed %d keys (%v), want %d", len(kvs), err, puts)
	}
}
