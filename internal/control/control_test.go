package control

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func readFile(t *testing.T, dir, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestRestartKeepsStateAndFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	c := startControl(t, dir)
	cl := newClient(t, c)
	if status, a := cl.apply(false, file{"svc.yaml", serviceYAML}, file{"route.yaml", routeYAML("split", 90)}); status != http.StatusOK {
		t.Fatalf("apply: %d %+v", status, a)
	}
	for name, want := range map[string]os.FileMode{
		"":             0o700,
		StoreFile:      0o600,
		AdminTokenFile: 0o600,
		CAFile:         0o644,
		AddrsFile:      0o644,
	} {
		if got := mode(t, filepath.Join(dir, name)); got != want {
			t.Errorf("%s: mode %o, want %o", filepath.Join(dir, name), got, want)
		}
	}
	// Outside dev mode there is no shared bootstrap token to steal.
	if _, err := os.Stat(filepath.Join(dir, BootstrapTokenFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s exists without --insecure-bootstrap-token (err %v)", BootstrapTokenFile, err)
	}
	admin, root := readFile(t, dir, AdminTokenFile), readFile(t, dir, CAFile)
	if len(strings.TrimSpace(admin)) != 64 {
		t.Fatalf("admin token %q: want a 32-byte hex token", admin)
	}
	if !strings.Contains(root, "BEGIN CERTIFICATE") {
		t.Fatalf("ca.crt %q", root)
	}
	var addrs struct {
		GRPC  string `json:"grpc_addr"`
		Admin string `json:"admin_addr"`
	}
	if err := json.Unmarshal([]byte(readFile(t, dir, AddrsFile)), &addrs); err != nil {
		t.Fatal(err)
	}
	if g, a := c.Addrs(); addrs.GRPC != g || addrs.Admin != a {
		t.Fatalf("control.json %+v, listening on %s %s", addrs, g, a)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}

	c2 := startControl(t, dir)
	if got := readFile(t, dir, AdminTokenFile); got != admin {
		t.Error("admin token changed across restart")
	}
	if got := readFile(t, dir, CAFile); got != root {
		t.Error("CA root changed across restart")
	}
	json.Unmarshal([]byte(readFile(t, dir, AddrsFile)), &addrs)
	if _, a := c2.Addrs(); addrs.Admin != a {
		t.Errorf("control.json not rewritten: %s, listening on %s", addrs.Admin, a)
	}
	cl2 := newClient(t, c2)
	status, body := cl2.do("GET", "/v1/resources/httproutes/default/split", nil)
	if status != http.StatusOK || !strings.Contains(string(body), `"weight":90`) {
		t.Fatalf("route after restart: %d %s", status, body)
	}
	// The old token still works: the CLI keeps working across restarts.
	if status, _ := cl2.doToken("GET", "/v1/proxies", nil, strings.TrimSpace(admin)); status != http.StatusOK {
		t.Fatalf("old admin token after restart: %d", status)
	}
}

func TestStartRefusesBadOptions(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		o    Options
		want string
	}{
		{"no data dir", Options{}, "dataDir"},
		{"remote grpc", Options{DataDir: dir, GRPCAddr: "0.0.0.0:0", AdminAddr: "127.0.0.1:0"}, "grpcAddr: \"0.0.0.0:0\" is not a loopback address"},
		{"remote admin", Options{DataDir: dir, GRPCAddr: "127.0.0.1:0", AdminAddr: ":0"}, "adminAddr"},
		{"remote metrics", Options{DataDir: dir, GRPCAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", MetricsAddr: "0.0.0.0:15012"}, "metricsAddr: \"0.0.0.0:15012\" is not a loopback address"},
		{"bad addr", Options{DataDir: dir, GRPCAddr: "nonsense", AdminAddr: "127.0.0.1:0"}, "grpcAddr"},
		{"bad trust domain", Options{DataDir: dir, GRPCAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", TrustDomain: "Not A Domain"}, "trust domain"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Start(context.Background(), tt.o)
			if err == nil {
				c.Stop()
				t.Fatal("started")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want %q", err, tt.want)
			}
		})
	}
	// Loopback spellings are accepted without AllowRemote.
	for _, a := range []string{"127.0.0.1:0", "[::1]:0", "localhost:0"} {
		o := Options{DataDir: dir, GRPCAddr: a, AdminAddr: a}
		o.setDefaults()
		if err := o.Validate(); err != nil {
			t.Errorf("%s: %v", a, err)
		}
	}
	o := Options{DataDir: dir, GRPCAddr: "0.0.0.0:0", AdminAddr: "0.0.0.0:0", AllowRemote: true}
	o.setDefaults()
	if err := o.Validate(); err != nil {
		t.Errorf("AllowRemote: %v", err)
	}
}

func TestSecondControlOnSameDataDirFails(t *testing.T) {
	dir := t.TempDir()
	startControl(t, dir)
	c, err := Start(context.Background(), Options{DataDir: dir, GRPCAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0"})
	if err == nil {
		c.Stop()
		t.Fatal("a second control plane opened the same store")
	}
}

func TestRunStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	dir := t.TempDir()
	go func() {
		done <- Run(ctx, Options{DataDir: dir, GRPCAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0"})
	}()
	// Wait until it wrote control.json, then stop it.
	for {
		if _, err := os.Stat(filepath.Join(dir, AddrsFile)); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("Run returned early: %v", err)
		default:
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	// The store was closed: a new control plane can open it.
	c := startControl(t, dir)
	c.Stop()
}
