// Package storetest is a conformance suite for store.Store backends. A
// backend's test calls Run with a constructor; every backend must pass the
// same suite so nothing above the store depends on which one it runs on.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"trellis.dev/trellis/internal/store"
)

// Compactor is implemented by backends that drop watch history on demand
// (etcd's Compact). The compaction test needs it.
type Compactor interface {
	Compact(ctx context.Context, rev int64) error
}

// Options tune Run.
type Options struct {
	// RealTime runs the lease tests on the wall clock, with LeaseTTL leases
	// and bounded waits, for backends whose timers live outside the process
	// (etcd). Otherwise the lease tests call newStore inside a
	// testing/synctest bubble, so the backend's timers must follow the
	// bubble's clock, and they check expiry to the tenth of a TTL.
	RealTime bool
	// LeaseTTL is the lease TTL of the real-time lease tests. Default 2s
	// (etcd refuses TTLs below its minimum and rounds up to whole seconds).
	LeaseTTL time.Duration
	// ExpirySlack bounds, in real time, how long after its TTL an expired
	// lease's keys may linger. Default 2s.
	ExpirySlack time.Duration
}

// Run runs the suite. newStore returns a fresh, empty store and arranges
// (t.Cleanup) to close it; closing twice must be harmless.
func Run(t *testing.T, newStore func(t *testing.T) store.Store, opts Options) {
	c := newClock(opts)
	tests := []struct {
		name string
		fn   func(*testing.T, func(*testing.T) store.Store)
	}{
		{"CompareAndSet", testCAS},
		{"Revisions", testRevisions},
		{"Atomicity", testAtomicity},
		{"Validation", testValidation},
		{"List", testList},
		{"WatchReplayThenLive", testWatchReplayLive},
		{"WatchNoGapUnderWrites", testWatchNoGap},
		{"WatchFromZero", testWatchFromZero},
		{"WatchFromFuture", testWatchFromFuture},
		{"WatchDeleteEvents", testWatchDeletes},
		{"WatchCompacted", testWatchCompacted},
		{"WatchBatchPerRevision", testWatchBatches},
		{"WatchBatchUnderWrites", testWatchBatchesUnderWrites},
		{"CheckOp", testCheck},
		{"CheckFencesReaders", testCheckFence},
		{"WatchEndsWithContext", testWatchCtx},
		{"Closed", testClosed},
		{"LeaseExpiry", c.testLeaseExpiry},
		{"LeaseKeepAlive", c.testLeaseKeepAlive},
		{"LeaseRevoke", testLeaseRevoke},
		{"LeaseDetach", testLeaseDetach},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore) })
	}
}

func testCAS(t *testing.T, newStore func(*testing.T) store.Store) {
	s := newStore(t)
	ctx := t.Context()
	if _, err := s.Get(ctx, "cas/k"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get missing key: err = %v, want ErrNotFound", err)
	}
	created := txn(t, s, store.Put("cas/k", []byte("v1"), store.Absent))
	steps := []struct {
		name    string
		op      store.Op
		wantErr error
	}{
		{"absent on existing key", store.Put("cas/k", []byte("x"), store.Absent), store.ErrConflict},
		{"stale revision", store.Put("cas/k", []byte("x"), created-1), store.ErrConflict},
		{"future revision", store.Put("cas/k", []byte("x"), created+100), store.ErrConflict},
		{"exact revision", store.Put("cas/k", []byte("v2"), created), nil},
		{"old revision after update", store.Put("cas/k", []byte("x"), created), store.ErrConflict},
		{"any", store.Put("cas/k", []byte("v3"), store.Any), nil},
		{"exact revision on absent key", store.Put("cas/other", []byte("x"), created), store.ErrConflict},
		{"delete with stale revision", store.Delete("cas/k", created), store.ErrConflict},
		{"delete absent key with any", store.Delete("cas/none", store.Any), nil},
		{"delete absent key with absent", store.Delete("cas/none", store.Absent), nil},
		{"delete absent key with revision", store.Delete("cas/none", created), store.ErrConflict},
	}
	for _, st := range steps {
		before := get(t, s, "cas/k")
		_, err := s.Txn(ctx, st.op)
		if !errors.Is(err, st.wantErr) {
			t.Fatalf("%s: err = %v, want %v", st.name, err, st.wantErr)
		}
		if err != nil && !strings.Contains(err.Error(), st.op.Key) {
			t.Errorf("%s: error %q does not name key %q", st.name, err, st.op.Key)
		}
		if err != nil {
			if after := get(t, s, "cas/k"); !equalKV(before, after) {
				t.Fatalf("%s: failed write changed the key: %+v -> %+v", st.name, before, after)
			}
		}
	}
	if kv := get(t, s, "cas/k"); string(kv.Value) != "v3" {
		t.Fatalf("value = %q, want v3", kv.Value)
	}
	cur := get(t, s, "cas/k").ModRevision
	txn(t, s, store.Delete("cas/k", cur))
	if _, err := s.Get(ctx, "cas/k"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get after delete: err = %v, want ErrNotFound", err)
	}
	txn(t, s, store.Put("cas/k", []byte("again"), store.Absent))
}

func testRevisions(t *testing.T, newStore func(*testing.T) store.Store) {
	s := newStore(t)
	ctx := t.Context()
	r0 := revision(t, s)
	r1 := txn(t, s, store.Put("rev/a", []byte("1"), store.Absent), store.Put("rev/b", []byte("1"), store.Absent))
	if r1 != r0+1 {
		t.Fatalf("first txn revision = %d, want %d", r1, r0+1)
	}
	if got := revision(t, s); got != r1 {
		t.Fatalf("Revision = %d, want %d", got, r1)
	}
	for _, k := range []string{"rev/a", "rev/b"} {
		if kv := get(t, s, k); kv.CreateRevision != r1 || kv.ModRevision != r1 {
			t.Fatalf("%s: create/mod = %d/%d, want %d/%d", k, kv.CreateRevision, kv.ModRevision, r1, r1)
		}
	}
	r2 := txn(t, s, store.Put("rev/a", []byte("2"), r1))
	if r2 != r1+1 {
		t.Fatalf("second txn revision = %d, want %d", r2, r1+1)
	}
	if kv := get(t, s, "rev/a"); kv.CreateRevision != r1 || kv.ModRevision != r2 || string(kv.Value) != "2" {
		t.Fatalf("after update: %+v, want create %d mod %d value 2", kv, r1, r2)
	}
	if kv := get(t, s, "rev/b"); kv.ModRevision != r1 {
		t.Fatalf("untouched key's ModRevision = %d, want %d", kv.ModRevision, r1)
	}
	// A failed txn consumes no revision.
	if _, err := s.Txn(ctx, store.Put("rev/a", nil, store.Absent)); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("conflicting txn: err = %v", err)
	}
	if got := revision(t, s); got != r2 {
		t.Fatalf("Revision after failed txn = %d, want %d", got, r2)
	}
	// Recreating a deleted key starts a new CreateRevision.
	txn(t, s, store.Delete("rev/b", store.Any))
	r4 := txn(t, s, store.Put("rev/b", []byte("new"), store.Absent))
	if kv := get(t, s, "rev/b"); kv.CreateRevision != r4 {
		t.Fatalf("recreated key CreateRevision = %d, want %d", kv.CreateRevision, r4)
	}
}

func testAtomicity(t *testing.T, newStore func(*testing.T) store.Store) {
	s := newStore(t)
	ctx := t.Context()
	seed := txn(t, s, store.Put("atom/a", []byte("a1"), store.Absent), store.Put("atom/c", []byte("c1"), store.Absent))
	cases := []struct {
		name    string
		ops     []store.Op
		wantErr error
		naming  string
	}{
		{"last op conflicts", []store.Op{
			store.Put("atom/b", []byte("b"), store.Absent),
			store.Delete("atom/c", store.Any),
			store.Put("atom/a", []byte("a2"), seed+5),
		}, store.ErrConflict, "atom/a"},
		{"first op conflicts", []store.Op{
			store.Put("atom/a", []byte("a2"), store.Absent),
			store.Put("atom/b", []byte("b"), store.Absent),
		}, store.ErrConflict, "atom/a"},
		{"unknown lease", []store.Op{
			store.Put("atom/b", []byte("b"), store.Absent),
			{Type: store.OpPut, Key: "atom/d", Value: []byte("d"), ExpectRevision: store.Any, Lease: 987654321},
		}, store.ErrNotFound, ""},
	}
	for _, tc := range cases {
		_, err := s.Txn(ctx, tc.ops...)
		if !errors.Is(err, tc.wantErr) {
			t.Fatalf("%s: err = %v, want %v", tc.name, err, tc.wantErr)
		}
		if !strings.Contains(err.Error(), tc.naming) {
			t.Errorf("%s: error %q does not name %q", tc.name, err, tc.naming)
		}
		kvs, rev, err := s.List(ctx, "atom/")
		if err != nil {
			t.Fatal(err)
		}
		if rev != seed || len(kvs) != 2 || string(kvs[0].Value) != "a1" || string(kvs[1].Value) != "c1" {
			t.Fatalf("%s: store changed: rev %d (want %d), keys %s", tc.name, rev, seed, dump(kvs))
		}
	}
	// And the same ops, all valid, apply together under one revision.
	rev := txn(t, s, store.Put("atom/b", []byte("b"), store.Absent), store.Delete("atom/c", store.Any), store.Put("atom/a", []byte("a2"), seed))
	kvs, _, _ := s.List(ctx, "atom/")
	if len(kvs) != 2 || kvs[0].Key != "atom/a" || kvs[0].ModRevision != rev || kvs[1].Key != "atom/b" || kvs[1].ModRevision != rev {
		t.Fatalf("after successful txn at %d: %s", rev, dump(kvs))
	}
}

func testValidation(t *testing.T, newStore func(*testing.T) store.Store) {
	s := newStore(t)
	ctx := t.Context()
	bad := []struct {
		name string
		ops  []store.Op
	}{
		{"empty key", []store.Op{store.Put("", []byte("x"), store.Any)}},
		{"same key twice", []store.Op{store.Put("v/k", nil, store.Any), store.Delete("v/k", store.Any)}},
		{"unknown op type", []store.Op{{Type: 99, Key: "v/k", ExpectRevision: store.Any}}},
	}
	for _, tc := range bad {
		if _, err := s.Txn(ctx, tc.ops...); err == nil {
			t.Errorf("%s: Txn succeeded, want an error", tc.name)
		}
	}
	if kvs, _, _ := s.List(ctx, ""); len(kvs) != 0 {
		t.Fatalf("invalid txns wrote: %s", dump(kvs))
	}
	if _, err := s.Grant(ctx, 0); err == nil {
		t.Error("Grant(0) succeeded, want an error")
	}
	if _, err := watch(ctx, s, "", -5); err == nil {
		t.Error("Watch from -5 succeeded, want an error")
	}
}

func testList(t *testing.T, newStore func(*testing.T) store.Store) {
	s := newStore(t)
	ctx := t.Context()
	for _, k := range []string{"list/c", "list/a", "lisz", "list/b/2", "list", "list/b/1", "lis"} {
		txn(t, s, store.Put(k, []byte(k), store.Absent))
	}
	kvs, rev, err := s.List(ctx, "list/")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"list/a", "list/b/1", "list/b/2", "list/c"}
	if got := keys(kvs); !slices.Equal(got, want) {
		t.Fatalf("List(list/) = %v, want %v", got, want)
	}
	for _, kv := range kvs {
		if string(kv.Value) != kv.Key {
			t.Errorf("%s: value %q", kv.Key, kv.Value)
		}
	}
	if cur := revision(t, s); rev != cur {
		t.Fatalf("List revision = %d, want current %d", rev, cur)
	}
	all, _, err := s.List(ctx, "")
	if err != nil || len(all) != 7 || all[0].Key != "lis" || all[6].Key != "lisz" {
		t.Fatalf("List(\"\") = %v, %v", keys(all), err)
	}
	none, rev2, err := s.List(ctx, "nothing/")
	if err != nil || len(none) != 0 || rev2 != rev {
		t.Fatalf("List(nothing/) = %v, %d, %v; want empty at %d", keys(none), rev2, err, rev)
	}
}

func testWatchReplayLive(t *testing.T, newStore func(*testing.T) store.Store) {
	s := newStore(t)
	ctx := t.Context()
	r1 := txn(t, s, store.Put("w/a", []byte("1"), store.Absent))
	txn(t, s, store.Put("other/x", []byte("1"), store.Absent))
	r3 := txn(t, s, store.Put("w/b", []byte("1"), store.Absent), store.Put("w/a", []byte("2"), r1))

	ch, err := watch(ctx, s, "w/", r1)
	if err != nil {
		t.Fatal(err)
	}
	expect(t, ch, store.EventPut, "w/a", r1, "1")
	expect(t, ch, store.EventPut, "w/b", r3, "1")
	ev := expect(t, ch, store.EventPut, "w/a", r3, "2")
	if ev.KV.CreateRevision != r1 {
		t.Errorf("replayed update CreateRevision = %d, want %d", ev.KV.CreateRevision, r1)
	}
	// Live: a key outside the prefix, then one inside; only the second arrives.
	txn(t, s, store.Put("other/y", []byte("1"), store.Absent))
	r5 := txn(t, s, store.Put("w/c", []byte("live"), store.Absent))
	expect(t, ch, store.EventPut, "w/c", r5, "live")

	// A second watcher starting mid-history sees only the tail.
	ch2, err := watch(ctx, s, "w/", r3)
	if err != nil {
		t.Fatal(err)
	}
	expect(t, ch2, store.EventPut, "w/b", r3, "1")
	expect(t, ch2, store.EventPut, "w/a", r3, "2")
	expect(t, ch2, store.EventPut, "w/c", r5, "live")
}

// testWatchNoGap starts a List+Watch while another goroutine writes: every
// key must show up exactly once across the listing and the events, and the
// events' revisions must be consecutive.
func testWatchNoGap(t *testing.T, newStore func(*testing.T) store.Store) {
	s := newStore(t)
	ctx := t.Context()
	const n = 60
	started := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		for i := range n {
			if i == n/3 {
				close(started)
			}
			if _, err := s.Txn(ctx, store.Put(fmt.Sprintf("gap/%03d", i), []byte("v"), store.Absent)); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	<-started
	kvs, rev, err := s.List(ctx, "gap/")
	if err != nil {
		t.Fatal(err)
	}
	ch, err := watch(ctx, s, "gap/", rev+1)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, kv := range kvs {
		seen[kv.Key]++
	}
	last := rev
	for len(seen) < n {
		ev := next(t, ch)
		if ev.KV.ModRevision != last+1 {
			t.Fatalf("event %s at revision %d after %d: gap or duplicate", ev.KV.Key, ev.KV.ModRevision, last)
		}
		last = ev.KV.ModRevision
		seen[ev.KV.Key]++
	}
	for k, c := range seen {
		if c != 1 {
			t.Errorf("%s seen %d times", k, c)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func testWatchFromZero(t *testing.T, newStore func(*testing.T) store.Store) {
	s := newStore(t)
	txn(t, s, store.Put("z/old", []byte("1"), store.Absent))
	ch, err := watch(t.Context(), s, "z/", 0)
	if err != nil {
		t.Fatal(err)
	}
	r := txn(t, s, store.Put("z/new", []byte("1"), store.Absent))
	expect(t, ch, store.EventPut, "z/new", r, "1")
}

// testWatchFromFuture: a watch may start at a revision not yet written.
func testWatchFromFuture(t *testing.T, newStore func(*testing.T) store.Store) {
	s := newStore(t)
	r := txn(t, s, store.Put("f/a", []byte("0"), store.Absent))
	ch, err := watch(t.Context(), s, "f/", r+2)
	if err != nil {
		t.Fatal(err)
	}
	txn(t, s, store.Put("f/a", []byte("1"), store.Any))
	txn(t, s, store.Put("f/a", []byte("2"), store.Any))
	expect(t, ch, store.EventPut, "f/a", r+2, "2")
}

func testWatchDeletes(t *testing.T, newStore func(*testing.T) store.Store) {
	s := newStore(t)
	ctx := t.Context()
	ch, err := watch(ctx, s, "d/", 0)
	if err != nil {
		t.Fatal(err)
	}
	r1 := txn(t, s, store.Put("d/a", []byte("1"), store.Absent), store.Put("d/b", []byte("1"), store.Absent))
	r2 := txn(t, s, store.Delete("d/a", r1), store.Delete("d/missing", store.Any))
	expect(t, ch, store.EventPut, "d/a", r1, "1")
	expect(t, ch, store.EventPut, "d/b", r1, "1")
	expect(t, ch, store.EventDelete, "d/a", r2, "")
	// Deleting a missing key emits nothing: the next event is the next write.
	r3 := txn(t, s, store.Delete("d/b", store.Any))
	expect(t, ch, store.EventDelete, "d/b", r3, "")
	// Replay carries deletes too.
	ch2, err := watch(ctx, s, "d/", r2)
	if err != nil {
		t.Fatal(err)
	}
	expect(t, ch2, store.EventDelete, "d/a", r2, "")
	expect(t, ch2, store.EventDelete, "d/b", r3, "")
}

func testWatchCompacted(t *testing.T, newStore func(*testing.T) store.Store) {
	s := newStore(t)
	c, ok := s.(Compactor)
	if !ok {
		t.Skipf("%T has no Compact method", s)
	}
	ctx := t.Context()
	var revs []int64
	for i := range 5 {
		revs = append(revs, txn(t, s, store.Put("c/k", []byte{byte('0' + i)}, store.Any)))
	}
	if err := c.Compact(ctx, revs[3]); err != nil {
		t.Fatal(err)
	}
	_, err := watch(ctx, s, "c/", revs[1])
	if !errors.Is(err, store.ErrCompacted) {
		t.Fatalf("Watch from compacted revision: err = %v, want ErrCompacted", err)
	}
	ch, err := watch(ctx, s, "c/", revs[3])
	if err != nil {
		t.Fatalf("Watch from compaction revision: %v", err)
	}
	expect(t, ch, store.EventPut, "c/k", revs[3], "3")
	expect(t, ch, store.EventPut, "c/k", revs[4], "4")
}

// testWatchBatches: each receive is one whole revision under the prefix, in
// op order, live and replayed alike; revisions with nothing under the prefix
// send nothing.
func testWatchBatches(t *testing.T, newStore func(*testing.T) store.Store) {
	s := newStore(t)
	ctx := t.Context()
	live, err := watch(ctx, s, "b/", 0)
	if err != nil {
		t.Fatal(err)
	}
	r1 := txn(t, s, store.Put("b/1", []byte("1"), store.Absent), store.Put("b/2", []byte("2"), store.Absent),
		store.Put("other/x", nil, store.Absent), store.Put("b/0", []byte("0"), store.Absent))
	txn(t, s, store.Put("other/y", nil, store.Absent))
	r3 := txn(t, s, store.Delete("b/1", r1), store.Put("b/3", []byte("3"), store.Absent))
	want := []string{
		fmt.Sprintf("[1 b/1@%d \"1\"] [1 b/2@%d \"2\"] [1 b/0@%d \"0\"] ", r1, r1, r1),
		fmt.Sprintf("[2 b/1@%d \"\"] [1 b/3@%d \"3\"] ", r3, r3),
	}
	replay, err := watch(ctx, s, "b/", r1)
	if err != nil {
		t.Fatal(err)
	}
	for name, r := range map[string]*reader{"live": live, "replay": replay} {
		for i, w := range want {
			if got := dumpEvents(r.batch(t)); got != w {
				t.Fatalf("%s batch %d = %s, want %s", name, i, got, w)
			}
		}
		r.quiet(t)
	}
}

// testWatchBatchesUnderWrites: concurrent multi-key transactions never reach
// a watcher split or merged.
func testWatchBatchesUnderWrites(t *testing.T, newStore func(*testing.T) store.Store) {
	s := newStore(t)
	ctx := t.Context()
	r, err := watch(ctx, s, "bw/", 0)
	if err != nil {
		t.Fatal(err)
	}
	const writers, each, width = 3, 10, 4
	errc := make(chan error, writers)
	for w := range writers {
		go func() {
			for i := range each {
				ops := make([]store.Op, width)
				for k := range ops {
					ops[k] = store.Put(fmt.Sprintf("bw/%d/%d/%d", w, i, k), nil, store.Absent)
				}
				if _, err := s.Txn(ctx, ops...); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
	}
	for range writers * each {
		b := r.batch(t)
		if len(b) != width {
			t.Fatalf("batch of %d events, want one txn's %d: %s", len(b), width, dumpEvents(b))
		}
		prefix := b[0].KV.Key[:len(b[0].KV.Key)-1]
		for k, ev := range b {
			if ev.KV.Key != prefix+strconv.Itoa(k) {
				t.Fatalf("batch mixes transactions or reorders ops: %s", dumpEvents(b))
			}
		}
	}
	for range writers {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
}

// testCheck: OpCheck compares without writing; a failed check fails the
// whole Txn; a Txn of checks only consumes no revision.
func testCheck(t *testing.T, newStore func(*testing.T) store.Store) {
	s := newStore(t)
	ctx := t.Context()
	r1 := txn(t, s, store.Put("ck/k", []byte("v"), store.Absent))
	r, err := watch(ctx, s, "ck/", r1+1)
	if err != nil {
		t.Fatal(err)
	}
	r2 := txn(t, s, store.Check("ck/k", r1), store.Put("ck/w", []byte("w"), store.Absent))
	if kv := get(t, s, "ck/k"); kv.ModRevision != r1 || string(kv.Value) != "v" {
		t.Fatalf("checked key changed: %+v", kv)
	}
	expect(t, r, store.EventPut, "ck/w", r2, "w")
	fails := []struct {
		name string
		op   store.Op
	}{
		{"stale revision", store.Check("ck/k", r1-1)},
		{"newer revision", store.Check("ck/k", r2)},
		{"absent on existing key", store.Check("ck/k", store.Absent)},
		{"revision on absent key", store.Check("ck/none", r1)},
	}
	for _, f := range fails {
		_, err := s.Txn(ctx, f.op, store.Put("ck/x", []byte("x"), store.Any))
		if !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), f.op.Key) {
			t.Fatalf("%s: err = %v, want ErrConflict naming %s", f.name, err, f.op.Key)
		}
	}
	if _, err := s.Get(ctx, "ck/x"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a Txn with a failed check wrote: %v", err)
	}
	// Checks only: success writes nothing and keeps the revision.
	got, err := s.Txn(ctx, store.Check("ck/k", r1), store.Check("ck/none", store.Absent))
	if err != nil || got != r2 {
		t.Fatalf("check-only Txn = %d, %v; want the current revision %d", got, err, r2)
	}
	if cur := revision(t, s); cur != r2 {
		t.Fatalf("check-only Txn moved the revision to %d", cur)
	}
	r.quiet(t)
	if _, err := s.Txn(ctx, store.Check("ck/k", store.Any)); err == nil || errors.Is(err, store.ErrConflict) {
		t.Fatalf("check against Any: err = %v, want a validation error", err)
	}
	if _, err := s.Txn(ctx, store.Check("ck/k", r1), store.Put("ck/k", nil, store.Any)); err == nil {
		t.Fatal("check and put of one key in one Txn succeeded, want an error")
	}
}

// testCheckFences is the pattern a cross-object check relies on: a writer
// reads A and B, decides from both, and writes only B, checking A. A second
// writer changing A in between makes the first writer's Txn fail.
func testCheckFence(t *testing.T, newStore func(*testing.T) store.Store) {
	s := newStore(t)
	ctx := t.Context()
	ra := txn(t, s, store.Put("fence/a", []byte("port 8080"), store.Absent))
	txn(t, s, store.Put("fence/a", []byte("no ports"), ra)) // the other writer
	_, err := s.Txn(ctx, store.Check("fence/a", ra), store.Put("fence/b", []byte("route to 8080"), store.Absent))
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("write fenced on a changed key: err = %v, want ErrConflict", err)
	}
	if _, err := s.Get(ctx, "fence/b"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("fenced write happened: %v", err)
	}
}

func testWatchCtx(t *testing.T, newStore func(*testing.T) store.Store) {
	s := newStore(t)
	ctx, cancel := context.WithCancel(t.Context())
	ch, err := watch(ctx, s, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	waitClosed(t, ch)
	// Writes after the watcher left still succeed.
	txn(t, s, store.Put("after", nil, store.Any))
}

func testClosed(t *testing.T, newStore func(*testing.T) store.Store) {
	s := newStore(t)
	ctx := t.Context()
	ch, err := watch(ctx, s, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	waitClosed(t, ch)
	if err := s.Close(); err != nil && !errors.Is(err, store.ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}
	checks := map[string]error{}
	_, checks["Get"] = s.Get(ctx, "k")
	_, _, checks["List"] = s.List(ctx, "")
	_, checks["Txn"] = s.Txn(ctx, store.Put("k", nil, store.Any))
	_, checks["Watch"] = s.Watch(ctx, "", 0)
	_, checks["Grant"] = s.Grant(ctx, time.Minute)
	checks["KeepAlive"] = s.KeepAlive(ctx, 1)
	checks["Revoke"] = s.Revoke(ctx, 1)
	_, checks["Revision"] = s.Revision(ctx)
	for name, err := range checks {
		if !errors.Is(err, store.ErrClosed) {
			t.Errorf("%s after Close: err = %v, want ErrClosed", name, err)
		}
	}
}

func (c clock) testLeaseExpiry(t *testing.T, newStore func(*testing.T) store.Store) {
	c.run(t, func(t *testing.T) {
		s := newStore(t)
		ctx := t.Context()
		id := grant(t, s, c.ttl)
		granted := time.Now()
		r := txn(t, s, leased("l/a", id), leased("l/b", id), store.Put("l/keep", []byte("v"), store.Absent))
		if kv := get(t, s, "l/a"); kv.Lease != id {
			t.Fatalf("l/a lease = %d, want %d", kv.Lease, id)
		}
		ch, err := watch(ctx, s, "l/", r+1)
		if err != nil {
			t.Fatal(err)
		}
		c.sleepUntil(granted.Add(c.alive()))
		get(t, s, "l/a")
		c.waitGone(t, s, granted.Add(c.ttl+c.slack), "l/a", "l/b")
		get(t, s, "l/keep")
		// Both keys leave in one revision, so in one batch.
		b := ch.batch(t)
		if len(b) != 2 || b[0].Type != store.EventDelete || b[1].Type != store.EventDelete ||
			!slices.Equal([]string{b[0].KV.Key, b[1].KV.Key}, []string{"l/a", "l/b"}) {
			t.Fatalf("expiry batch = %s, want deletes of l/a and l/b", dumpEvents(b))
		}
		if err := s.KeepAlive(ctx, id); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("KeepAlive on expired lease: err = %v, want ErrNotFound", err)
		}
		if _, err := s.Txn(ctx, leased("l/c", id)); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("put with expired lease: err = %v, want ErrNotFound", err)
		}
	})
}

func (c clock) testLeaseKeepAlive(t *testing.T, newStore func(*testing.T) store.Store) {
	c.run(t, func(t *testing.T) {
		s := newStore(t)
		ctx := t.Context()
		id := grant(t, s, c.ttl)
		txn(t, s, leased("ka/a", id))
		last := time.Now()
		for range 3 {
			c.sleepUntil(last.Add(c.keepEvery()))
			if err := s.KeepAlive(ctx, id); err != nil {
				t.Fatalf("KeepAlive: %v", err)
			}
			last = time.Now()
		}
		// Past the first TTL, alive thanks to the keepalives.
		c.settle()
		get(t, s, "ka/a")
		c.sleepUntil(last.Add(c.alive()))
		get(t, s, "ka/a")
		c.waitGone(t, s, last.Add(c.ttl+c.slack), "ka/a")
	})
}

// clock runs the lease tests in a synctest bubble (exact: a key is alive at
// 0.9 TTL and gone by 1.1 TTL) or on the wall clock (alive at half its TTL,
// gone within ExpirySlack after it).
type clock struct {
	realTime bool
	ttl      time.Duration
	slack    time.Duration
}

func newClock(o Options) clock {
	if !o.RealTime {
		return clock{ttl: 10 * time.Second, slack: time.Second}
	}
	c := clock{realTime: true, ttl: o.LeaseTTL, slack: o.ExpirySlack}
	if c.ttl <= 0 {
		c.ttl = 2 * time.Second
	}
	if c.slack <= 0 {
		c.slack = 2 * time.Second
	}
	return c
}

func (c clock) run(t *testing.T, fn func(*testing.T)) {
	if c.realTime {
		fn(t)
		return
	}
	synctest.Test(t, fn)
}

// alive is how long after a grant or keepalive a key must still be there.
func (c clock) alive() time.Duration {
	if c.realTime {
		return c.ttl / 2
	}
	return c.ttl * 9 / 10
}

func (c clock) keepEvery() time.Duration {
	if c.realTime {
		return c.ttl / 2
	}
	return c.ttl * 7 / 10
}

// settle lets the store's background work catch up: in a bubble, until
// every goroutine is idle; in real time there is nothing to wait for.
func (c clock) settle() {
	if !c.realTime {
		synctest.Wait()
	}
}

func (c clock) sleepUntil(t time.Time) {
	time.Sleep(time.Until(t))
	c.settle()
}

// waitGone polls until every key is gone, failing if one is still there at
// deadline.
func (c clock) waitGone(t *testing.T, s store.Store, deadline time.Time, keys ...string) {
	t.Helper()
	step := c.ttl / 50
	for _, k := range keys {
		for {
			_, err := s.Get(t.Context(), k)
			if errors.Is(err, store.ErrNotFound) {
				break
			}
			if err != nil {
				t.Fatalf("Get %s: %v", k, err)
			}
			if !time.Now().Before(deadline) {
				t.Fatalf("%s still there %v after its lease's TTL of %v", k, time.Since(deadline)+c.slack, c.ttl)
			}
			time.Sleep(step)
			c.settle()
		}
	}
}

func testLeaseRevoke(t *testing.T, newStore func(*testing.T) store.Store) {
	s := newStore(t)
	ctx := t.Context()
	id := grant(t, s, time.Hour)
	other := grant(t, s, time.Hour)
	if id == other {
		t.Fatalf("two grants returned the same lease %d", id)
	}
	r := txn(t, s, leased("rv/a", id), leased("rv/b", id), leased("rv/other", other))
	ch, err := watch(ctx, s, "rv/", r+1)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Revoke(ctx, id); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"rv/a", "rv/b"} {
		if _, err := s.Get(ctx, k); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("%s after revoke: err = %v, want ErrNotFound", k, err)
		}
	}
	get(t, s, "rv/other")
	expect(t, ch, store.EventDelete, "rv/a", r+1, "")
	expect(t, ch, store.EventDelete, "rv/b", r+1, "")
	if got := revision(t, s); got != r+1 {
		t.Fatalf("Revision after revoke = %d, want %d", got, r+1)
	}
	if err := s.Revoke(ctx, id); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second Revoke: err = %v, want ErrNotFound", err)
	}
	if err := s.KeepAlive(ctx, id); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("KeepAlive after Revoke: err = %v, want ErrNotFound", err)
	}
	if _, err := s.Txn(ctx, leased("rv/c", id)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("put with revoked lease: err = %v, want ErrNotFound", err)
	}
	if err := s.KeepAlive(ctx, other); err != nil {
		t.Fatalf("KeepAlive on the other lease: %v", err)
	}
}

// testLeaseDetach: rewriting a key without its lease detaches it, so
// revoking the old lease leaves the key alone.
func testLeaseDetach(t *testing.T, newStore func(*testing.T) store.Store) {
	s := newStore(t)
	ctx := t.Context()
	id := grant(t, s, time.Hour)
	txn(t, s, leased("dt/a", id), leased("dt/b", id))
	txn(t, s, store.Put("dt/a", []byte("plain"), store.Any))
	if err := s.Revoke(ctx, id); err != nil {
		t.Fatal(err)
	}
	if kv := get(t, s, "dt/a"); kv.Lease != 0 || string(kv.Value) != "plain" {
		t.Fatalf("detached key: %+v", kv)
	}
	if _, err := s.Get(ctx, "dt/b"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("attached key after revoke: err = %v, want ErrNotFound", err)
	}
}

// Helpers.

func txn(t *testing.T, s store.Store, ops ...store.Op) int64 {
	t.Helper()
	rev, err := s.Txn(t.Context(), ops...)
	if err != nil {
		t.Fatalf("Txn: %v", err)
	}
	return rev
}

func get(t *testing.T, s store.Store, key string) store.KV {
	t.Helper()
	kv, err := s.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("Get %s: %v", key, err)
	}
	return kv
}

func revision(t *testing.T, s store.Store) int64 {
	t.Helper()
	r, err := s.Revision(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func grant(t *testing.T, s store.Store, ttl time.Duration) store.LeaseID {
	t.Helper()
	id, err := s.Grant(t.Context(), ttl)
	if err != nil {
		t.Fatalf("Grant: %v", err)
	}
	return id
}

func leased(key string, id store.LeaseID) store.Op {
	return store.Op{Type: store.OpPut, Key: key, Value: []byte("v"), ExpectRevision: store.Any, Lease: id}
}

// reader reads a watch one batch or one event at a time, and checks what
// every batch must be: non-empty, one revision, after the previous one.
type reader struct {
	ch      <-chan []store.Event
	pending []store.Event
	lastRev int64
}

func watch(ctx context.Context, s store.Store, prefix string, fromRev int64) (*reader, error) {
	ch, err := s.Watch(ctx, prefix, fromRev)
	if err != nil {
		return nil, err
	}
	return &reader{ch: ch}, nil
}

// batch waits for the next whole batch; under synctest the timeout costs no
// real time.
func (r *reader) batch(t *testing.T) []store.Event {
	t.Helper()
	if len(r.pending) > 0 {
		t.Fatalf("batch: %d events of the previous batch not read", len(r.pending))
	}
	select {
	case b, ok := <-r.ch:
		if !ok {
			t.Fatal("watch channel closed, want a batch")
		}
		r.checkBatch(t, b)
		return b
	case <-time.After(10 * time.Second):
		t.Fatal("no watch batch within 10s")
	}
	panic("unreachable")
}

func (r *reader) checkBatch(t *testing.T, b []store.Event) {
	t.Helper()
	if len(b) == 0 {
		t.Fatal("empty watch batch")
	}
	rev := b[0].KV.ModRevision
	for _, ev := range b {
		if ev.KV.ModRevision != rev {
			t.Fatalf("one batch holds revisions %d and %d: %s", rev, ev.KV.ModRevision, dumpEvents(b))
		}
	}
	if rev <= r.lastRev {
		t.Fatalf("batch at revision %d after a batch at %d", rev, r.lastRev)
	}
	r.lastRev = rev
}

// next returns the next event, reading a new batch when the last is used up.
func next(t *testing.T, r *reader) store.Event {
	t.Helper()
	if len(r.pending) == 0 {
		r.pending = r.batch(t)
	}
	ev := r.pending[0]
	r.pending = r.pending[1:]
	return ev
}

func expect(t *testing.T, r *reader, typ store.EventType, key string, rev int64, value string) store.Event {
	t.Helper()
	ev := next(t, r)
	if ev.Type != typ || ev.KV.Key != key || ev.KV.ModRevision != rev || string(ev.KV.Value) != value {
		t.Fatalf("event = {type %d key %s rev %d value %q}, want {type %d key %s rev %d value %q}",
			ev.Type, ev.KV.Key, ev.KV.ModRevision, ev.KV.Value, typ, key, rev, value)
	}
	return ev
}

// quiet fails if a batch arrives within a short while (a revision with
// nothing under the watch's prefix must not produce one).
func (r *reader) quiet(t *testing.T) {
	t.Helper()
	select {
	case b, ok := <-r.ch:
		if ok {
			t.Fatalf("unexpected batch %s", dumpEvents(b))
		}
		t.Fatal("watch channel closed")
	case <-time.After(50 * time.Millisecond):
	}
}

func waitClosed(t *testing.T, r *reader) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case _, ok := <-r.ch:
			if !ok {
				return
			}
		case <-timeout:
			t.Fatal("watch channel not closed within 10s")
		}
	}
}

func dumpEvents(evs []store.Event) string {
	var b strings.Builder
	for _, ev := range evs {
		fmt.Fprintf(&b, "[%d %s@%d %q] ", ev.Type, ev.KV.Key, ev.KV.ModRevision, ev.KV.Value)
	}
	return b.String()
}

func equalKV(a, b store.KV) bool {
	return a.Key == b.Key && string(a.Value) == string(b.Value) && a.CreateRevision == b.CreateRevision &&
		a.ModRevision == b.ModRevision && a.Lease == b.Lease
}

func keys(kvs []store.KV) []string {
	out := make([]string, len(kvs))
	for i, kv := range kvs {
		out[i] = kv.Key
	}
	return out
}

func dump(kvs []store.KV) string {
	var b strings.Builder
	for _, kv := range kvs {
		fmt.Fprintf(&b, "[%s=%q c%d m%d] ", kv.Key, kv.Value, kv.CreateRevision, kv.ModRevision)
	}
	return b.String()
}

// OpenBolt opens a bbolt store in t's temporary directory and closes it
// when t ends: the real store other packages' tests run on.
func OpenBolt(t testing.TB, opts store.BoltOptions) *store.Bolt {
	t.Helper()
	st, err := store.NewBolt(filepath.Join(t.TempDir(), "store.db"), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}
