package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// endpointState is the STATE and REASON `trellis get endpoints` shows for
// the endpoint at inbound address addr ("" when it is not listed).
func endpointState(t *testing.T, cp *controlPlane, addr string) string {
	t.Helper()
	out, err := cp.cli(t, "get", "endpoints", "-A")
	if err != nil {
		t.Fatalf("get endpoints: %v\n%s", err, out)
	}
	for l := range strings.Lines(out) {
		f := strings.Fields(l)
		if len(f) >= 6 && f[3] == addr {
			return strings.Join(f[4:], " ")
		}
	}
	return ""
}

// readyBody is a proxy's /ready status and body.
func readyBody(s *sidecar) (int, string) {
	resp, err := http.Get("http://" + s.admin + "/ready")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// TestSlowAppGetsNoTrafficUntilItListens is the first bug: a
// replica started with `trellis proxy -- CMD` whose app listens 3 s later
// got traffic at once and answered 502 (11 of 40 in 8 s). It now
// registers unhealthy and gets none until its app passes its check, then
// its share.
func TestSlowAppGetsNoTrafficUntilItListens(t *testing.T) {
	cp := startControl(t, "")
	cp.apply(t, services)
	cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "a", nil), labels: "version=v1"})
	client := cp.proxy(t, proxyConfig{service: "client", upstreams: []string{"web"}})
	eventually(t, 5*time.Second, "a in the client's config", func() bool { return client.endpointCount(t, "web") == 1 })

	slowApp := freeAddr(t)
	started := time.Now()
	slow := cp.proxy(t, proxyConfig{service: "web", app: slowApp, labels: "version=v1", noWait: true,
		command: []string{"sh", "-c", fmt.Sprintf("sleep 3; exec %s demo-app payments --listen %s", trellisBin, slowApp)}})

	c := client.client()
	var before, fromSlow, failed int
	sawUnhealthy := ""
	for time.Since(started) < 2500*time.Millisecond {
		code, body := getBody(t, c, "http://web/healthz")
		before++
		switch {
		case code != 200:
			failed++
		case !strings.HasPrefix(body, "a "):
			fromSlow++
		}
		if sawUnhealthy == "" {
			sawUnhealthy = endpointState(t, cp, slow.inbound)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The slow replica's own proxy counts what reached it (the caller's
	// retry of its 502 UF would hide those from the client).
	reached := metricSum(t, slow, "trellis_requests_total", `reporter="destination"`)
	if failed != 0 || fromSlow != 0 || reached != 0 {
		t.Errorf("before the slow app listened: %d of %d requests failed, %d answered by it, %v reached its proxy; want none", failed, before, fromSlow, reached)
	}
	if sawUnhealthy != "UNHEALTHY connect refused" && sawUnhealthy != "UNHEALTHY no check passed yet" {
		t.Errorf("get endpoints showed the slow replica as %q; want UNHEALTHY with its reason", sawUnhealthy)
	}
	if code, body := readyBody(slow); code != 503 || !strings.HasPrefix(body, "app not healthy") {
		t.Errorf("slow replica's /ready before its app listens = %d %q; want 503 app not healthy", code, body)
	}

	slow.waitReady(t)
	t.Logf("slow replica ready %s after start", time.Since(started).Round(10*time.Millisecond))
	eventually(t, 5*time.Second, "slow replica in the client's config", func() bool { return client.endpointCount(t, "web") == 2 })
	if got := endpointState(t, cp, slow.inbound); got != "HEALTHY -" {
		t.Errorf("get endpoints shows the slow replica as %q once it listens; want HEALTHY -", got)
	}
	// A new endpoint's first samples include its TLS handshake, so the
	// latency balancer ramps it up over some seconds: a share within a
	// bound, not a third at once.
	fromSlow, failed = 0, 0
	sent := 0
	for deadline := time.Now().Add(10 * time.Second); fromSlow < 3 && time.Now().Before(deadline); sent++ {
		code, body := getBody(t, c, "http://web/healthz")
		switch {
		case code != 200:
			failed++
		case !strings.HasPrefix(body, "a "):
			fromSlow++
		}
	}
	t.Logf("before it listened: 0 of %d; after: %d of %d to the slow replica", before, fromSlow, sent)
	if failed != 0 || fromSlow < 3 {
		t.Errorf("after the slow app listened: %d failed, %d of %d reached it within 10s; want none failed and a share", failed, fromSlow, sent)
	}
}

// getBody sends one GET and returns the status and body.
func getBody(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// restartableApp is an HTTP app on a fixed address that a test can stop
// and start again.
type restartableApp struct {
	t    *testing.T
	addr string
	name string
	srv  *http.Server
}

func (a *restartableApp) start() {
	a.t.Helper()
	var ln net.Listener
	var err error
	for range 50 { // the port was ours a moment ago; TIME_WAIT does not block a listen
		if ln, err = net.Listen("tcp", a.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		a.t.Fatalf("restart app on %s: %v", a.addr, err)
	}
	a.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", a.name, r.URL.Path)
	})}
	go a.srv.Serve(ln)
	a.t.Cleanup(func() { a.srv.Close() })
}

func (a *restartableApp) stop() { a.srv.Close() }

const healthServices = `apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: web}
spec:
  ports:
  - {name: http, port: 80}
  healthCheck: {type: http, path: /healthz, interval: 500ms, timeout: 250ms, healthyThreshold: 2, unhealthyThreshold: 2}
`

// TestDeadAppLeavesDiscovery is the second bug and the return
// path: three replicas under bounded load, one app killed. Its endpoint
// leaves every view within its threshold (the client's snapshot, `trellis
// get endpoints`, the control plane's DNS), its share drops to 0, and it
// comes back when the app does.
func TestDeadAppLeavesDiscovery(t *testing.T) {
	needTool(t, "dig", "dnsutils")
	dnsAddr := freeAddr(t)
	cp := startControl(t, "", "--dns-addr", dnsAddr, "--dns-ttl", "1s")
	cp.apply(t, healthServices)
	cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "a", nil)})
	cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "b", nil)})
	app := &restartableApp{t: t, addr: freeAddr(t), name: "c"}
	app.start()
	dead := cp.proxy(t, proxyConfig{service: "web", app: app.addr})
	client := cp.proxy(t, proxyConfig{service: "client", upstreams: []string{"web"}})
	eventually(t, 5*time.Second, "three web endpoints in the client's config", func() bool { return client.endpointCount(t, "web") == 3 })
	srvPorts := func() []string {
		var ports []string
		for _, l := range dig(t, dnsAddr, "_http._tcp.web.default.svc.trellis.local", "SRV") {
			ports = append(ports, strings.Fields(l)[2])
		}
		return ports
	}
	deadPort := port(t, dead.inbound)
	eventually(t, 3*time.Second, "three endpoints in DNS", func() bool { return len(srvPorts()) == 3 })

	app.stop()
	killed := time.Now()
	c := client.client()
	// Bounded load: 10 requests every 100 ms for 4 s, sequential.
	var perSecond [4]struct{ total, dead, failed int }
	var left time.Duration // when the client's snapshot lost the endpoint
	for i := 0; time.Since(killed) < 4*time.Second; i++ {
		if left == 0 && i%5 == 0 && client.endpointCount(t, "web") == 2 {
			left = time.Since(killed)
		}
		s := &perSecond[min(int(time.Since(killed)/time.Second), 3)]
		code, body := getBody(t, c, "http://web/x")
		s.total++
		switch {
		case code != 200:
			s.failed++
		case strings.HasPrefix(body, "c "):
			s.dead++
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("per second after the kill (total/to dead app/failed): %+v", perSecond)
	if last := perSecond[3]; last.dead != 0 || last.failed != 0 || last.total == 0 {
		t.Errorf("4th second after the kill: %d of %d reached the dead app, %d failed; want 0 and 0", last.dead, last.total, last.failed)
	}
	if left == 0 || left > 3*time.Second {
		t.Errorf("the dead endpoint left the client's snapshot after %s; want within its threshold (2 × 500 ms) and a push", left)
	}
	t.Logf("dead app's endpoint left the client's snapshot %s after the kill (2 × 500 ms checks)", left.Round(10*time.Millisecond))
	if got := endpointState(t, cp, dead.inbound); got != "UNHEALTHY connect refused" {
		t.Errorf("get endpoints: dead replica %q, want UNHEALTHY connect refused", got)
	}
	eventually(t, 3*time.Second, "dead endpoint to leave DNS", func() bool { return !slices.Contains(srvPorts(), deadPort) && len(srvPorts()) == 2 })
	if code, body := readyBody(dead); code != 503 || body != "app not healthy: connect refused" {
		t.Errorf("dead replica's /ready = %d %q", code, body)
	}

	app.start()
	eventually(t, 5*time.Second, "revived endpoint back in the client's config", func() bool { return client.endpointCount(t, "web") == 3 })
	eventually(t, 3*time.Second, "revived endpoint back in DNS", func() bool { return slices.Contains(srvPorts(), deadPort) })
	if got := endpointState(t, cp, dead.inbound); got != "HEALTHY -" {
		t.Errorf("get endpoints: revived replica %q, want HEALTHY -", got)
	}
	eventually(t, 5*time.Second, "the revived app to serve again", func() bool {
		for range 30 {
			if _, body := getBody(t, c, "http://web/x"); strings.HasPrefix(body, "c ") {
				return true
			}
		}
		return false
	})
}

// TestGRPCHealthCheck: a proxy checks a real gRPC server's health service
// (--health-check grpc); NOT_SERVING takes the endpoint out with that
// reason, SERVING brings it back.
func TestGRPCHealthCheck(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	hs := grpchealth.NewServer()
	healthpb.RegisterHealthServer(g, hs)
	go g.Serve(ln)
	t.Cleanup(g.Stop)

	cp := startControl(t, "")
	cp.apply(t, "apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata: {name: greeter}\nspec:\n  ports: [{name: grpc, port: 50051, protocol: grpc}]\n")
	p := cp.proxy(t, proxyConfig{service: "greeter", app: ln.Addr().String(),
		extra: []string{"--health-check", "grpc?interval=300ms&timeout=200ms&unhealthy=2&healthy=1"}})
	if got := endpointState(t, cp, p.inbound); got != "HEALTHY -" {
		t.Fatalf("SERVING: %q, want HEALTHY -", got)
	}
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	eventually(t, 5*time.Second, "NOT_SERVING in get endpoints", func() bool {
		return endpointState(t, cp, p.inbound) == "UNHEALTHY gRPC NOT_SERVING"
	})
	if code, body := readyBody(p); code != 503 || body != "app not healthy: gRPC NOT_SERVING" {
		t.Errorf("/ready while NOT_SERVING = %d %q", code, body)
	}
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	eventually(t, 5*time.Second, "SERVING again in get endpoints", func() bool {
		return endpointState(t, cp, p.inbound) == "HEALTHY -"
	})
}
