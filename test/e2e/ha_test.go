package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"trellis.dev/trellis/internal/push"
	"trellis.dev/trellis/internal/store/etcdtest"
)

// haMesh is three control-plane replicas on one etcd, sharing a seal key
// and (copied) admin token, as docs/operations.md runs them.
type haMesh struct {
	replicas []*controlPlane
	ids      []string
	// addrs is every replica's gRPC address, for proxies' --control.
	addrs string
}

const haLeaderTTL = 3 * time.Second

func startHAMesh(t *testing.T) *haMesh {
	t.Helper()
	srv := etcdtest.Start(t, etcdtest.Options{})
	seal := filepath.Join(t.TempDir(), "ca-seal.key")
	if err := os.WriteFile(seal, []byte(base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{9}, 32))), 0o600); err != nil {
		t.Fatal(err)
	}
	m := &haMesh{}
	for i := range 3 {
		id := fmt.Sprintf("cp%d", i+1)
		dir := t.TempDir()
		if i > 0 { // the CLI talks to any replica with the first one's token
			tok := must(os.ReadFile(filepath.Join(m.replicas[0].dir, "admin-token")))
			if err := os.WriteFile(filepath.Join(dir, "admin-token"), tok, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		cp := startControl(t, dir, "--store", "etcd", "--etcd-endpoints", srv.Endpoint, "--etcd-prefix", "/ha",
			"--ca-seal-key", seal, "--replica-id", id, "--leader-ttl", haLeaderTTL.String(), "--dns-addr", "off")
		m.replicas, m.ids = append(m.replicas, cp), append(m.ids, id)
	}
	grpcs := make([]string, len(m.replicas))
	for i, cp := range m.replicas {
		grpcs[i] = cp.grpc
	}
	m.addrs = strings.Join(grpcs, ",")
	return m
}

// proxy starts a proxy given every replica's address.
func (m *haMesh) proxy(t *testing.T, pc proxyConfig) *sidecar {
	t.Helper()
	pc.extra = append(pc.extra, "--control", m.addrs)
	return m.replicas[0].proxy(t, pc)
}

func (m *haMesh) byID(id string) *controlPlane {
	for i, x := range m.ids {
		if x == id {
			return m.replicas[i]
		}
	}
	return nil
}

func (m *haMesh) idOf(cp *controlPlane) string {
	for i, x := range m.replicas {
		if x == cp {
			return m.ids[i]
		}
	}
	return "?"
}

func (m *haMesh) others(dead *controlPlane) []*controlPlane {
	var out []*controlPlane
	for _, cp := range m.replicas {
		if cp != dead {
			out = append(out, cp)
		}
	}
	return out
}

// proxyStatus is `trellis proxy-status -o json` through cp.
func proxyStatus(t *testing.T, cp *controlPlane) []push.ProxyStatus {
	t.Helper()
	out, err := cp.cli(t, "proxy-status", "-o", "json")
	if err != nil {
		t.Fatalf("proxy-status: %v\n%s", err, out)
	}
	var list []push.ProxyStatus
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("proxy-status -o json: %v\n%s", err, out)
	}
	return list
}

func statusOfService(list []push.ProxyStatus, service string) (push.ProxyStatus, bool) {
	for _, p := range list {
		if p.Service == service {
			return p, true
		}
	}
	return push.ProxyStatus{}, false
}

// isLeader reads trellis_control_leader from cp's /metrics.
func isLeader(cp *controlPlane) bool {
	resp, err := http.Get("http://" + cp.metrics + "/metrics")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if sc.Text() == "trellis_control_leader 1" {
			return true
		}
	}
	return false
}

// loadResult counts a bounded load's requests.
type loadResult struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	// last is the body prefix of the latest good answer.
	last atomic.Pointer[string]
}

func (r *loadResult) fail(msg string) {
	r.failed.Add(1)
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.errs) < 10 {
		r.errs = append(r.errs, msg)
	}
}

// runLoad sends about rate GETs a second to url through c until ctx ends,
// from a few workers; a tick with every worker busy is skipped, not failed.
func runLoad(ctx context.Context, c *http.Client, url string, rate int) (*loadResult, func()) {
	r := &loadResult{}
	work := make(chan struct{})
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for range work {
				code, body, err := get(c, url)
				if err != nil || code != 200 {
					r.fail(fmt.Sprintf("%s: %d %q %v", time.Now().Format("15:04:05.000"), code, body, err))
					continue
				}
				r.ok.Add(1)
				p := body[:min(3, len(body))]
				r.last.Store(&p)
			}
		})
	}
	wg.Go(func() {
		defer close(work)
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				select {
				case work <- struct{}{}:
				default:
				}
			}
		}
	})
	return r, wg.Wait
}

// TestHAFailover: three replicas on one etcd, two web proxies and a client
// proxy given all three addresses, ~500 req/s through the mesh. The
// replica the client proxy is attached to is killed with SIGKILL: no
// request fails, the proxy re-attaches to another replica within 5 s (as
// proxy-status shows from any replica), and a route change applied right
// after is in force within 1 s.
func TestHAFailover(t *testing.T) {
	m := startHAMesh(t)
	m.replicas[0].apply(t, services+"---"+splitRoute(100, 0))
	m.proxy(t, proxyConfig{service: "web", app: appServer(t, "v1", nil), labels: "version=v1"})
	m.proxy(t, proxyConfig{service: "web", app: appServer(t, "v2", nil), labels: "version=v2"})
	client := m.proxy(t, proxyConfig{service: "client", upstreams: []string{"web"}})
	c := client.client()
	getAll(t, c, "http://web/", "v1 ", "before the failover")

	ctx, stopLoad := context.WithTimeout(context.Background(), 25*time.Second)
	defer stopLoad()
	res, wait := runLoad(ctx, c, "http://web/", 500)
	time.Sleep(3 * time.Second)

	var before push.ProxyStatus
	eventually(t, 5*time.Second, "client proxy in proxy-status with its replica", func() bool {
		var ok bool
		before, ok = statusOfService(proxyStatus(t, m.replicas[1]), "client")
		return ok && before.Replica != "" && before.State == push.StateSynced
	})
	dead := m.byID(before.Replica)
	if dead == nil {
		t.Fatalf("client proxy attached to unknown replica %q", before.Replica)
	}
	t.Logf("client proxy %s is attached to %s: killing it (SIGKILL)", before.NodeID, before.Replica)
	dead.kill(t)
	killed := time.Now()

	alive := m.others(dead)
	var after push.ProxyStatus
	eventually(t, 5*time.Second, "client proxy re-attached to another replica", func() bool {
		var ok bool
		after, ok = statusOfService(proxyStatus(t, alive[0]), "client")
		return ok && after.Replica != before.Replica && after.Replica != "" && after.State == push.StateSynced
	})
	reattach := time.Since(killed)
	t.Logf("re-attached to %s %s after the kill (as proxy-status through %s shows)", after.Replica, reattach.Round(time.Millisecond), m.idOf(alive[0]))
	if after.AckedVersion != before.AckedVersion {
		t.Errorf("config version moved across the failover: %s → %s (nothing changed)", before.AckedVersion, after.AckedVersion)
	}

	// A change applied right after is in force at once.
	applied := time.Now()
	alive[1].apply(t, splitRoute(0, 100))
	applyDone := time.Now()
	deadline := applyDone.Add(time.Second)
	for {
		if p := res.last.Load(); p != nil && *p == "v2 " {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("route change not in force 1s after apply returned (apply took %s)", applyDone.Sub(applied))
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("route change in force %s after apply returned (apply took %s)", time.Since(applyDone).Round(time.Millisecond), applyDone.Sub(applied).Round(time.Millisecond))
	getAll(t, c, "http://web/", "v2 ", "after the change through a surviving replica")

	wait()
	t.Logf("load: %d requests ok, %d failed", res.ok.Load(), res.failed.Load())
	if n := res.failed.Load(); n != 0 {
		t.Fatalf("%d requests failed across the failover: %v", n, res.errs)
	}
	if res.ok.Load() < 20*400 {
		t.Errorf("only %d requests in ~22s; the load was meant to be ~500/s", res.ok.Load())
	}
	if !strings.Contains(client.proc.out.String(), "watching control-plane replica") {
		t.Error("the proxy did not log the replica it attached to")
	}
}

// TestHALeaderLoss: the leader is killed with SIGKILL; another replica is
// leader within the election TTL (its /metrics say so), and lease expiry
// still works: a web proxy killed afterwards leaves discovery.
func TestHALeaderLoss(t *testing.T) {
	m := startHAMesh(t)
	m.replicas[0].apply(t, services+"---"+splitRoute(100, 0))
	var leader *controlPlane
	eventually(t, 10*time.Second, "one leader", func() bool {
		n := 0
		for _, cp := range m.replicas {
			if isLeader(cp) {
				n, leader = n+1, cp
			}
		}
		return n == 1
	})
	web := m.proxy(t, proxyConfig{service: "web", app: appServer(t, "v1", nil), labels: "version=v1"})
	client := m.proxy(t, proxyConfig{service: "client", upstreams: []string{"web"}})
	getAll(t, client.client(), "http://web/", "v1 ", "before the leader is killed")

	leader.kill(t)
	killed := time.Now()
	alive := m.others(leader)
	var next *controlPlane
	eventually(t, haLeaderTTL+2*time.Second, "another leader", func() bool {
		for _, cp := range alive {
			if isLeader(cp) {
				next = cp
				return true
			}
		}
		return false
	})
	t.Logf("new leader %s %s after %s was killed (TTL %s)", m.idOf(next), time.Since(killed).Round(time.Millisecond), m.idOf(leader), haLeaderTTL)
	if out, err := next.cli(t, "check"); !strings.Contains(out, "2 replicas,") {
		t.Errorf("check through the new leader does not list 2 replicas: %v\n%s", err, out)
	}

	// The web proxy dies; its lease lapses (heartbeat 1s: within ~3s) and
	// it leaves the client's config.
	_ = syscall.Kill(-web.proc.cmd.Process.Pid, syscall.SIGKILL)
	<-web.proc.done
	gone := time.Now()
	eventually(t, 10*time.Second, "the killed proxy's endpoint to leave discovery", func() bool {
		return client.endpointCount(t, "web") == 0
	})
	t.Logf("killed proxy's endpoint left discovery %s after it died", time.Since(gone).Round(time.Millisecond))
	eventually(t, 5*time.Second, "the killed proxy to leave proxy-status", func() bool {
		_, ok := statusOfService(proxyStatus(t, alive[0]), "web")
		return !ok
	})
}
