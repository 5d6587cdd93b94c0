package control

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"trellis.dev/trellis/internal/config"
	"trellis.dev/trellis/internal/store"
)

// TestInjectedStore: the control plane runs on the store it is given, opens
// none of its own, and leaves it open at Stop for its owner to close.
func TestInjectedStore(t *testing.T) {
	st, err := store.NewBolt(filepath.Join(t.TempDir(), "elsewhere.db"), store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	dir := t.TempDir()
	c, err := Start(context.Background(), Options{
		DataDir: dir, Store: st,
		GRPCAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	if status, a := newClient(t, c).apply(false, file{"svc.yaml", serviceYAML}); status != http.StatusOK {
		t.Fatalf("apply: %d %+v", status, a)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, StoreFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s in the data dir: %v; want none with an injected store", StoreFile, err)
	}
	key := config.StoreKey(config.Ref{Kind: "Service", Namespace: "default", Name: "inventory"})
	if _, err := st.Get(context.Background(), key); err != nil {
		t.Fatalf("after Stop, the injected store: Get %s: %v; want the applied Service, store still open", key, err)
	}
}
