package control

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"trellis.dev/trellis/internal/ca"
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

// TestEtcdSealedCA: replicas on one etcd given the same seal key file share
// the root, whose key etcd holds only sealed; a replica with another key
// file does not start.
func TestEtcdSealedCA(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	e := store.EtcdOptions{Endpoints: []string{srv.Endpoint}, Prefix: "/sealed"}
	seal := writeSealKey(t, 1)
	start := func(keyFile string) (*Control, error) {
		return Start(context.Background(), Options{
			DataDir: t.TempDir(), Etcd: e, CASealKeyFile: keyFile,
			GRPCAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0",
		})
	}
	a, err := start(seal)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop()
	b, err := start(seal)
	if err != nil {
		t.Fatalf("second replica with the same seal key: %v", err)
	}
	defer b.Stop()
	if readFile(t, a.o.DataDir, CAFile) != readFile(t, b.o.DataDir, CAFile) {
		t.Fatal("replicas with one seal key have different trust bundles")
	}
	raw, err := store.NewEtcd(store.EtcdOptions{Endpoints: []string{srv.Endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	kv, err := raw.Get(context.Background(), "/sealed"+ca.RootKey)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(kv.Value), "BEGIN PRIVATE KEY") || !strings.Contains(string(kv.Value), ca.SealedKeyType) {
		t.Fatalf("etcd holds the CA key unsealed:\n%s", kv.Value)
	}
	if c, err := start(writeSealKey(t, 2)); err == nil {
		c.Stop()
		t.Fatal("a replica with another seal key started")
	}
}

func writeSealKey(t *testing.T, fill byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ca-seal.key")
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{fill}, 32))
	if err := os.WriteFile(path, []byte(key), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
