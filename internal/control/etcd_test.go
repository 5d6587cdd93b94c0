package control

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"trellis.dev/trellis/internal/config"
	"trellis.dev/trellis/internal/store"
	"trellis.dev/trellis/internal/store/etcdtest"
)

func startEtcdControl(t *testing.T, dir string, e store.EtcdOptions) *Control {
	t.Helper()
	c, err := Start(context.Background(), Options{
		DataDir: dir, Etcd: e,
		GRPCAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop() })
	return c
}

// TestEtcdStore: with Etcd options the control plane keeps its state in
// etcd under the prefix, not in a file; a second control plane with another
// data dir on the same etcd and prefix sees the same resources and loads
// the same CA root, so it hands out the same trust bundle.
func TestEtcdStore(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	e := store.EtcdOptions{Endpoints: []string{srv.Endpoint}, Prefix: "/mesh-a"}
	dirA, dirB := t.TempDir(), t.TempDir()
	a := startEtcdControl(t, dirA, e)
	if status, ans := newClient(t, a).apply(false, file{"svc.yaml", serviceYAML}); status != http.StatusOK {
		t.Fatalf("apply: %d %+v", status, ans)
	}
	if _, err := os.Stat(filepath.Join(dirA, StoreFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s in the data dir: %v; want none on etcd", StoreFile, err)
	}
	key := config.StoreKey(config.Ref{Kind: "Service", Namespace: "default", Name: "inventory"})
	raw, err := store.NewEtcd(store.EtcdOptions{Endpoints: []string{srv.Endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if _, err := raw.Get(context.Background(), "/mesh-a"+key); err != nil {
		t.Fatalf("etcd key /mesh-a%s: %v; want the applied Service under the prefix", key, err)
	}

	b := startEtcdControl(t, dirB, e)
	if status, body := newClient(t, b).do("GET", "/v1/resources/Service/default/inventory", nil); status != http.StatusOK {
		t.Fatalf("second control plane: GET the Service: %d %s", status, body)
	}
	if ca, cb := readFile(t, dirA, CAFile), readFile(t, dirB, CAFile); ca != cb {
		t.Fatal("two control planes on one etcd wrote different trust bundles")
	}

	// Another prefix is another mesh: its own root, none of mesh-a's keys.
	other := startEtcdControl(t, t.TempDir(), store.EtcdOptions{Endpoints: []string{srv.Endpoint}, Prefix: "/mesh-b"})
	if status, _ := newClient(t, other).do("GET", "/v1/resources/Service/default/inventory", nil); status != http.StatusNotFound {
		t.Fatalf("mesh-b sees mesh-a's Service: status %d", status)
	}
	if readFile(t, other.o.DataDir, CAFile) == readFile(t, dirA, CAFile) {
		t.Fatal("mesh-b shares mesh-a's CA root")
	}
}

// TestEtcdUnreachableFailsStart: a control plane told to use an etcd that
// is not there fails to start, saying so, and writes no store file.
func TestEtcdUnreachableFailsStart(t *testing.T) {
	dir := t.TempDir()
	_, err := Start(context.Background(), Options{
		DataDir: dir, Etcd: store.EtcdOptions{Endpoints: []string{"http://127.0.0.1:1"}, DialTimeout: 300 * time.Millisecond},
		GRPCAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0",
	})
	if err == nil {
		t.Fatal("Start with an unreachable etcd succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, StoreFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s written: %v; want no fallback to bbolt", StoreFile, err)
	}
}
