package view_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"google.golang.org/protobuf/proto"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/config"
	"trellis.dev/trellis/internal/registry"
	"trellis.dev/trellis/internal/store"
	"trellis.dev/trellis/internal/store/storetest"
	"trellis.dev/trellis/internal/view"
)

func openStore(t *testing.T) *store.Bolt { return storetest.OpenBolt(t, store.BoltOptions{}) }

// run starts v and stops it when the test ends.
func run(t *testing.T, v *view.View) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { v.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func service(name string, port int) store.Op {
	b := fmt.Appendf(nil, `{"apiVersion":"trellis.dev/v1alpha1","kind":"Service","metadata":{"name":%q,"namespace":"default"},"spec":{"ports":[{"port":%d}]}}`, name, port)
	return store.Put(config.StoreKey(config.Ref{Kind: "Service", Namespace: "default", Name: name}), b, store.Any)
}

func endpoint(t *testing.T, id string) store.Op {
	t.Helper()
	ep := &meshv1.Endpoint{Id: id, Service: "orders", Namespace: "default", Address: "127.0.0.1:1", Healthy: true}
	b, err := proto.Marshal(ep)
	if err != nil {
		t.Fatal(err)
	}
	return store.Put(registry.Key("default", "orders", id), b, store.Any)
}

func txn(t *testing.T, st store.Store, ops ...store.Op) int64 {
	t.Helper()
	rev, err := st.Txn(context.Background(), ops...)
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

func waitFor(t *testing.T, v *view.View, rev int64) *view.State {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := v.WaitFor(ctx, rev)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func contents(s *view.State) string {
	var out []string
	for _, r := range s.Resources() {
		out = append(out, r.Object.Ref().String())
	}
	for _, ep := range s.Endpoints() {
		out = append(out, "ep "+ep.Id)
	}
	return strings.Join(out, ",")
}

func TestFollowsStore(t *testing.T) {
	st := openStore(t)
	before := txn(t, st, service("listed", 80), endpoint(t, "e1"), store.Put("/ca/root", []byte("pem"), store.Any))
	v := view.New(st, view.Options{})
	if got := v.Revision(); got != 0 {
		t.Fatalf("revision before Run = %d", got)
	}
	run(t, v)
	<-v.Ready()
	s := waitFor(t, v, before)
	if got, want := contents(s), "Service default/listed,ep e1"; got != want {
		t.Fatalf("listed: %s, want %s", got, want)
	}
	r1 := txn(t, st, service("watched", 8080))
	s = waitFor(t, v, r1)
	if s.Revision() != r1 {
		t.Fatalf("state revision %d, want %d", s.Revision(), r1)
	}
	res, ok := s.Resource(config.Ref{Kind: "Service", Namespace: "default", Name: "watched"})
	if !ok || res.CreateRevision != r1 || res.ModRevision != r1 {
		t.Fatalf("watched resource %+v, %v", res, ok)
	}
	if p, _ := res.Object.(*config.Service).PortByNumber(8080); p.Protocol != config.ProtocolHTTP {
		t.Fatalf("stored object not defaulted: %+v", p)
	}
	r2 := txn(t, st, store.Delete(config.StoreKey(config.Ref{Kind: "Service", Namespace: "default", Name: "listed"}), store.Any),
		store.Delete(registry.Key("default", "orders", "e1"), store.Any))
	if got, want := contents(waitFor(t, v, r2)), "Service default/watched"; got != want {
		t.Fatalf("after deletes: %s, want %s", got, want)
	}
	// Keys outside resources and endpoints move the revision only.
	r3 := txn(t, st, store.Put("/ca/root", []byte("pem2"), store.Any))
	if s := waitFor(t, v, r3); contents(s) != "Service default/watched" || s.Revision() != r3 {
		t.Fatalf("after a CA write: %s at %d", contents(s), s.Revision())
	}
}

// TestStatesAreImmutable: a state a reader holds does not change when the
// view moves on, in the map the batch touched and in the one it did not.
func TestStatesAreImmutable(t *testing.T) {
	st := openStore(t)
	v := view.New(st, view.Options{})
	run(t, v)
	r1 := txn(t, st, service("a", 80), endpoint(t, "e1"))
	old := waitFor(t, v, r1)
	r2 := txn(t, st, store.Delete(config.StoreKey(config.Ref{Kind: "Service", Namespace: "default", Name: "a"}), store.Any))
	r3 := txn(t, st, store.Delete(registry.Key("default", "orders", "e1"), store.Any), service("b", 80))
	if got := contents(waitFor(t, v, r3)); got != "Service default/b" {
		t.Fatalf("current: %s", got)
	}
	if got := contents(old); got != "Service default/a,ep e1" || old.Revision() != r1 {
		t.Fatalf("old state changed to %s at %d", got, old.Revision())
	}
	if _, ok := old.Resource(config.Ref{Kind: "Service", Namespace: "default", Name: "a"}); !ok {
		t.Fatalf("old state lost a resource deleted at %d", r2)
	}
}

// TestBatchIsAtomic: every transaction writes a Service and an endpoint
// together; a reader polling the view must never see one without the other.
func TestBatchIsAtomic(t *testing.T) {
	st := openStore(t)
	v := view.New(st, view.Options{})
	run(t, v)
	<-v.Ready()
	const rounds = 40
	var (
		stop atomic.Bool
		bad  atomic.Value
		wg   sync.WaitGroup
	)
	wg.Go(func() {
		for !stop.Load() {
			s := v.State()
			if n, m := len(s.Resources()), len(s.Endpoints()); n != m {
				bad.Store(fmt.Sprintf("revision %d: %d resources, %d endpoints", s.Revision(), n, m))
				return
			}
		}
	})
	var last int64
	for i := range rounds {
		last = txn(t, st, service(fmt.Sprintf("s%d", i), 80), endpoint(t, fmt.Sprintf("e%d", i)))
	}
	waitFor(t, v, last)
	stop.Store(true)
	wg.Wait()
	if msg := bad.Load(); msg != nil {
		t.Fatalf("saw half a transaction: %s", msg)
	}
}

func TestWaitFor(t *testing.T) {
	st := openStore(t)
	v := view.New(st, view.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := v.WaitFor(ctx, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitFor before Run: %v, want the context's error", err)
	}
	run(t, v)
	r1 := txn(t, st, service("a", 80))
	got := make(chan *view.State, 1)
	go func() {
		s, _ := v.WaitFor(context.Background(), r1+1)
		got <- s
	}()
	waitFor(t, v, r1)
	select {
	case s := <-got:
		t.Fatalf("WaitFor(%d) returned at revision %d", r1+1, s.Revision())
	case <-time.After(20 * time.Millisecond):
	}
	r2 := txn(t, st, service("b", 80))
	select {
	case s := <-got:
		if s.Revision() != r2 {
			t.Fatalf("WaitFor returned revision %d, want %d", s.Revision(), r2)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WaitFor did not return after the revision was written")
	}
	if s := waitFor(t, v, 1); s.Revision() != r2 {
		t.Fatalf("WaitFor an old revision returned %d, want the current %d", s.Revision(), r2)
	}
}

func TestSubscribe(t *testing.T) {
	st := openStore(t)
	v := view.New(st, view.Options{})
	ch, cancel := v.Subscribe()
	run(t, v)
	<-v.Ready()
	<-ch // the first listing
	drain := func() bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	r := txn(t, st, endpoint(t, "e1"))
	waitFor(t, v, r)
	if !drain() {
		t.Fatal("no notification after a registration")
	}
	// A write outside the mesh view moves the revision, not the content:
	// subscribers hear of it (the view is current at a newer revision), and
	// the generation tells them nothing needs rebuilding.
	gen := v.State().Generation()
	r = txn(t, st, store.Put("/ca/root", nil, store.Any))
	if s := waitFor(t, v, r); s.Generation() != gen {
		t.Fatalf("a CA write moved the generation %d -> %d", gen, s.Generation())
	}
	if !drain() {
		t.Fatal("no notification for a new revision")
	}
	r = txn(t, st, endpoint(t, "e2"))
	if s := waitFor(t, v, r); s.Generation() == gen {
		t.Fatal("a registration kept the generation")
	}
	drain()
	// A burst leaves one pending notification; the view never blocks.
	for i := range 10 {
		r = txn(t, st, service(fmt.Sprintf("s%d", i), 80))
	}
	waitFor(t, v, r)
	if !drain() || drain() {
		t.Fatal("want exactly one pending notification after a burst")
	}
	cancel()
	cancel()
	waitFor(t, v, txn(t, st, service("late", 80)))
	if drain() {
		t.Fatal("notified after cancel")
	}
}

func TestSkipsUndecodable(t *testing.T) {
	st := openStore(t)
	txn(t, st, store.Put(config.StoreKey(config.Ref{Kind: "Service", Namespace: "default", Name: "bad"}), []byte(`{"spec":`), store.Any),
		store.Put("/resources/Nope/default/x", []byte(`{}`), store.Any),
		store.Put("/resources/broken-key", []byte(`{}`), store.Any),
		store.Put(registry.Key("default", "orders", "junk"), []byte{0xff, 0xff}, store.Any),
		service("good", 80))
	v := view.New(st, view.Options{})
	run(t, v)
	<-v.Ready()
	if got := contents(v.State()); got != "Service default/good" {
		t.Fatalf("view holds %s, want only the good service", got)
	}
	// A valid resource rewritten as garbage leaves the view.
	r := txn(t, st, store.Put(config.StoreKey(config.Ref{Kind: "Service", Namespace: "default", Name: "good"}), []byte(`nope`), store.Any))
	if got := contents(waitFor(t, v, r)); got != "" {
		t.Fatalf("after a garbage rewrite: %q", got)
	}
}

// flaky wraps a real store: the test can end every open watch (as the
// store does to a slow watcher) and make the next calls fail.
type flaky struct {
	store.Store
	mu       sync.Mutex
	cancels  []context.CancelFunc
	failNext int // List and Watch calls left to fail
	lists    int
}

func (f *flaky) List(ctx context.Context, prefix string) ([]store.KV, int64, error) {
	f.mu.Lock()
	f.lists++
	fail := f.failNext > 0
	if fail {
		f.failNext--
	}
	f.mu.Unlock()
	if fail {
		return nil, 0, errors.New("store unreachable")
	}
	return f.Store.List(ctx, prefix)
}

func (f *flaky) Watch(ctx context.Context, prefix string, rev int64) (<-chan []store.Event, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failNext > 0 {
		f.failNext--
		return nil, fmt.Errorf("watch: %w", store.ErrCompacted)
	}
	ctx, cancel := context.WithCancel(ctx)
	f.cancels = append(f.cancels, cancel)
	return f.Store.Watch(ctx, prefix, rev)
}

func (f *flaky) dropWatches(failNext int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failNext = failNext
	for _, c := range f.cancels {
		c()
	}
	f.cancels = nil
}

// TestRelistAfterWatchCloses: when the watch ends and the store fails for a
// while, the view retries, lists again, and catches what changed meanwhile,
// deletes included.
func TestRelistAfterWatchCloses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st := openStore(t)
		src := &flaky{Store: st}
		v := view.New(src, view.Options{RetryInterval: time.Second})
		ch, unsub := v.Subscribe()
		defer unsub()
		run(t, v)
		r := txn(t, st, endpoint(t, "o1"))
		waitFor(t, v, r)
		synctest.Wait()
		<-ch
		// The watch ends; the store then refuses one List and one Watch.
		src.dropWatches(2)
		r = txn(t, st, store.Delete(registry.Key("default", "orders", "o1"), store.Any), endpoint(t, "o2"))
		synctest.Wait()
		if got := v.Revision(); got >= r {
			t.Fatalf("view at %d while the store was failing", got)
		}
		time.Sleep(2 * time.Second) // two retry intervals
		synctest.Wait()
		if got := contents(v.State()); got != "ep o2" || v.Revision() != r {
			t.Fatalf("after the re-list: %q at %d, want ep o2 at %d", got, v.Revision(), r)
		}
		select {
		case <-ch:
		default:
			t.Fatal("no notification after the re-list")
		}
		// And it follows live changes again.
		r = txn(t, st, endpoint(t, "o3"))
		if got := contents(waitFor(t, v, r)); got != "ep o2,ep o3" {
			t.Fatalf("live after re-list: %q", got)
		}
	})
}
