package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// applyWait applies yaml and waits until every connected proxy runs it.
func (cp *controlPlane) applyWait(t *testing.T, yaml string) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "res.yaml")
	if err := os.WriteFile(f, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := cp.cli(t, "apply", "--wait", "-f", f); err != nil {
		t.Fatalf("apply --wait: %v\n%s", err, out)
	}
}

// metric returns the value of the series line (name{labels}) on the
// proxy's /metrics, or -1.
func (s *sidecar) metric(t *testing.T, series string) string {
	t.Helper()
	resp, err := http.Get("http://" + s.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for l := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			return v
		}
	}
	return "-1"
}

// countingApp is an HTTP app that counts requests by path.
type countingApp struct {
	mu   sync.Mutex
	seen map[string]int
}

func (a *countingApp) handler(name string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.seen[r.URL.Path]++
		a.mu.Unlock()
		w.Write([]byte(name + " " + r.URL.Path))
	}
}

func (a *countingApp) count(path string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.seen[path]
}

const webService = `apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: web}
spec:
  ports: [{name: http, port: 80}]
`

// TestAuthorizationDefault: on a fresh control plane the documented
// default (allow) holds; with --default-authorization deny nothing gets in
// until an ALLOW policy says so.
func TestAuthorizationDefault(t *testing.T) {
	for _, tc := range []struct {
		name  string
		extra []string
		want  int
	}{
		{"fresh control plane allows", nil, 200},
		{"default deny", []string{"--default-authorization", "deny"}, 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cp := startControl(t, "", tc.extra...)
			cp.apply(t, webService)
			cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "web", nil)})
			client := cp.proxy(t, proxyConfig{service: "client", upstreams: []string{"web"}})
			resp, err := client.client().Get("http://web/x")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("GET web/x = %d %q, want %d", resp.StatusCode, body, tc.want)
			}
			if tc.want != 403 {
				return
			}
			if resp.Header.Get("X-Trellis-Error") != "AZ" || !strings.Contains(string(body), "denied by the mesh default") {
				t.Fatalf("denial without flag or reason: %v %q", resp.Header, body)
			}
			cp.applyWait(t, `apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: client-in}
spec:
  targetRefs: [{name: web}]
  action: ALLOW
  rules: [{from: [{identity: "spiffe://trellis.local/ns/default/sa/client"}]}]
`)
			if code, body, err := get(client.client(), "http://web/x"); err != nil || code != 200 {
				t.Fatalf("after the ALLOW policy: %d %q %v", code, body, err)
			}
		})
	}
}

const webPolicies = `apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-allow}
spec:
  targetRefs: [{name: web}]
  action: ALLOW
  rules:
  - from: [{identity: "spiffe://trellis.local/ns/default/sa/client"}]
    methods: [GET]
    paths: [{prefix: /api}]
  - from: [{namespace: jobs}]
  - from: [{identityPrefix: "spiffe://trellis.local/ns/default/sa/batch-"}]
    paths: [{exact: /batch}]
  - from: [{authenticated: true}]
    paths: [{exact: /healthz}]
  - from: [{authenticated: true}]
    paths: [{prefix: /tenant}]
    headers: [{name: X-Tenant, exact: acme}]
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-deny}
spec:
  targetRefs: [{name: web}]
  action: DENY
  rules: [{paths: [{prefix: /api/admin}]}]
`

// TestAuthorizationHTTP: allow and deny by exact identity, identity
// prefix, namespace and any authenticated caller, with method, path and
// header conditions; deny before allow; a valid chain whose SPIFFE ID the
// policy denies is refused; denied requests never reach the app and are
// counted; trellis auth check gives the same answers.
func TestAuthorizationHTTP(t *testing.T) {
	cp := startControl(t, "")
	cp.apply(t, webService+"---\n"+webPolicies)
	app := &countingApp{seen: map[string]int{}}
	web := cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "web", app.handler("web"))})
	client := cp.proxy(t, proxyConfig{service: "client", upstreams: []string{"web"}}).client()
	intruder := cp.proxy(t, proxyConfig{service: "intruder", upstreams: []string{"web"}}).client()
	batch := cp.proxy(t, proxyConfig{service: "batch-7", upstreams: []string{"web"}}).client()
	jobs := cp.proxy(t, proxyConfig{service: "cron", extra: []string{"--namespace", "jobs"}, upstreams: []string{"web.default"}}).client()

	do := func(c *http.Client, method, path string, hdr ...string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://web.default"+path, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode == 403 && resp.Header.Get("X-Trellis-Error") != "AZ" {
			t.Fatalf("%s %s: 403 without flag AZ: %q", method, path, b)
		}
		return resp.StatusCode, string(b)
	}
	for _, tc := range []struct {
		name         string
		c            *http.Client
		method, path string
		hdr          []string
		want         int
		body         string
	}{
		{"exact identity, method, path prefix", client, "GET", "/api/orders", nil, 200, "web /api/orders"},
		{"method not allowed", client, "POST", "/api/orders", nil, 403, "no rule of the ALLOW AuthorizationPolicies of web.default matches"},
		{"path not allowed", client, "GET", "/other", nil, 403, "no rule"},
		{"deny before allow", client, "GET", "/api/admin/users", nil, 403, "denied by AuthorizationPolicy default/web-deny (DENY)"},
		{"valid chain, denied SPIFFE ID", intruder, "GET", "/api/orders", nil, 403, "no rule"},
		{"any authenticated", intruder, "GET", "/healthz", nil, 200, "web /healthz"},
		{"header matches", intruder, "GET", "/tenant/1", []string{"X-Tenant", "acme"}, 200, "web /tenant/1"},
		{"header differs", intruder, "GET", "/tenant/2", []string{"X-Tenant", "evil"}, 403, "no rule"},
		{"identity prefix", batch, "GET", "/batch", nil, 200, "web /batch"},
		{"identity prefix, other path", batch, "GET", "/api/orders", nil, 403, "no rule"},
		{"namespace", jobs, "DELETE", "/anything", nil, 200, "web /anything"},
		{"namespace, still denied first", jobs, "GET", "/api/admin", nil, 403, "default/web-deny"},
		{"dot segments do not dodge the deny", client, "GET", "/api/x/../admin/users", nil, 403, "default/web-deny"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := do(tc.c, tc.method, tc.path, tc.hdr...)
			if code != tc.want || !strings.Contains(body, tc.body) {
				t.Fatalf("%s %s = %d %q, want %d %q", tc.method, tc.path, code, body, tc.want, tc.body)
			}
		})
	}
	for _, p := range []string{"/api/admin/users", "/other", "/tenant/2", "/api/admin"} {
		if n := app.count(p); n != 0 {
			t.Errorf("the app saw %d denied requests for %s", n, p)
		}
	}
	for series, want := range map[string]string{
		`trellis_proxy_authz_decisions_total{decision="deny",policy="default/web-deny"}`:   "3",
		`trellis_proxy_authz_decisions_total{decision="deny",policy="no-allow-match"}`:     "5",
		`trellis_proxy_authz_decisions_total{decision="allow",policy="default/web-allow"}`: "5",
	} {
		if got := web.metric(t, series); got != want {
			t.Errorf("%s = %s, want %s", series, got, want)
		}
	}

	// trellis auth check: the same answer, from the same code.
	out, err := cp.cli(t, "auth", "check", "--from", "spiffe://trellis.local/ns/default/sa/client", "--to", "web", "--path", "/api/admin/users")
	if err != nil || !strings.HasPrefix(out, "DENY") || !strings.Contains(out, "AuthorizationPolicy default/web-deny, rule 0") {
		t.Fatalf("auth check: %v\n%s", err, out)
	}
	out, err = cp.cli(t, "auth", "check", "--from", "spiffe://trellis.local/ns/default/sa/intruder", "--to", "web.default", "--path", "/tenant/1", "--header", "X-Tenant: acme", "-o", "json")
	var r struct {
		Decision, Policy string
		Rule             int
	}
	if err != nil || json.Unmarshal([]byte(out), &r) != nil || r.Decision != "allow" || r.Policy != "default/web-allow" || r.Rule != 4 {
		t.Fatalf("auth check -o json: %v %+v\n%s", err, r, out)
	}
}

// TestAuthorizationRevokedInFlight: an allow revoked while the client keeps
// its connections open (keep-alive to its proxy, the pooled HTTP/2
// connection between the proxies) stops the very next request once the
// push has reached the proxies.
func TestAuthorizationRevokedInFlight(t *testing.T) {
	cp := startControl(t, "")
	allow := func(id string) string {
		return `apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-allow}
spec:
  targetRefs: [{name: web}]
  action: ALLOW
  rules: [{from: [{identity: "spiffe://trellis.local/ns/default/sa/` + id + `"}]}]
`
	}
	cp.apply(t, webService+"---\n"+allow("client"))
	cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "web", nil)})
	client := cp.proxy(t, proxyConfig{service: "client", upstreams: []string{"web"}})
	c := client.client()
	var reused atomic.Int32
	send := func() int {
		t.Helper()
		trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
			if i.Reused {
				reused.Add(1)
			}
		}}
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", "http://web/x", nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for i := range 5 {
		if code := send(); code != 200 {
			t.Fatalf("request %d before revocation: %d", i, code)
		}
	}
	cp.applyWait(t, allow("someone-else"))
	if code := send(); code != 403 {
		t.Fatalf("first request after the push: %d, want 403", code)
	}
	if reused.Load() < 5 {
		t.Fatalf("the client reused its connection %d times: the test did not keep it open", reused.Load())
	}
}

// TestAuthorizationGRPCAndTCP: a gRPC method allowed and another denied
// with PERMISSION_DENIED; a TCP tunnel from a caller the policy denies is
// closed before any byte reaches the app (which never sees a connection),
// while the allowed caller's tunnel works; both counted.
func TestAuthorizationGRPCAndTCP(t *testing.T) {
	cp := startControl(t, "")
	cp.apply(t, protocolServices+`---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: greeter-allow}
spec:
  targetRefs: [{name: greeter}]
  action: ALLOW
  rules: [{from: [{authenticated: true}], grpc: [{service: grpc.health.v1.Health, method: Check}]}]
---
apiVersion: trellis.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: echo-allow}
spec:
  targetRefs: [{name: echo}]
  action: ALLOW
  rules: [{from: [{identity: "spiffe://trellis.local/ns/default/sa/client"}], ports: [7000]}]
`)
	gl := listen(t)
	srv := grpc.NewServer()
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	go srv.Serve(gl)
	t.Cleanup(srv.Stop)
	tl := listen(t)
	var accepted, bytesIn atomic.Int64
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() {
				defer c.Close()
				buf := make([]byte, 512)
				for {
					n, err := c.Read(buf)
					bytesIn.Add(int64(n))
					if n > 0 {
						c.Write(buf[:n])
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	cp.proxy(t, proxyConfig{service: "greeter", app: gl.Addr().String()})
	// Checks off: the default TCP health check's connections would count
	// as connections reaching the app.
	echo := cp.proxy(t, proxyConfig{service: "echo", app: tl.Addr().String(), extra: []string{"--health-check", "off"}})
	client := cp.proxy(t, proxyConfig{service: "client", upstreams: []string{"greeter", "echo"}})
	intruder := cp.proxy(t, proxyConfig{service: "intruder", upstreams: []string{"echo"}})

	conn, err := grpc.NewClient(client.upstreams["greeter"], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("allowed method: %v", err)
	}
	_, err = hc.List(ctx, &healthpb.HealthListRequest{})
	// A gRPC status from the proxy (trailers-only), not an HTTP 403 the
	// client library maps to a code: the message is the proxy's own.
	if status.Code(err) != codes.PermissionDenied || !strings.HasPrefix(status.Convert(err).Message(), "denied: no rule of the ALLOW AuthorizationPolicies of greeter.default") {
		t.Fatalf("denied method: %v, want PermissionDenied from the proxy", err)
	}

	// The intruder's tunnel: refused, nothing reaches the app.
	raw, err := net.DialTimeout("tcp", intruder.upstreams["echo"], 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	raw.Write([]byte("SECRET payload"))
	got, _ := io.ReadAll(raw)
	raw.Close()
	if len(got) != 0 {
		t.Fatalf("denied tunnel answered %q", got)
	}
	if a, b := accepted.Load(), bytesIn.Load(); a != 0 || b != 0 {
		t.Fatalf("denied tunnel reached the app: %d connections, %d bytes", a, b)
	}
	// The allowed caller's tunnel works.
	ok, err := net.DialTimeout("tcp", client.upstreams["echo"], 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer ok.Close()
	ok.SetDeadline(time.Now().Add(10 * time.Second))
	ok.Write([]byte("ping"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(ok, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("allowed tunnel: %q %v", buf, err)
	}
	for series, want := range map[string]string{
		`trellis_proxy_authz_decisions_total{decision="deny",policy="no-allow-match"}`:      "1",
		`trellis_proxy_authz_decisions_total{decision="allow",policy="default/echo-allow"}`: "1",
	} {
		if got := echo.metric(t, series); got != want {
			t.Errorf("echo %s = %s, want %s", series, got, want)
		}
	}
}
