package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/textproto"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// outsideServer serves h on 127.0.0.2 (all of 127/8 is loopback on Linux),
// else 127.0.0.1: a stand-in for the internet, no mesh name.
func outsideServer(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		l, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// curlVia runs curl as an app with http_proxy/HTTP_PROXY set to the proxy's
// outbound port (curl reads the lower-case one for http URLs) and returns
// the status and the X-Trellis-Error header and body.
func curlVia(t *testing.T, s *sidecar, url string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "curl", "-s", "-i", "--max-time", "15", url)
	cmd.Env = append(cmd.Environ(), "http_proxy=http://"+s.outbound, "HTTP_PROXY=http://"+s.outbound, "no_proxy=", "NO_PROXY=")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("curl %s: %v\n%s", url, err, out)
	}
	br := bufio.NewReader(strings.NewReader(string(out)))
	tp := textproto.NewReader(br)
	line, err := tp.ReadLine()
	if err != nil {
		t.Fatalf("curl %s: no status line in %q", url, out)
	}
	code, _ := strconv.Atoi(strings.Fields(line + " 0 0")[1])
	hdr, _ := tp.ReadMIMEHeader()
	rest := make([]byte, br.Buffered())
	_, _ = br.Read(rest)
	return code, hdr.Get("X-Trellis-Error"), string(rest)
}

// TestEgressEndToEnd: real control plane, real proxy, and curl as the app
// with HTTP_PROXY set. (a) A plain HTTP server outside the mesh answers
// under the default ALLOW_ANY, and is refused (502 EG, counted) once a
// MeshConfig says REGISTRY_ONLY; example.com is never taken for service
// example in namespace com. (b) An ExternalService with a fixed endpoint
// is reached by its host name under both policies, with its BackendPolicy's
// retry: the server fails the first call and the retry is visible.
func TestEgressEndToEnd(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("needs curl (Debian: curl)")
	}
	cp := startControl(t, "")
	internet := outsideServer(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "internet %s", r.URL.Path)
	})
	var calls atomic.Int32
	payments := outsideServer(t, func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "paid via %s", r.Host)
	})
	cp.apply(t, `
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: web}
spec:
  ports: [{name: http, port: 80}]
`)
	web := cp.proxy(t, proxyConfig{service: "web"})

	code, flag, body := curlVia(t, web, "http://"+internet+"/hello")
	if code != 200 || body != "internet /hello" {
		t.Fatalf("ALLOW_ANY: %d %s %q, want the outside server's answer", code, flag, body)
	}
	if n := metricValue(t, web, `trellis_proxy_egress_requests_total{decision="passthrough",policy="allow_any",protocol="http"}`); n != 1 {
		t.Errorf("passthrough counted %d, want 1", n)
	}

	cp.applyWait(t, `
apiVersion: trellis.dev/v1alpha1
kind: ExternalService
metadata: {name: payments}
spec:
  hosts: [api.payments.test]
  ports: [{number: 80, protocol: http}]
  endpoints: [{address: "`+payments+`"}]
---
apiVersion: trellis.dev/v1alpha1
kind: BackendPolicy
metadata: {name: payments}
spec:
  targetRefs: [{kind: ExternalService, name: payments}]
  retry: {attempts: 2, statusCodes: [503]}
`)
	code, flag, body = curlVia(t, web, "http://api.payments.test/pay")
	if code != 200 || body != "paid via api.payments.test" {
		t.Fatalf("ExternalService: %d %s %q, want 200 after one retry", code, flag, body)
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("payments saw %d calls, want 2 (the first failed, the retry answered)", n)
	}
	if n := metricValue(t, web, `trellis_proxy_retries_total{destination_service="payments.default",result="sent"}`); n != 1 {
		t.Errorf("retries counted %d, want 1", n)
	}

	cp.applyWait(t, `
apiVersion: trellis.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh, namespace: trellis-system}
spec:
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
`)
	code, flag, body = curlVia(t, web, "http://"+internet+"/hello")
	if code != http.StatusBadGateway || flag != "EG" || !strings.Contains(body, "REGISTRY_ONLY") {
		t.Fatalf("REGISTRY_ONLY: %d %s %q, want 502 EG", code, flag, body)
	}
	code, flag, _ = curlVia(t, web, "http://example.com/")
	if code != http.StatusBadGateway || flag != "EG" {
		t.Fatalf("example.com under REGISTRY_ONLY: %d %s, want 502 EG (not 503: it is no mesh service)", code, flag)
	}
	if n := web.endpointCount(t, "example"); n != 0 || strings.Contains(fmt.Sprint(web.config(t)["services"]), "namespace:com") {
		t.Errorf("the proxy subscribed to example.com as a mesh service: %v", web.config(t)["services"])
	}
	if n := metricValue(t, web, `trellis_proxy_egress_requests_total{decision="refused",policy="registry_only",protocol="http"}`); n != 2 {
		t.Errorf("refusals counted %d, want 2", n)
	}
	code, _, body = curlVia(t, web, "http://api.payments.test/again")
	if code != 200 || body != "paid via api.payments.test" {
		t.Fatalf("ExternalService under REGISTRY_ONLY: %d %q, want 200", code, body)
	}
}
