package e2e

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestConcurrencyLimitEndToEnd: real processes. A ConcurrencyPolicy on api
// (limit pinned at 2) reaches api's proxy, which lets two requests through
// to its app and sheds a third with 503 CL; the proxy reports its limit and
// shed count to the control plane, and `trellis get cp api` shows them.
func TestConcurrencyLimitEndToEnd(t *testing.T) {
	cp := startControl(t, "")
	cp.apply(t, `
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: api}
spec:
  ports: [{name: http, port: 80, protocol: http}]
---
apiVersion: trellis.dev/v1alpha1
kind: ConcurrencyPolicy
metadata: {name: api}
spec:
  targetRefs: [{kind: Service, name: api}]
  adaptive: {minLimit: 2, maxLimit: 2, initialLimit: 2}
`)
	arrived, release := make(chan struct{}, 8), make(chan struct{})
	api := cp.proxy(t, proxyConfig{service: "api", app: appServer(t, "api", func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
		fmt.Fprint(w, "ok")
	})})
	client := cp.proxy(t, proxyConfig{service: "client", upstreams: []string{"api"}})
	eventually(t, 10*time.Second, "the policy in api's config and api's endpoint in the client's", func() bool {
		return strings.Contains(fmt.Sprint(api.config(t)), "concurrency") && client.endpointCount(t, "api") == 1
	})
	c := client.client()
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			if code, body, err := get(c, "http://api/slow"); err != nil || code != 200 || body != "ok" {
				t.Errorf("admitted request: %d %q %v", code, body, err)
			}
		})
	}
	for range 2 {
		<-arrived
	}
	resp, err := c.Get("http://api/over")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Trellis-Error") != "CL" {
		t.Fatalf("third request: %d %q, want 503 CL", resp.StatusCode, resp.Header.Get("X-Trellis-Error"))
	}
	close(release)
	wg.Wait()
	row := regexp.MustCompile(`(?m)^api-default-\S+\s+api\.default\s+2\s+1\s*$`)
	var out string
	eventually(t, 15*time.Second, "get cp api to show api's proxy with limit 2 and 1 shed", func() bool {
		out, _ = cp.cli(t, "get", "cp", "api")
		return row.MatchString(out)
	})
	if !strings.Contains(out, "targets api: limit 2..2") {
		t.Fatalf("get cp api:\n%s", out)
	}
}
