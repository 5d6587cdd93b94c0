package sidecar

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/health"
	"trellis.dev/trellis/internal/push"
)

// ready is the sidecar's /ready answer.
func ready(t *testing.T, s *sidecar) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + s.proxy.AdminAddr() + "/ready")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// TestAppHealthDrivesDiscovery: a replica whose app is not listening yet
// registers unhealthy and takes no traffic; once the app listens it joins
// (its first passing check), and when the app dies it leaves again after
// the unhealthy threshold, /ready following along.
func TestAppHealthDrivesDiscovery(t *testing.T) {
	cp := startControlPlane(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	appAddr := ln.Addr().String()
	ln.Close() // the app is not up yet

	flag, err := health.ParseFlag("tcp?interval=200ms&timeout=100ms&unhealthy=2")
	if err != nil {
		t.Fatal(err)
	}
	orders := startSidecar(t, cp, Options{Service: "orders", AppAddr: appAddr, HealthCheck: flag, HealthCheckSet: true})
	fe := startSidecar(t, cp, Options{Service: "frontend", OutboundAddr: "127.0.0.1:0", Upstreams: map[string]string{"orders": "127.0.0.1:0"}})

	eventually(t, "orders unhealthy: connect refused", func() bool {
		ep := cp.mesh.endpoint("orders")
		return ep != nil && !ep.GetHealthy() && ep.GetHealthReason() == "connect refused"
	})
	if code, body := ready(t, orders); code != 503 || body != "app not healthy: connect refused" {
		t.Errorf("/ready while the app is down = %d %q", code, body)
	}
	if code, _ := call(t, fe, "orders"); code != http.StatusServiceUnavailable {
		t.Errorf("GET orders while its app is down = %d, want 503 (no healthy endpoint)", code)
	}

	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "orders") })}
	ln, err = net.Listen("tcp", appAddr)
	if err != nil {
		t.Skipf("app port %s taken meanwhile: %v", appAddr, err)
	}
	go func() { _ = srv.Serve(ln) }()
	eventually(t, "orders healthy", func() bool {
		ep := cp.mesh.endpoint("orders")
		return ep.GetHealthy() && ep.GetHealthReason() == ""
	})
	eventually(t, "GET orders answered by the app", func() bool {
		code, body := call(t, fe, "orders")
		return code == 200 && body == "orders"
	})
	if code, body := ready(t, orders); code != 200 {
		t.Errorf("/ready with a healthy app = %d %q", code, body)
	}

	_ = srv.Close()
	start := time.Now()
	eventually(t, "orders unhealthy again", func() bool { return !cp.mesh.endpoint("orders").GetHealthy() })
	// Two failures 200 ms apart, plus a heartbeat: well under 2 s.
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("left discovery %s after the app died; want within its threshold (about 0.4 s)", d)
	}
}

// TestHealthCheckFromService: the Service's healthCheck (an HTTP path) is
// what the proxy checks; one naming a port the Service lacks is NACKed.
func TestHealthCheckFromService(t *testing.T) {
	cp := startControlPlane(t)
	status := http.StatusServiceUnavailable
	var mu = make(chan struct{}, 1)
	mu <- struct{}{}
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-mu
		code := status
		mu <- struct{}{}
		if r.URL.Path != "/healthz" {
			code = http.StatusNotFound
		}
		w.WriteHeader(code)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = app.Serve(ln) }()
	t.Cleanup(func() { _ = app.Close() })
	cp.mesh.update(func(m *mesh) {
		m.checks = map[string]*meshv1.HealthCheck{"orders": {
			Type: meshv1.HealthCheck_HTTP, Path: "/healthz",
			Interval: durationpb.New(200 * time.Millisecond), Timeout: durationpb.New(100 * time.Millisecond),
		}}
	})
	orders := startSidecar(t, cp, Options{Service: "orders", AppAddr: ln.Addr().String()})
	eventually(t, "orders unhealthy: HTTP 503", func() bool {
		return cp.mesh.endpoint("orders").GetHealthReason() == "HTTP 503"
	})
	<-mu
	status = http.StatusOK
	mu <- struct{}{}
	eventually(t, "orders healthy", func() bool { return cp.mesh.endpoint("orders").GetHealthy() })

	cp.mesh.update(func(m *mesh) {
		hc := proto.Clone(m.checks["orders"]).(*meshv1.HealthCheck) // sent snapshots share the old one
		hc.Port = "admin"
		m.checks["orders"] = hc
	})
	st := waitAnswered(t, cp, "orders")
	if st.State != push.StateNacked || !strings.Contains(st.Error, `no port named "admin"`) {
		t.Errorf("healthCheck on an unknown port: %+v, want NACKED naming the port", st)
	}
	if code, _ := ready(t, orders); code != 200 {
		t.Errorf("/ready after the NACK = %d, want the last good config's 200", code)
	}
}
