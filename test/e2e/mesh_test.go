package e2e

import (
	"crypto/tls"
	"crypto/x509"
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

	"trellis.dev/trellis/internal/testpki"
)

const services = `
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: web}
spec:
  ports: [{name: http, port: 80, protocol: http}]
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: web-v1}
spec:
  selector: {app: web, version: v1}
  ports: [{name: http, port: 80, protocol: http}]
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: web-v2}
spec:
  selector: {app: web, version: v2}
  ports: [{name: http, port: 80, protocol: http}]
`

func splitRoute(v1, v2 int) string {
	return fmt.Sprintf(`
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-split}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules:
  - backendRefs:
    - {name: web-v1, port: 80, weight: %d}
    - {name: web-v2, port: 80, weight: %d}
`, v1, v2)
}

// TestRequestThroughTwoProxies is the basic path: app → outbound → mTLS →
// inbound → app, by every host alias and by a per-upstream port.
func TestRequestThroughTwoProxies(t *testing.T) {
	cp := startControl(t, "")
	cp.apply(t, services)
	var gotID atomic.Value
	app := appServer(t, "web", func(w http.ResponseWriter, r *http.Request) {
		gotID.Store(r.Header.Get("X-Trellis-Client-Id"))
		fmt.Fprintf(w, "web %s", r.URL.Path)
	})
	cp.proxy(t, proxyConfig{service: "web", app: app, labels: "version=v1"})
	client := cp.proxy(t, proxyConfig{service: "client", upstreams: []string{"web"}})

	c := client.client()
	for _, host := range []string{"web", "web.default", "web.default.svc.trellis.local", "web:80"} {
		code, body, err := get(c, "http://"+host+"/hello")
		if err != nil || code != 200 || body != "web /hello" {
			t.Fatalf("GET http://%s/hello = %d %q %v; want 200 \"web /hello\"", host, code, body, err)
		}
	}
	if id, _ := gotID.Load().(string); id != "spiffe://trellis.local/ns/default/sa/client" {
		t.Errorf("app saw client identity %q; want the client's SPIFFE ID", id)
	}
	code, body, err := get(http.DefaultClient, "http://"+client.upstreams["web"]+"/direct")
	if err != nil || code != 200 || body != "web /direct" {
		t.Fatalf("per-upstream port: %d %q %v", code, body, err)
	}
	code, _, err = get(c, "http://nosuchservice/")
	if err != nil || code < 400 {
		t.Fatalf("unknown service: got %d %v; want a 4xx/5xx answer", code, err)
	}
}

// TestInboundRejectsPlaintextAndForeignCA: the inbound port serves only
// mTLS clients with a certificate from the mesh CA.
func TestInboundRejectsPlaintextAndForeignCA(t *testing.T) {
	cp := startControl(t, "")
	app := appServer(t, "web", nil)
	web := cp.proxy(t, proxyConfig{service: "web", app: app})

	// Plaintext HTTP.
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + web.inbound + "/")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("plaintext client was served by the inbound port")
		}
	}

	// TLS with a certificate from another CA (even with a mesh-looking SPIFFE ID).
	cert := foreignCert(t)
	tr := &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true}}
	resp, err = (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("https://" + web.inbound + "/")
	if err == nil {
		resp.Body.Close()
		t.Fatalf("client with a foreign CA got an answer: %d", resp.StatusCode)
	}

	// TLS with no client certificate at all.
	tr = &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	resp, err = (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("https://" + web.inbound + "/")
	if err == nil {
		resp.Body.Close()
		t.Fatalf("client without a certificate got an answer: %d", resp.StatusCode)
	}
}

// foreignCert is a client certificate for a mesh identity from a CA the mesh
// does not trust, sent with that CA's root.
func foreignCert(t *testing.T) tls.Certificate {
	t.Helper()
	ca := testpki.NewCA(t, func(c *x509.Certificate) { c.Subject.CommonName = "evil root" })
	leaf, key := ca.Leaf(t, "spiffe://trellis.local/ns/default/sa/client", func(c *x509.Certificate) {
		c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	})
	return tls.Certificate{Certificate: [][]byte{leaf.Raw, ca.Cert.Raw}, PrivateKey: key}
}

// TestEndpointRemovedAfterKill: kill -9 a proxy; within 3 heartbeats its
// endpoint leaves the other proxies' view and traffic keeps succeeding.
func TestEndpointRemovedAfterKill(t *testing.T) {
	cp := startControl(t, "")
	cp.apply(t, services)
	// Heartbeat 2s: the killed endpoint must be gone from every view within 3 × 2s.
	cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "a", nil), labels: "version=v1", heartbeat: "2s"})
	b := cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "b", nil), labels: "version=v1", heartbeat: "2s"})
	client := cp.proxy(t, proxyConfig{service: "client", upstreams: []string{"web"}})
	eventually(t, 5*time.Second, "both web endpoints in the client's config", func() bool {
		return client.endpointCount(t, "web") == 2
	})

	killed := time.Now()
	if err := b.proc.cmd.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	<-b.proc.done
	// Until the registry notices, b is still in the client's config: its
	// connection failures must cost a GET nothing (sent to a instead).
	c := client.client()
	c.Transport.(*http.Transport).DisableKeepAlives = true
	getAll(t, c, "http://web/", "a ", "right after kill -9")
	if client.endpointCount(t, "web") != 2 {
		t.Log("the killed endpoint left before the requests above ran; they did not test the retry")
	}
	eventually(t, 6*time.Second, "killed endpoint to leave the client's config", func() bool {
		return client.endpointCount(t, "web") == 1
	})
	t.Logf("endpoint removed %s after kill -9 (heartbeat 2s)", time.Since(killed).Round(10*time.Millisecond))
	getAll(t, c, "http://web/", "a ", "after removal")
}

// TestRouteChangeUnderLoad: weights move while traffic flows; no request fails
// and the split follows the route.
func TestRouteChangeUnderLoad(t *testing.T) {
	cp := startControl(t, "")
	cp.apply(t, services+"---"+splitRoute(100, 0))
	cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "v1", nil), labels: "version=v1"})
	cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "v2", nil), labels: "version=v2"})
	client := cp.proxy(t, proxyConfig{service: "client", upstreams: []string{"web"}})
	c := client.client()

	var mu sync.Mutex
	counts := map[string]int{}
	var failures atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Bounded by count and by the stop channel (about 12 s).
			for n := 0; n < 200000; n++ {
				select {
				case <-stop:
					return
				default:
				}
				code, body, err := get(c, "http://web/")
				if err != nil || code != 200 {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("%d %q %v", code, body, err))
					continue
				}
				mu.Lock()
				counts[strings.Fields(body)[0]]++
				mu.Unlock()
			}
		}()
	}
	snapshot := func() map[string]int {
		mu.Lock()
		defer mu.Unlock()
		m := map[string]int{}
		for k, v := range counts {
			m[k] = v
			counts[k] = 0
		}
		return m
	}
	time.Sleep(time.Second)
	for i, w := range [][2]int{{0, 100}, {50, 50}, {100, 0}, {0, 100}} {
		cp.apply(t, splitRoute(w[0], w[1]))
		time.Sleep(1500 * time.Millisecond) // let the change land, then measure a window
		snapshot()
		time.Sleep(time.Second)
		got := snapshot()
		total := got["v1"] + got["v2"]
		if total == 0 {
			t.Fatalf("step %d: no traffic", i)
		}
		share := float64(got["v1"]) / float64(total)
		want := float64(w[0]) / 100
		if share < want-0.15 || share > want+0.15 {
			t.Errorf("step %d weights %v: v1 share %.2f of %d requests", i, w, share, total)
		}
	}
	close(stop)
	wg.Wait()
	if n := failures.Load(); n > 0 {
		t.Fatalf("%d requests failed during route changes; first: %v", n, firstErr.Load())
	}
}

// TestProxiesSurviveControlPlaneRestart: proxies keep serving while the
// control plane is down, and re-sync when it returns.
func TestProxiesSurviveControlPlaneRestart(t *testing.T) {
	cp := startControl(t, "")
	cp.apply(t, services+"---"+splitRoute(100, 0))
	cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "v1", nil), labels: "version=v1"})
	cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "v2", nil), labels: "version=v2"})
	client := cp.proxy(t, proxyConfig{service: "client", upstreams: []string{"web"}})
	c := client.client()

	cp.kill(t)
	getAll(t, c, "http://web/", "v1 ", "with control plane down")
	cp.start(t)
	cp.apply(t, splitRoute(0, 100))
	eventually(t, 15*time.Second, "route change after control-plane restart", func() bool {
		_, body, err := get(c, "http://web/")
		return err == nil && strings.HasPrefix(body, "v2 ")
	})
	getAll(t, c, "http://web/", "v2 ", "after re-sync")
}

// TestCommandExitCode: `trellis proxy -- CMD` starts CMD once ready and exits
// with its exit code.
func TestCommandExitCode(t *testing.T) {
	cp := startControl(t, "")
	marker := filepath.Join(t.TempDir(), "started")
	for _, want := range []int{0, 7} {
		p := cp.proxy(t, proxyConfig{service: "job", noWait: true,
			command: []string{"sh", "-c", fmt.Sprintf("touch %s; exit %d", marker, want)}})
		if got := p.proc.wait(t, 20*time.Second); got != want {
			t.Fatalf("proxy exit code %d; want the command's %d\n%s", got, want, p.proc.out.String())
		}
		if _, err := os.Stat(marker); err != nil {
			t.Fatalf("command did not run: %v", err)
		}
		os.Remove(marker)
	}
	// The app must not start before the proxy is ready: with the control
	// plane down, the command must not run.
	cp.kill(t)
	p := cp.proxy(t, proxyConfig{service: "job", noWait: true, command: []string{"touch", marker}})
	time.Sleep(2 * time.Second)
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("command started before the proxy was ready")
	}
	// Once the control plane is back, the waiting proxy gets its
	// certificate and config, starts the command and exits with its code.
	cp.start(t)
	if got := p.proc.wait(t, 30*time.Second); got != 0 {
		t.Fatalf("proxy started before its control plane exited %d\n%s", got, p.proc.out.String())
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("command never ran after the control plane came up: %v", err)
	}
}

// TestInvalidResourceRefused: an invalid file is refused whole, the error
// names file, field and reason, and nothing changes.
func TestInvalidResourceRefused(t *testing.T) {
	cp := startControl(t, "")
	cp.apply(t, services+"---"+splitRoute(90, 10))
	before, err := cp.cli(t, "get", "httproute", "web-split", "-o", "json")
	if err != nil {
		t.Fatalf("get: %v\n%s", err, before)
	}
	dir := t.TempDir()
	// A valid change to web-split plus an invalid Service in another file.
	os.WriteFile(filepath.Join(dir, "a-route.yaml"), []byte(splitRoute(10, 90)), 0o644)
	os.WriteFile(filepath.Join(dir, "b-bad.yaml"), []byte(`
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: broken}
spec:
  ports: [{name: http, port: 80, protocol: carrier-pigeon}]
`), 0o644)
	out, err := cp.cli(t, "apply", "-f", dir)
	if err == nil {
		t.Fatalf("invalid apply succeeded:\n%s", out)
	}
	for _, want := range []string{"b-bad.yaml", "spec.ports[0].protocol", "carrier-pigeon"} {
		if !strings.Contains(out, want) {
			t.Errorf("error does not mention %q:\n%s", want, out)
		}
	}
	after, err := cp.cli(t, "get", "httproute", "web-split", "-o", "json")
	if err != nil || after != before {
		t.Fatalf("route changed after a refused apply:\nbefore %s\nafter %s", before, after)
	}
	if out, err := cp.cli(t, "get", "service", "broken"); err == nil {
		t.Fatalf("refused Service exists:\n%s", out)
	}
	// Strict decode: an unknown field is refused too.
	os.WriteFile(filepath.Join(dir, "b-bad.yaml"), []byte(`
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: broken}
spec:
  portz: []
`), 0o644)
	out, err = cp.cli(t, "apply", "-f", filepath.Join(dir, "b-bad.yaml"))
	if err == nil || !strings.Contains(out, "portz") {
		t.Fatalf("unknown field not refused by name: %v\n%s", err, out)
	}
}

func TestProxyStatus(t *testing.T) {
	cp := startControl(t, "")
	cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "web", nil)})
	eventually(t, 5*time.Second, "proxy-status to show web SYNCED", func() bool {
		out, err := cp.cli(t, "proxy-status")
		return err == nil && strings.Contains(out, "web.default") && strings.Contains(out, "SYNCED")
	})
}

// TestSIGTERMDrains: on SIGTERM a proxy stops accepting, lets an in-flight
// request finish, and exits 0.
func TestSIGTERMDrains(t *testing.T) {
	cp := startControl(t, "")
	started := make(chan struct{}, 1)
	app := appServer(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		time.Sleep(2 * time.Second)
		fmt.Fprint(w, "finished")
	})
	web := cp.proxy(t, proxyConfig{service: "web", app: app})
	client := cp.proxy(t, proxyConfig{service: "client", upstreams: []string{"web"}})

	type result struct {
		code int
		body string
		err  error
	}
	res := make(chan result, 1)
	go func() {
		code, body, err := get(http.DefaultClient, "http://"+client.upstreams["web"]+"/slow")
		res <- result{code, body, err}
	}()
	<-started
	if err := web.proc.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// While draining, the proxy reports not ready.
	eventually(t, 2*time.Second, "draining proxy to report not ready", func() bool {
		resp, err := http.Get("http://" + web.admin + "/ready")
		if err != nil {
			return true // already closed
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	r := <-res
	if r.err != nil || r.code != 200 || r.body != "finished" {
		t.Fatalf("in-flight request during drain = %d %q %v; want 200 finished", r.code, r.body, r.err)
	}
	if code := web.proc.wait(t, 15*time.Second); code != 0 {
		t.Fatalf("proxy exited %d after SIGTERM; want 0", code)
	}
}

// TestCertificateRenewal: with 6 s certificates, proxies renew at 45-55 %
// of the lifetime, each certificate at its own jittered point, while ~200
// requests a second keep flowing through the pair without one failing;
// proxy-status follows every renewal (more than two each).
func TestCertificateRenewal(t *testing.T) {
	cp := startControl(t, "", "--workload-cert-ttl", "6s")
	cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "web", nil)})
	client := cp.proxy(t, proxyConfig{service: "client", upstreams: []string{"web"}})
	expiry := func() map[string]string {
		out, err := cp.cli(t, "proxy-status", "-o", "json")
		if err != nil {
			t.Fatalf("proxy-status: %v\n%s", err, out)
		}
		var list []map[string]any
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			t.Fatalf("proxy-status json: %v\n%s", err, out)
		}
		m := map[string]string{}
		for _, p := range list {
			m[fmt.Sprint(p["service"])] = fmt.Sprint(p["certExpiry"])
		}
		return m
	}
	eventually(t, 5*time.Second, "proxy-status to list both proxies", func() bool {
		return len(expiry()) == 2
	})
	l := startLoad(client.client(), "http://web/", "web ", 200, 8)
	seen := map[string]map[string]bool{"web": {}, "client": {}}
	for deadline := time.Now().Add(11 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		for svc, exp := range expiry() {
			if seen[svc] != nil {
				seen[svc][exp] = true
			}
		}
	}
	n := l.end(t, "across renewals")
	for svc, exps := range seen {
		// The first certificate plus at least two renewals in 11 s of 6 s
		// certificates renewed at ~3 s.
		if len(exps) < 3 {
			t.Errorf("%s: %d distinct certificate expiries in 11 s of 6 s certificates, want >= 3 (2 renewals)", svc, len(exps))
		}
	}
	t.Logf("%d requests across renewals at ~200/s, 0 failed; expiries seen %v", n, seen)
}

// TestSignalForwarding: in `-- CMD` mode a SIGTERM to the proxy reaches the
// app, and the proxy exits with the app's code.
func TestSignalForwarding(t *testing.T) {
	cp := startControl(t, "")
	ready := filepath.Join(t.TempDir(), "ready")
	p := cp.proxy(t, proxyConfig{service: "job", noWait: true, command: []string{"sh", "-c",
		fmt.Sprintf("trap 'exit 42' TERM; touch %s; while true; do sleep 0.1; done", ready)}})
	eventually(t, 20*time.Second, "app to start", func() bool {
		_, err := os.Stat(ready)
		return err == nil
	})
	if err := p.proc.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.proc.wait(t, 15*time.Second); code != 42 {
		t.Fatalf("proxy exit code %d; want 42 from the app's TERM trap\n%s", code, p.proc.out.String())
	}
}

// TestInvalidLabelsRefused: a proxy given labels no selector could match
// says why and exits non-zero instead of registering or waiting. (The
// control plane refuses such an endpoint too: see internal/push.)
func TestInvalidLabelsRefused(t *testing.T) {
	cp := startControl(t, "")
	p := cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "web", nil), labels: "version=not a label!", noWait: true})
	if code := p.proc.wait(t, 20*time.Second); code == 0 {
		t.Fatalf("proxy with an invalid label exited 0\n%s", p.proc.out.String())
	}
	if out := p.proc.out.String(); !strings.Contains(out, "labels") {
		t.Fatalf("exit message does not name the labels:\n%s", tail(out, 20))
	}
}
