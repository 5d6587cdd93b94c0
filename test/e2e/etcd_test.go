package e2e

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"trellis.dev/trellis/internal/store/etcdtest"
)

// TestEtcdStoreMesh runs the real binary on a real etcd: an applied route
// reaches the proxies, and after the control plane is killed and started
// again, everything it knew comes back from etcd, not from its data dir, and
// a new apply is in force.
func TestEtcdStoreMesh(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	etcdFlags := []string{"--store", "etcd", "--etcd-endpoints", srv.Endpoint, "--etcd-prefix", "/e2e"}
	cp := startControl(t, "", etcdFlags...)
	cp.apply(t, services+"---"+splitRoute(100, 0))
	cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "v1", nil), labels: "version=v1"})
	cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "v2", nil), labels: "version=v2"})
	client := cp.proxy(t, proxyConfig{service: "client", upstreams: []string{"web"}})
	c := client.client()
	getAll(t, c, "http://web/", "v1 ", "route 100/0 on etcd")

	cp.apply(t, splitRoute(0, 100))
	eventually(t, 5*time.Second, "route change on etcd", func() bool {
		_, body, err := get(c, "http://web/")
		return err == nil && strings.HasPrefix(body, "v2 ")
	})
	getAll(t, c, "http://web/", "v2 ", "route 0/100 on etcd")

	cp.kill(t)
	cp.start(t)
	if out, err := cp.cli(t, "get", "httproutes"); err != nil || !strings.Contains(out, "web-split") {
		t.Fatalf("after restart, get httproutes: %v\n%s", err, out)
	}
	cp.apply(t, splitRoute(100, 0))
	eventually(t, 15*time.Second, "route change after a restart on etcd", func() bool {
		_, body, err := get(c, "http://web/")
		return err == nil && strings.HasPrefix(body, "v1 ")
	})
	getAll(t, c, "http://web/", "v1 ", "after restart on etcd")
	if out, _ := cp.cli(t, "get", "httproutes"); !strings.Contains(out, "web-split") {
		t.Fatalf("get httproutes: %s", out)
	}
	if !strings.Contains(cp.proc.out.String(), "store on etcd") {
		t.Fatalf("control plane did not say it runs on etcd:\n%s", tail(cp.proc.out.String(), 20))
	}
}

// TestEtcdTwoReplicas: two control planes on one etcd, the second given the
// first's tokens and the same seal key: a proxy attached to one reaches a
// service whose proxy is attached to the other, and an apply through either
// is in force on both sides.
func TestEtcdTwoReplicas(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	seal := filepath.Join(t.TempDir(), "ca-seal.key")
	if err := os.WriteFile(seal, []byte(base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))), 0o600); err != nil {
		t.Fatal(err)
	}
	flags := []string{"--store", "etcd", "--etcd-endpoints", srv.Endpoint, "--etcd-prefix", "/replicas", "--ca-seal-key", seal}
	a := startControl(t, "", flags...)
	dirB := t.TempDir()
	for _, f := range []string{"admin-token"} {
		b, err := os.ReadFile(filepath.Join(a.dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dirB, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	b := startControl(t, dirB, flags...)
	if ca, cb := must(os.ReadFile(filepath.Join(a.dir, "ca.crt"))), must(os.ReadFile(filepath.Join(dirB, "ca.crt"))); !bytes.Equal(ca, cb) {
		t.Fatal("replicas on one etcd have different trust bundles")
	}

	a.apply(t, services+"---"+splitRoute(100, 0))
	a.proxy(t, proxyConfig{service: "web", app: appServer(t, "v1", nil), labels: "version=v1"})
	b.proxy(t, proxyConfig{service: "web", app: appServer(t, "v2", nil), labels: "version=v2"})
	client := b.proxy(t, proxyConfig{service: "client", upstreams: []string{"web"}})
	c := client.client()
	getAll(t, c, "http://web/", "v1 ", "client on replica B to web-v1 registered on replica A")

	b.apply(t, splitRoute(0, 100))
	eventually(t, 5*time.Second, "apply through replica B", func() bool {
		_, body, err := get(c, "http://web/")
		return err == nil && strings.HasPrefix(body, "v2 ")
	})
	getAll(t, c, "http://web/", "v2 ", "after the apply through replica B")
	// Replica A's view holds B's write: web-v1 at weight 0.
	out, err := a.cli(t, "get", "httproutes", "web-split", "-o", "yaml")
	if err != nil || !strings.Contains(out, "name: web-v1\n      namespace: default\n      port: 80\n      weight: 0\n") {
		t.Fatalf("replica A's view of the route: %v\n%s", err, out)
	}
}
