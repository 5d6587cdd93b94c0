package store_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"trellis.dev/trellis/internal/store"
	"trellis.dev/trellis/internal/store/storetest"
)

func openBolt(t testing.TB, path string, opts store.BoltOptions) *store.Bolt {
	t.Helper()
	s, err := store.NewBolt(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func tempDB(t testing.TB) string { return filepath.Join(t.TempDir(), "trellis.db") }

func TestBoltConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		return openBolt(t, tempDB(t), store.BoltOptions{})
	}, storetest.Options{})
}

// TestBoltConformanceRealTime runs the suite as an etcd backend would take
// it: leases on the wall clock.
func TestBoltConformanceRealTime(t *testing.T) {
	if testing.Short() {
		t.Skip("real-time lease tests take seconds")
	}
	storetest.Run(t, func(t *testing.T) store.Store {
		return openBolt(t, tempDB(t), store.BoltOptions{LeaseCheckInterval: 20 * time.Millisecond})
	}, storetest.Options{RealTime: true, LeaseTTL: time.Second, ExpirySlack: time.Second})
}

// flat reads a watch's batches one event at a time.
type flat struct {
	ch      <-chan []store.Event
	pending []store.Event
}

func events(ch <-chan []store.Event) *flat { return &flat{ch: ch} }

// next returns the next event; the zero Event once the watch closed.
func (f *flat) next() store.Event {
	for len(f.pending) == 0 {
		b, ok := <-f.ch
		if !ok {
			return store.Event{}
		}
		f.pending = b
	}
	ev := f.pending[0]
	f.pending = f.pending[1:]
	return ev
}

func TestBoltFileMode(t *testing.T) {
	path := tempDB(t)
	openBolt(t, path, store.BoltOptions{})
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Fatalf("file mode = %v, want 0600", perm)
	}
}

func TestBoltOpenErrors(t *testing.T) {
	if _, err := store.NewBolt(filepath.Join(t.TempDir(), "missing", "dir", "x.db"), store.BoltOptions{}); err == nil {
		t.Fatal("NewBolt in a missing directory succeeded")
	}
	garbage := tempDB(t)
	if err := os.WriteFile(garbage, []byte("this is not a bbolt file, not at all, really it is not"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := store.NewBolt(garbage, store.BoltOptions{}); err == nil {
		t.Fatal("NewBolt on a non-bbolt file succeeded")
	}
}

// TestBoltReopen: values, revisions, the event log and leases survive a
// restart; a lease gets a fresh full TTL when the store reopens.
func TestBoltReopen(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := t.Context()
		path := tempDB(t)
		s, err := store.NewBolt(path, store.BoltOptions{})
		if err != nil {
			t.Fatal(err)
		}
		id, err := s.Grant(ctx, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		r1, err := s.Txn(ctx, store.Put("k/a", []byte("A"), store.Absent))
		if err != nil {
			t.Fatal(err)
		}
		r2, err := s.Txn(ctx, store.Put("k/a", []byte("A2"), r1),
			store.Op{Type: store.OpPut, Key: "k/leased", Value: []byte("L"), ExpectRevision: store.Absent, Lease: id})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(8 * time.Second) // 2s left on the lease
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}

		s = openBolt(t, path, store.BoltOptions{})
		if rev, _ := s.Revision(ctx); rev != r2 {
			t.Fatalf("reopened Revision = %d, want %d", rev, r2)
		}
		kv, err := s.Get(ctx, "k/a")
		if err != nil || string(kv.Value) != "A2" || kv.CreateRevision != r1 || kv.ModRevision != r2 {
			t.Fatalf("reopened k/a = %+v, %v", kv, err)
		}
		wch, err := s.Watch(ctx, "k/", 1)
		if err != nil {
			t.Fatal(err)
		}
		ch := events(wch)
		for _, want := range []string{"k/a@1", "k/a@2", "k/leased@2"} {
			ev := ch.next()
			if got := fmt.Sprintf("%s@%d", ev.KV.Key, ev.KV.ModRevision); got != want {
				t.Fatalf("replayed %s, want %s", got, want)
			}
		}
		if r3, err := s.Txn(ctx, store.Put("k/b", nil, store.Absent)); err != nil || r3 != r2+1 {
			t.Fatalf("first txn after reopen: rev %d, %v; want %d", r3, err, r2+1)
		}
		id2, err := s.Grant(ctx, time.Minute)
		if err != nil || id2 == id {
			t.Fatalf("Grant after reopen = %d, %v; want a new ID other than %d", id2, err, id)
		}

		time.Sleep(9 * time.Second) // past the old deadline, within the fresh TTL
		synctest.Wait()
		if _, err := s.Get(ctx, "k/leased"); err != nil {
			t.Fatalf("leased key 9s after reopen: %v", err)
		}
		if err := s.KeepAlive(ctx, id); err != nil {
			t.Fatalf("KeepAlive on re-armed lease: %v", err)
		}
		time.Sleep(11 * time.Second)
		synctest.Wait()
		if _, err := s.Get(ctx, "k/leased"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("leased key after re-armed TTL: err = %v, want ErrNotFound", err)
		}
	})
}

// TestBoltSlowWatcher: a watcher that never reads is closed once its buffer
// fills, and writers never wait for it.
func TestBoltSlowWatcher(t *testing.T) {
	ctx := t.Context()
	s := openBolt(t, tempDB(t), store.BoltOptions{WatchBuffer: 4})
	slow, err := s.Watch(ctx, "slow/", 0)
	if err != nil {
		t.Fatal(err)
	}
	other, err := s.Watch(ctx, "other/", 0)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		for i := range 20 {
			if _, err := s.Txn(ctx, store.Put("slow/"+strconv.Itoa(i), nil, store.Any)); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("writes blocked behind a slow watcher")
	}
	n := 0
	for range slow {
		n++
	}
	if n != 4 {
		t.Fatalf("slow watcher got %d batches before closing, want its buffer of 4", n)
	}
	// The watcher on another prefix was not affected.
	r, err := s.Txn(ctx, store.Put("other/x", nil, store.Any))
	if err != nil {
		t.Fatal(err)
	}
	if b, ok := <-other; !ok || len(b) != 1 || b[0].KV.ModRevision != r {
		t.Fatalf("other watcher: %+v, open %v", b, ok)
	}
	// The dropped client resyncs from history: the replay is not limited by
	// the live buffer.
	wagain, err := s.Watch(ctx, "slow/", 1)
	if err != nil {
		t.Fatal(err)
	}
	again := events(wagain)
	for i := range 20 {
		if ev := again.next(); ev.KV.Key != "slow/"+strconv.Itoa(i) {
			t.Fatalf("replay event %d = %s", i, ev.KV.Key)
		}
	}
}

func TestBoltHistoryTrim(t *testing.T) {
	ctx := t.Context()
	s := openBolt(t, tempDB(t), store.BoltOptions{History: 3})
	for i := range 3 { // revisions 1..3, two events each
		k := strconv.Itoa(i)
		if _, err := s.Txn(ctx, store.Put("h/a"+k, nil, store.Any), store.Put("h/b"+k, nil, store.Any)); err != nil {
			t.Fatal(err)
		}
	}
	// Six events > 3: revision 1 and part of 2 go, so 3 is the oldest kept.
	for _, rev := range []int64{1, 2} {
		if _, err := s.Watch(ctx, "", rev); !errors.Is(err, store.ErrCompacted) {
			t.Fatalf("Watch from %d: err = %v, want ErrCompacted", rev, err)
		}
	}
	wch, err := s.Watch(ctx, "", 3)
	if err != nil {
		t.Fatal(err)
	}
	ch := events(wch)
	for _, want := range []string{"h/a2", "h/b2"} {
		if ev := ch.next(); ev.KV.Key != want || ev.KV.ModRevision != 3 {
			t.Fatalf("replay = %s@%d, want %s@3", ev.KV.Key, ev.KV.ModRevision, want)
		}
	}
	// A revision larger than History is kept whole rather than cut.
	ops := make([]store.Op, 5)
	for i := range ops {
		ops[i] = store.Put("big/"+strconv.Itoa(i), nil, store.Any)
	}
	r, err := s.Txn(ctx, ops...)
	if err != nil {
		t.Fatal(err)
	}
	wch, err = s.Watch(ctx, "big/", r)
	if err != nil {
		t.Fatal(err)
	}
	if b := <-wch; len(b) != len(ops) {
		t.Fatalf("big revision: batch of %d events, want %d", len(b), len(ops))
	} else {
		for i := range ops {
			if b[i].KV.Key != ops[i].Key {
				t.Fatalf("big revision event %d = %s", i, b[i].KV.Key)
			}
		}
	}
}

func TestBoltCompactErrors(t *testing.T) {
	ctx := t.Context()
	s := openBolt(t, tempDB(t), store.BoltOptions{})
	if err := s.Compact(ctx, 5); err == nil {
		t.Fatal("Compact beyond the current revision succeeded")
	}
	s.Txn(ctx, store.Put("a", nil, store.Any))
	if err := s.Compact(ctx, 1); err != nil {
		t.Fatalf("Compact(1): %v", err)
	}
	s.Close()
	if err := s.Compact(ctx, 1); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Compact after Close: %v, want ErrClosed", err)
	}
}

// TestBoltConcurrentTxn: CAS increments from several goroutines lose no
// update, and a watcher sees every one in revision order.
func TestBoltConcurrentTxn(t *testing.T) {
	ctx := t.Context()
	s := openBolt(t, tempDB(t), store.BoltOptions{})
	start, err := s.Txn(ctx, store.Put("ctr", []byte("0"), store.Absent))
	if err != nil {
		t.Fatal(err)
	}
	wch, err := s.Watch(ctx, "ctr", start+1)
	if err != nil {
		t.Fatal(err)
	}
	ch := events(wch)
	const workers, each = 4, 20
	var (
		wg        sync.WaitGroup
		conflicts sync.Map
	)
	for w := range workers {
		wg.Go(func() {
			for range each {
				for {
					kv, err := s.Get(ctx, "ctr")
					if err != nil {
						t.Error(err)
						return
					}
					n, _ := strconv.Atoi(string(kv.Value))
					_, err = s.Txn(ctx, store.Put("ctr", []byte(strconv.Itoa(n+1)), kv.ModRevision))
					if errors.Is(err, store.ErrConflict) {
						conflicts.Store(w, true)
						continue
					}
					if err != nil {
						t.Error(err)
						return
					}
					break
				}
			}
		})
	}
	wg.Wait()
	kv, err := s.Get(ctx, "ctr")
	if err != nil {
		t.Fatal(err)
	}
	if string(kv.Value) != strconv.Itoa(workers*each) || kv.ModRevision != start+workers*each {
		t.Fatalf("counter = %s at rev %d, want %d at %d", kv.Value, kv.ModRevision, workers*each, start+workers*each)
	}
	for i := 1; i <= workers*each; i++ {
		ev := ch.next()
		if string(ev.KV.Value) != strconv.Itoa(i) || ev.KV.ModRevision != start+int64(i) {
			t.Fatalf("event %d = %s at rev %d", i, ev.KV.Value, ev.KV.ModRevision)
		}
	}
}

// TestBoltCloseDuringWrites: Close while writers and watchers are busy
// neither panics nor hangs, and later writes fail with ErrClosed.
func TestBoltCloseDuringWrites(t *testing.T) {
	s := openBolt(t, tempDB(t), store.BoltOptions{})
	ctx := t.Context()
	ch, err := s.Watch(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for w := range 3 {
		wg.Go(func() {
			for i := 0; ; i++ {
				_, err := s.Txn(ctx, store.Put(fmt.Sprintf("c/%d/%d", w, i), nil, store.Any))
				if errors.Is(err, store.ErrClosed) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	<-ch // at least one write happened
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for range ch {
	}
}

func TestBoltContextCancelled(t *testing.T) {
	s := openBolt(t, tempDB(t), store.BoltOptions{})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.Txn(ctx, store.Put("k", nil, store.Any)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Txn with cancelled ctx: %v", err)
	}
	if _, err := s.Get(ctx, "k"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Get with cancelled ctx: %v", err)
	}
	if _, err := s.Watch(ctx, "", 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("Watch with cancelled ctx: %v", err)
	}
}

func BenchmarkBoltTxnPut(b *testing.B) {
	s := openBolt(b, tempDB(b), store.BoltOptions{})
	ctx := context.Background()
	val := make([]byte, 256)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := s.Txn(ctx, store.Put("bench/"+strconv.Itoa(i%1000), val, store.Any)); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkBoltGet(b *testing.B) {
	s := openBolt(b, tempDB(b), store.BoltOptions{})
	ctx := context.Background()
	ops := make([]store.Op, 1000)
	for i := range ops {
		ops[i] = store.Put("bench/"+strconv.Itoa(i), make([]byte, 256), store.Any)
	}
	if _, err := s.Txn(ctx, ops...); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := s.Get(ctx, "bench/"+strconv.Itoa(i%1000)); err != nil {
			b.Fatal(err)
		}
	}
}
