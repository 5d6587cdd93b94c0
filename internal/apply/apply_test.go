package apply_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"trellis.dev/trellis/internal/apply"
	"trellis.dev/trellis/internal/config"
	"trellis.dev/trellis/internal/store"
	"trellis.dev/trellis/internal/store/storetest"
)

func openStore(t *testing.T) *store.Bolt { return storetest.OpenBolt(t, store.BoltOptions{}) }

func objects(t *testing.T, file, yaml string) []apply.Object {
	t.Helper()
	objs, err := config.Decode(file, []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	out := make([]apply.Object, len(objs))
	for i, o := range objs {
		out[i] = apply.Object{Obj: o, File: file}
	}
	return out
}

func serviceYAML(ports ...int) string {
	var ps []string
	for _, p := range ports {
		ps = append(ps, fmt.Sprintf("{name: p%d, port: %d}", p, p))
	}
	return "apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata: {name: inventory}\nspec: {ports: [" + strings.Join(ps, ", ") + "]}\n"
}

// routeYAML is a route of its own path (/<name>), so routes of different
// names never conflict.
func routeYAML(name string, port int) string {
	return fmt.Sprintf(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: %s}
spec:
  parentRefs: [{kind: Service, name: inventory, port: %d}]
  rules: [{matches: [{path: {value: /%s}}], backendRefs: [{name: inventory-v1}]}]
`, name, port, name)
}

func actions(out *apply.Outcome) string {
	var s []string
	for _, r := range out.Results {
		s = append(s, r.Ref.String()+"="+string(r.Action))
	}
	return strings.Join(s, ",")
}

// stored is every resource in the store, decoded.
func stored(t *testing.T, st store.Store) []config.Object {
	t.Helper()
	kvs, _, err := st.List(context.Background(), config.ResourcePrefix)
	if err != nil {
		t.Fatal(err)
	}
	var out []config.Object
	for _, kv := range kvs {
		ref, err := config.ParseStoreKey(kv.Key)
		if err != nil {
			t.Fatal(err)
		}
		o, err := config.DecodeStored(ref.Kind, kv.Value)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, o)
	}
	return out
}

func TestApplyActionsAndRevisions(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := t0
	a := apply.New(st, apply.Options{Now: func() time.Time { return now }})
	out, err := a.Apply(ctx, objects(t, "a.yaml", serviceYAML(8080)+"---\n"+routeYAML("r", 8080)), false)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := actions(out), "Service default/inventory=created,HTTPRoute default/r=created"; got != want {
		t.Fatalf("first apply: %s, want %s", got, want)
	}
	if rev, _ := st.Revision(ctx); out.Revision != rev {
		t.Fatalf("outcome revision %d, store at %d", out.Revision, rev)
	}
	fence, err := st.Get(ctx, apply.FenceKey)
	if err != nil || fence.ModRevision != out.Revision {
		t.Fatalf("fence %+v, %v: want it written at %d", fence, err, out.Revision)
	}
	first := out.Revision

	again, err := a.Apply(ctx, objects(t, "a.yaml", serviceYAML(8080)+"---\n"+routeYAML("r", 8080)), false)
	if err != nil || actions(again) != "Service default/inventory=unchanged,HTTPRoute default/r=unchanged" || again.Revision != first {
		t.Fatalf("re-apply: %v at %d, %v", actions(again), again.Revision, err)
	}

	now = t0.Add(time.Hour)
	dry, err := a.Apply(ctx, objects(t, "a.yaml", serviceYAML(8080, 9090)), true)
	if err != nil || actions(dry) != "Service default/inventory=configured" || dry.Revision != first {
		t.Fatalf("dry run: %v at %d, %v", actions(dry), dry.Revision, err)
	}
	if rev, _ := st.Revision(ctx); rev != first {
		t.Fatalf("dry run wrote: store at %d", rev)
	}
	upd, err := a.Apply(ctx, objects(t, "a.yaml", serviceYAML(8080, 9090)), false)
	if err != nil || actions(upd) != "Service default/inventory=configured" || upd.Revision != first+1 {
		t.Fatalf("update: %v at %d, %v", actions(upd), upd.Revision, err)
	}
	for _, o := range stored(t, st) {
		if ts := o.(interface{ GetCreationTimestamp() metav1.Time }).GetCreationTimestamp(); !ts.Equal(&metav1.Time{Time: t0}) {
			t.Errorf("%s: creation time %v, want the first apply's %v", o.Ref(), ts, t0)
		}
	}
}

// TestApplyRefusesOnlyNewProblems: a problem already in the store (written
// around the Applier) does not block unrelated applies; one the apply
// introduces is refused, naming the file.
func TestApplyRefusesOnlyNewProblems(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	a := apply.New(st, apply.Options{})
	if _, err := a.Apply(ctx, objects(t, "svc.yaml", serviceYAML(8080)), false); err != nil {
		t.Fatal(err)
	}
	bad := objects(t, "old.yaml", routeYAML("old", 9999))[0].Obj
	b, _ := config.Encode(bad)
	if _, err := st.Txn(ctx, store.Put(config.StoreKey(bad.Ref()), b, store.Absent)); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Apply(ctx, objects(t, "ok.yaml", routeYAML("fine", 8080)), false); err != nil {
		t.Fatalf("unrelated apply refused for an old problem: %v", err)
	}
	_, err := a.Apply(ctx, objects(t, "new.yaml", routeYAML("new", 7070)), false)
	var p *apply.Problems
	if !errors.As(err, &p) || len(p.Lines) != 1 ||
		p.Lines[0] != "new.yaml: HTTPRoute default/new: spec.parentRefs[0].port: Service default/inventory has no port 7070" {
		t.Fatalf("new problem: %v", err)
	}
	// Dropping port 8080 breaks a route the apply does not hold.
	_, err = a.Apply(ctx, objects(t, "svc.yaml", serviceYAML(9999)), false)
	if !errors.As(err, &p) || !strings.Contains(err.Error(), "HTTPRoute default/fine: spec.parentRefs[0].port: Service default/inventory has no port 8080") {
		t.Fatalf("port removal under a route: %v", err)
	}
	// Within the apply itself: a duplicate.
	_, err = a.Apply(ctx, objects(t, "dup.yaml", routeYAML("d", 8080)+"---\n"+routeYAML("d", 8080)), false)
	if !errors.As(err, &p) || !strings.Contains(err.Error(), "dup.yaml: HTTPRoute default/d: defined more than once") {
		t.Fatalf("duplicate: %v", err)
	}
}

func TestDelete(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	a := apply.New(st, apply.Options{})
	ref := config.Ref{Kind: "HTTPRoute", Namespace: "default", Name: "r"}
	if _, err := a.Delete(ctx, ref); !errors.Is(err, apply.ErrNotFound) {
		t.Fatalf("delete of a missing resource: %v, want ErrNotFound", err)
	}
	applied, err := a.Apply(ctx, objects(t, "a.yaml", serviceYAML(8080)+"---\n"+routeYAML("r", 8080)), false)
	if err != nil {
		t.Fatal(err)
	}
	out, err := a.Delete(ctx, ref)
	if err != nil || actions(out) != "HTTPRoute default/r=deleted" || out.Revision != applied.Revision+1 {
		t.Fatalf("delete: %v at %d, %v", actions(out), out.Revision, err)
	}
	if fence, _ := st.Get(ctx, apply.FenceKey); fence.ModRevision != out.Revision {
		t.Fatalf("delete did not write the fence: at %d, want %d", fence.ModRevision, out.Revision)
	}
	if got := len(stored(t, st)); got != 1 {
		t.Fatalf("%d resources left, want the Service", got)
	}
}

// interfering is a store on which another writer commits once, right after
// the Applier read the fence: the Applier's first Txn must fail and its
// retry must see the other write.
type interfering struct {
	*store.Bolt
	once  sync.Once
	write func()
	txns  atomic.Int32
	fail  bool // every Txn conflicts
}

func (s *interfering) Get(ctx context.Context, key string) (store.KV, error) {
	kv, err := s.Bolt.Get(ctx, key)
	if key == apply.FenceKey && s.write != nil {
		s.once.Do(s.write)
	}
	return kv, err
}

func (s *interfering) Txn(ctx context.Context, ops ...store.Op) (int64, error) {
	s.txns.Add(1)
	if s.fail {
		return 0, fmt.Errorf("test: %w", store.ErrConflict)
	}
	return s.Bolt.Txn(ctx, ops...)
}

func TestRetryAfterConcurrentWrite(t *testing.T) {
	bolt := openStore(t)
	ctx := context.Background()
	other := apply.New(bolt, apply.Options{})
	st := &interfering{Bolt: bolt}
	st.write = func() {
		if _, err := other.Apply(ctx, objects(t, "other.yaml", serviceYAML(8080)), false); err != nil {
			t.Error(err)
		}
	}
	a := apply.New(st, apply.Options{})
	out, err := a.Apply(ctx, objects(t, "mine.yaml", serviceYAML(8080)+"---\n"+routeYAML("r", 8080)), false)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := actions(out), "Service default/inventory=unchanged,HTTPRoute default/r=created"; got != want || st.txns.Load() != 2 {
		t.Fatalf("after a concurrent write: %s in %d txns, want %s in 2", got, st.txns.Load(), want)
	}

	busy := &interfering{Bolt: bolt, fail: true}
	_, err = apply.New(busy, apply.Options{Retries: 3}).Apply(ctx, objects(t, "b.yaml", routeYAML("b", 8080)), false)
	if !errors.Is(err, apply.ErrBusy) || !errors.Is(err, store.ErrConflict) || busy.txns.Load() != 4 {
		t.Fatalf("always conflicting: %v after %d txns, want ErrBusy after 4", err, busy.txns.Load())
	}
}

// barrier holds each writer's first List of a round until both writers have
// listed, so both read the same state before either commits: the
// interleaving that breaks an unfenced cross-object check, every round.
type barrier struct {
	store.Store
	mu      sync.Mutex
	waiting int
	release chan struct{}
	armed   map[int]bool // writer → its next List waits
}

type writerStore struct {
	*barrier
	id int
}

func (b *barrier) arm() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.waiting = 0
	b.release = make(chan struct{})
	b.armed = map[int]bool{0: true, 1: true}
}

func (w writerStore) List(ctx context.Context, prefix string) ([]store.KV, int64, error) {
	kvs, rev, err := w.Store.List(ctx, prefix)
	w.mu.Lock()
	wait := w.armed[w.id]
	delete(w.armed, w.id)
	release := w.release
	if wait {
		w.waiting++
		if w.waiting == 2 {
			close(release)
		}
	}
	w.mu.Unlock()
	if wait {
		select {
		case <-release:
		case <-time.After(5 * time.Second): // the other writer never listed
		}
	}
	return kvs, rev, err
}

// TestTwoWritersKeepInvariant: two Appliers, as two control-plane replicas
// would have, on one store. Each round one removes Service port 8080 while
// the other attaches an HTTPRoute to it: each change is valid alone, not
// together. After every round exactly one has won and the stored set passes
// CheckSet. Half the rounds force the worst interleaving (both read before
// either commits), half race freely.
func TestTwoWritersKeepInvariant(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	b := &barrier{Store: st}
	writers := [2]*apply.Applier{
		apply.New(writerStore{b, 0}, apply.Options{}),
		apply.New(writerStore{b, 1}, apply.Options{}),
	}
	reset := apply.New(st, apply.Options{})
	route := config.Ref{Kind: "HTTPRoute", Namespace: "default", Name: "r"}
	const rounds = 40
	for round := range rounds {
		if _, err := reset.Apply(ctx, objects(t, "base.yaml", serviceYAML(8080, 9090)), false); err != nil {
			t.Fatal(err)
		}
		if _, err := reset.Delete(ctx, route); err != nil && !errors.Is(err, apply.ErrNotFound) {
			t.Fatal(err)
		}
		if round%2 == 0 {
			b.arm()
		}
		changes := [2][]apply.Object{
			objects(t, "svc.yaml", serviceYAML(9090)),
			objects(t, "route.yaml", routeYAML("r", 8080)),
		}
		var errs [2]error
		var wg sync.WaitGroup
		for i := range writers {
			wg.Go(func() { _, errs[i] = writers[i].Apply(ctx, changes[i], false) })
		}
		wg.Wait()
		won := 0
		for i, err := range errs {
			var p *apply.Problems
			switch {
			case err == nil:
				won++
			case !errors.As(err, &p) || !strings.Contains(err.Error(), "no port 8080"):
				t.Fatalf("round %d: writer %d: %v, want success or a refusal naming port 8080", round, i, err)
			}
		}
		if err := config.CheckSet(stored(t, st)); err != nil {
			t.Fatalf("round %d: both writers committed (%d won); the stored set fails its checks: %v", round, won, err)
		}
		if won != 1 {
			t.Fatalf("round %d: %d writers won, want exactly 1", round, won)
		}
	}
}
