package cli

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"trellis.dev/trellis/internal/control"
	"trellis.dev/trellis/internal/push"
	"trellis.dev/trellis/internal/testpki"
)

// fakeAdmin is the admin API's apply and proxies long-poll, on a real TLS
// listener the CLI finds through a data dir, as it finds a control plane.
type fakeAdmin struct {
	t   *testing.T
	dir string
	rev int64
	// proxies answers one /v1/proxies long-poll for minRevision after
	// waiting at most wait; nil answers with no proxies.
	proxies func(minRev int64, wait time.Duration) []push.ProxyStatus

	mu    sync.Mutex
	polls []string // the query of each /v1/proxies request
}

func startFakeAdmin(t *testing.T, rev int64) *fakeAdmin {
	t.Helper()
	f := &fakeAdmin{t: t, dir: t.TempDir(), rev: rev}
	ca := testpki.NewCA(t)
	cert := ca.TLSCertificate(t, "", func(c *x509.Certificate) { c.DNSNames = []string{"localhost"} })
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/apply", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{"revision": f.rev, "results": []map[string]string{{"ref": "HTTPRoute default/split", "action": "configured"}}})
	})
	mux.HandleFunc("GET /v1/proxies", f.serveProxies)
	srv := httptest.NewUnstartedServer(mux)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)

	addrs, _ := json.Marshal(control.Addrs{GRPC: "127.0.0.1:1", Admin: srv.Listener.Addr().String()})
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
	for name, data := range map[string][]byte{control.AddrsFile: addrs, control.AdminTokenFile: []byte("tok\n"), control.CAFile: caPEM, "route.yaml": []byte("kind: HTTPRoute\n")} {
		if err := os.WriteFile(filepath.Join(f.dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func (f *fakeAdmin) serveProxies(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f.mu.Lock()
	f.polls = append(f.polls, r.URL.RawQuery)
	f.mu.Unlock()
	minRev, err1 := strconv.ParseInt(q.Get("minRevision"), 10, 64)
	wait, err2 := time.ParseDuration(q.Get("wait"))
	if err1 != nil || err2 != nil || wait <= 0 {
		http.Error(w, `{"error":"bad long-poll"}`, http.StatusBadRequest)
		return
	}
	list := []push.ProxyStatus{}
	if f.proxies != nil {
		list = f.proxies(minRev, wait)
	}
	json.NewEncoder(w).Encode(list)
}

func (f *fakeAdmin) run(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = Main(append([]string{"--data-dir", f.dir}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func proxyAt(id string, rev int64, state, errText string) push.ProxyStatus {
	return push.ProxyStatus{NodeID: id, Service: strings.Split(id, "-")[0], Namespace: "default", State: state, Revision: rev, SentRevision: rev, Error: errText}
}

func TestApplyWaitAllInSync(t *testing.T) {
	f := startFakeAdmin(t, 42)
	var calls atomic.Int32
	f.proxies = func(minRev int64, wait time.Duration) []push.ProxyStatus {
		calls.Add(1)
		if minRev != 42 || wait <= 0 || wait > 30*time.Second {
			t.Errorf("long-poll for revision %d, wait %s; want 42 and at most --timeout", minRev, wait)
		}
		// The server answers once settled: orders ACKed 42, payments is
		// current at 42 without a push.
		return []push.ProxyStatus{proxyAt("orders-1", 42, push.StateSynced, ""), proxyAt("payments-1", 43, push.StateSynced, "")}
	}
	code, out, errOut := f.run("apply", "-f", filepath.Join(f.dir, "route.yaml"), "--wait")
	if code != 0 || !strings.Contains(out, "HTTPRoute default/split configured") || !strings.Contains(out, "revision 42 applied; all 2 connected proxies run it") {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d long-polls, want 1 (the answer was settled)", n)
	}
}

func TestApplyWaitNamesTheProxyThatRefused(t *testing.T) {
	f := startFakeAdmin(t, 42)
	nacked := proxyAt("orders-1", 41, push.StateNacked, "route split: rules[0]: bad regex")
	nacked.SentRevision = 42
	f.proxies = func(int64, time.Duration) []push.ProxyStatus {
		return []push.ProxyStatus{nacked, proxyAt("payments-1", 42, push.StateSynced, "")}
	}
	start := time.Now()
	code, out, errOut := f.run("apply", "-f", filepath.Join(f.dir, "route.yaml"), "--wait", "--timeout", "20s")
	if code == 0 {
		t.Fatalf("exit 0 with a proxy that refused\nstdout:\n%s", out)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatal("waited for the timeout though a proxy had refused the revision")
	}
	for _, want := range []string{"revision 42 is applied, but 1 of 2 proxies did not run it (refused: NACKED)", "orders-1", "orders.default", "41", "bad regex", "Fix what they refused"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
	if strings.Contains(errOut, "payments-1") {
		t.Errorf("stderr names payments-1, which runs revision 42:\n%s", errOut)
	}
}

func TestApplyWaitTimesOut(t *testing.T) {
	f := startFakeAdmin(t, 42)
	f.proxies = func(_ int64, wait time.Duration) []push.ProxyStatus {
		time.Sleep(wait) // not settled: the server holds the poll to the end
		stale := proxyAt("orders-1", 41, push.StateStale, "")
		stale.SentRevision = 42
		return []push.ProxyStatus{stale, proxyAt("payments-1", 42, push.StateSynced, "")}
	}
	start := time.Now()
	code, _, errOut := f.run("apply", "-f", filepath.Join(f.dir, "route.yaml"), "--wait", "--timeout", "300ms")
	if code == 0 || !strings.Contains(errOut, "1 of 2 proxies did not run it within 300ms") || !strings.Contains(errOut, "orders-1") || !strings.Contains(errOut, "STALE") {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > 5*time.Second {
		t.Fatalf("returned after %s; want about --timeout (300ms)", d)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.polls) != 1 || !strings.Contains(f.polls[0], "minRevision=42") || !strings.Contains(f.polls[0], "wait=300ms") {
		t.Fatalf("polls %q; want one, for revision 42, waiting 300ms", f.polls)
	}
}

func TestApplyWaitNoProxies(t *testing.T) {
	f := startFakeAdmin(t, 7)
	code, out, errOut := f.run("apply", "-f", filepath.Join(f.dir, "route.yaml"), "--wait")
	if code != 0 || !strings.Contains(out, "revision 7 applied; no proxies connected") {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
}

func TestApplyWaitFlags(t *testing.T) {
	f := startFakeAdmin(t, 42)
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--wait", "--dry-run"}, "--wait cannot be used with --dry-run"},
		{[]string{"--timeout", "5s"}, "--timeout only applies with --wait"},
		{[]string{"--wait", "--timeout", "0s"}, "--timeout 0s: want a positive duration"},
	} {
		code, _, errOut := f.run(append([]string{"apply", "-f", filepath.Join(f.dir, "route.yaml")}, tt.args...)...)
		if code == 0 || !strings.Contains(errOut, tt.want) {
			t.Errorf("apply %v: exit %d, stderr %q; want %q", tt.args, code, errOut, tt.want)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.polls) != 0 {
		t.Errorf("refused flags still polled: %q", f.polls)
	}
}
