package e2e

import (
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
