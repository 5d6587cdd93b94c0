package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestRoutingFeaturesThroughProxies applies one HTTPRoute using every
// route-level feature, with a FaultInjection, through the real CLI, and
// checks each through real proxy processes: query-param match, header
// modifiers, URL rewrite, redirect, mirror, timeout and fault (abort,
// then changed to a delay, which the route follows).
func TestRoutingFeaturesThroughProxies(t *testing.T) {
	cp := startControl(t, "")
	var mirrored atomic.Int32
	cp.apply(t, services+`---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: shadow}
spec:
  ports: [{name: http, port: 80, protocol: http}]
---
apiVersion: trellis.dev/v1alpha1
kind: FaultInjection
metadata: {name: web-fault}
spec:
  abort: {httpStatus: 418, percentage: 100}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-features}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules:
  - matches: [{queryParams: [{name: v, value: "2"}]}]
    backendRefs: [{name: web-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}}
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-env, value: e2e}]}}
    - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-served-by, value: trellis}]}}
    backendRefs: [{name: web-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /moved}}]
    filters:
    - {type: RequestRedirect, requestRedirect: {scheme: https, hostname: web.example, statusCode: 301}}
  - matches: [{path: {type: PathPrefix, value: /mirrored}}]
    filters:
    - {type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 80}}}
    backendRefs: [{name: web-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /slow}}]
    timeouts: {request: 300ms}
    backendRefs: [{name: web-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /fault}}]
    filters:
    - {type: ExtensionRef, extensionRef: {group: trellis.dev, kind: FaultInjection, name: web-fault}}
    backendRefs: [{name: web-v1, port: 80}]
  - backendRefs: [{name: web-v1, port: 80}]
`)
	app := func(name string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Path, "/slow") {
				time.Sleep(2 * time.Second)
			}
			fmt.Fprintf(w, "%s %s env=%s", name, r.URL.RequestURI(), r.Header.Get("X-Env"))
		}
	}
	cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "v1", app("v1")), labels: "version=v1"})
	cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "v2", app("v2")), labels: "version=v2"})
	cp.proxy(t, proxyConfig{service: "shadow", app: appServer(t, "shadow", func(w http.ResponseWriter, r *http.Request) {
		mirrored.Add(1)
		time.Sleep(time.Second) // a slow mirror: the caller must not wait for it
	})})
	client := cp.proxy(t, proxyConfig{service: "client", upstreams: []string{"web"}})
	c := client.client()
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	// Every backend's endpoints must be known before the checks.
	eventually(t, 10*time.Second, "endpoints of web-v1, web-v2 and shadow", func() bool {
		_, _, _ = get(c, "http://web/") // subscribes
		return client.endpointCount(t, "web-v1") == 1 && client.endpointCount(t, "web-v2") == 1 && client.endpointCount(t, "shadow") == 1
	})

	check := func(url string, wantCode int, wantBody string) *http.Response {
		t.Helper()
		resp, err := c.Get(url)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != wantCode || !strings.Contains(string(b), wantBody) {
			t.Errorf("GET %s: %d %q, want %d containing %q", url, resp.StatusCode, b, wantCode, wantBody)
		}
		return resp
	}
	check("http://web/x?v=2", 200, "v2 /x?v=2")
	check("http://web/x?v=3", 200, "v1 /x?v=3")
	resp := check("http://web/old/items?id=1", 200, "v1 /new/items?id=1 env=e2e")
	if resp.Header.Get("X-Served-By") != "trellis" {
		t.Errorf("response header modifier: X-Served-By %q", resp.Header.Get("X-Served-By"))
	}
	resp = check("http://web/moved/a", 301, "")
	if loc := resp.Header.Get("Location"); loc != "https://web.example/moved/a" {
		t.Errorf("redirect Location %q", loc)
	}
	start := time.Now()
	for range 3 {
		check("http://web/mirrored", 200, "v1 /mirrored")
	}
	if d := time.Since(start); d > 900*time.Millisecond {
		t.Errorf("3 mirrored requests took %v: the slow mirror delayed them", d)
	}
	eventually(t, 5*time.Second, "copies at the mirror", func() bool { return mirrored.Load() == 3 })
	resp = check("http://web/slow", 504, "timeout")
	if f := resp.Header.Get("X-Trellis-Error"); f != "UT" {
		t.Errorf("timeout flag %q", f)
	}
	resp = check("http://web/fault", 418, "fault injected")
	if f := resp.Header.Get("X-Trellis-Error"); f != "FI" {
		t.Errorf("fault flag %q", f)
	}

	// Change the FaultInjection alone: the route follows it.
	cp.apply(t, `
apiVersion: trellis.dev/v1alpha1
kind: FaultInjection
metadata: {name: web-fault}
spec:
  delay: {fixedDelay: 400ms}
`)
	eventually(t, 10*time.Second, "the changed fault to reach the client", func() bool {
		code, _, _ := get(c, "http://web/fault")
		return code == 200
	})
	start = time.Now()
	check("http://web/fault", 200, "v1 /fault")
	if d := time.Since(start); d < 400*time.Millisecond {
		t.Errorf("delayed request took %v, want ≥ 400ms", d)
	}
}

// TestConflictingRoutesRefused: a second route with an identical match on
// the same parent is refused at apply, naming both, and nothing changes.
func TestConflictingRoutesRefused(t *testing.T) {
	cp := startControl(t, "")
	cp.apply(t, services+"---"+splitRoute(100, 0))
	route := `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-other}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - backendRefs: [{name: web-v2, port: 80}]
`
	f := filepath.Join(t.TempDir(), "other.yaml")
	if err := os.WriteFile(f, []byte(route), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := cp.cli(t, "apply", "-f", f)
	if err == nil {
		t.Fatalf("conflicting route applied:\n%s", out)
	}
	for _, want := range []string{"HTTPRoute default/web-other", "conflicts with HTTPRoute default/web-split", "identical match"} {
		if !strings.Contains(out, want) {
			t.Errorf("refusal does not say %q:\n%s", want, out)
		}
	}
	if out, err := cp.cli(t, "get", "httproute", "web-other"); err == nil {
		t.Fatalf("refused route exists:\n%s", out)
	}
}
