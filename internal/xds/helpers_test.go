package xds

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/encoding/protojson"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/compiler"
	"trellis.dev/trellis/internal/config"
	"trellis.dev/trellis/internal/registry"
	"trellis.dev/trellis/internal/store"
	"trellis.dev/trellis/internal/store/storetest"
	"trellis.dev/trellis/internal/view"
)

var update = flag.Bool("update", false, "rewrite golden files")

// env is the adapter on a compiler on a view of a real bolt store.
type env struct {
	t    *testing.T
	st   *store.Bolt
	reg  *registry.Registry
	v    *view.View
	comp *compiler.Compiler
	srv  *Server
}

func newEnv(t *testing.T, o Options) *env {
	t.Helper()
	st := storetest.OpenBolt(t, store.BoltOptions{})
	v := view.New(st, view.Options{})
	comp := compiler.New(v, compiler.Options{TrustDomain: "trellis.local", Domain: "trellis.local"})
	ctx, cancel := context.WithCancel(context.Background())
	if o.TrustDomain == "" {
		o.TrustDomain = "trellis.local"
	}
	e := &env{t: t, st: st, reg: registry.New(st, nil), v: v, comp: comp, srv: New(ctx, comp, v, o)}
	var wg sync.WaitGroup
	wg.Go(func() { v.Run(ctx) })
	wg.Go(func() { comp.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	return e
}

// apply stores the YAML's objects in one transaction and waits for the
// view to have them.
func (e *env) apply(yaml string) {
	e.t.Helper()
	objs, err := config.Decode("test.yaml", []byte(yaml))
	if err != nil {
		e.t.Fatal(err)
	}
	var ops []store.Op
	for _, o := range objs {
		b, err := config.Encode(o)
		if err != nil {
			e.t.Fatal(err)
		}
		ops = append(ops, store.Put(config.StoreKey(o.Ref()), b, store.Any))
	}
	rev, err := e.st.Txn(context.Background(), ops...)
	if err != nil {
		e.t.Fatal(err)
	}
	e.waitFor(rev)
}

func (e *env) waitFor(rev int64) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := e.v.WaitFor(ctx, rev); err != nil {
		e.t.Fatal(err)
	}
}

// register puts a healthy endpoint in the registry.
func (e *env) register(id, svc, addr string, labels map[string]string) {
	e.t.Helper()
	e.registerHealth(id, svc, addr, labels, true)
}

func (e *env) registerHealth(id, svc, addr string, labels map[string]string, healthy bool) {
	e.t.Helper()
	ep := &meshv1.Endpoint{Id: id, Service: svc, Namespace: "default", Address: addr, Labels: labels, Healthy: healthy,
		Identity: "spiffe://trellis.local/ns/default/sa/" + svc}
	if _, _, err := e.reg.Register(context.Background(), ep, time.Minute); err != nil {
		e.t.Fatal(err)
	}
	rev, err := e.st.Revision(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	e.waitFor(rev)
}

// update publishes the view's current state.
func (e *env) update() {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.srv.Update(ctx); err != nil {
		e.t.Fatal(err)
	}
}

// resourcesJSON is rs as indented JSON with sorted keys: protojson's
// output re-encoded, so the bytes are stable.
func resourcesJSON(t *testing.T, rs Resources) []byte {
	t.Helper()
	out := map[string][]any{}
	for typ, list := range rs {
		for _, r := range list {
			out[typ] = append(out[typ], protoJSON(t, r))
		}
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

func protoJSON(t *testing.T, r types.Resource) any {
	t.Helper()
	b, err := protojson.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from golden file (run with -update if the change is meant):\n--- got\n%s", name, got)
	}
}

// delete removes a resource of the default namespace.
func (e *env) delete(kind, name string) {
	e.t.Helper()
	rev, err := e.st.Txn(context.Background(), store.Delete(config.StoreKey(config.Ref{Kind: kind, Namespace: "default", Name: name}), store.Any))
	if err != nil {
		e.t.Fatal(err)
	}
	e.waitFor(rev)
}
