package health

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// checkOnce runs one probe of s against a real socket.
func checkOnce(t *testing.T, s Spec) string {
	t.Helper()
	s = s.WithDefaults()
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	pr, err := newProbe(s)
	if err != nil {
		t.Fatal(err)
	}
	defer pr.close()
	ctx, cancel := context.WithTimeout(t.Context(), s.Timeout)
	defer cancel()
	return pr.check(ctx)
}

// deadAddr is a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// silentAddr accepts connections and never answers.
func silentAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	return ln.Addr().String()
}

func TestTCPProbe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if r := checkOnce(t, Spec{Type: TCP, Addr: ln.Addr().String()}); r != "" {
		t.Errorf("listening app: %q, want pass", r)
	}
	if r := checkOnce(t, Spec{Type: TCP, Addr: deadAddr(t)}); r != "connect refused" {
		t.Errorf("nothing listening: %q, want connect refused", r)
	}
}

func TestHTTPProbe(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/healthz":
			w.WriteHeader(http.StatusNoContent)
		case "/moved":
			http.Redirect(w, r, "/elsewhere", http.StatusFound)
		case "/elsewhere":
			w.WriteHeader(http.StatusServiceUnavailable) // must not be followed
		default:
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	for _, tc := range []struct {
		s    Spec
		want string
	}{
		{Spec{Type: HTTP, Addr: addr, Path: "/healthz"}, ""},
		{Spec{Type: HTTP, Addr: addr, Path: "/moved"}, ""},
		{Spec{Type: HTTP, Addr: addr, Path: "/down"}, "HTTP 503"},
		{Spec{Type: HTTP, Addr: deadAddr(t), Path: "/healthz"}, "connect refused"},
		{Spec{Type: HTTP, Addr: silentAddr(t), Path: "/healthz", Timeout: 200 * time.Millisecond}, "timeout after 200ms"},
	} {
		if r := checkOnce(t, tc.s); r != tc.want {
			t.Errorf("GET %s%s: %q, want %q", tc.s.Addr, tc.s.Path, r, tc.want)
		}
	}
}

// TestGRPCProbe checks a real gRPC server's health service as it toggles.
func TestGRPCProbe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	hs := grpchealth.NewServer()
	healthpb.RegisterHealthServer(g, hs)
	go func() { _ = g.Serve(ln) }()
	defer g.Stop()
	addr := ln.Addr().String()

	s := Spec{Type: GRPC, Addr: addr, Timeout: 2 * time.Second}.WithDefaults()
	pr, err := newProbe(s)
	if err != nil {
		t.Fatal(err)
	}
	defer pr.close()
	check := func() string {
		ctx, cancel := context.WithTimeout(t.Context(), s.Timeout)
		defer cancel()
		return pr.check(ctx)
	}
	if r := check(); r != "" {
		t.Fatalf("SERVING: %q, want pass", r)
	}
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	if r := check(); r != "gRPC NOT_SERVING" {
		t.Fatalf("NOT_SERVING: %q", r)
	}
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	if r := check(); r != "" {
		t.Fatalf("SERVING again: %q, want pass", r)
	}
	if r := checkOnce(t, Spec{Type: GRPC, Addr: addr, Path: "orders.v1.Orders"}); r != "gRPC health: unknown service" {
		t.Errorf("unknown service: %q", r)
	}
	if r := checkOnce(t, Spec{Type: GRPC, Addr: deadAddr(t)}); r != "connect refused" {
		t.Errorf("nothing listening: %q, want connect refused", r)
	}
}

// TestGRPCProbeNoHealthService: a gRPC server without the health service
// fails with a reason that says so.
func TestGRPCProbeNoHealthService(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	go func() { _ = g.Serve(ln) }()
	defer g.Stop()
	if r := checkOnce(t, Spec{Type: GRPC, Addr: ln.Addr().String()}); r != "gRPC health service not implemented" {
		t.Errorf("no health service: %q", r)
	}
}

// TestCheckerRealApp runs the checker against an app that starts late
// and then dies: unhealthy, healthy on its first pass, unhealthy again
// after the unhealthy threshold.
func TestCheckerRealApp(t *testing.T) {
	addr := deadAddr(t)
	changed := make(chan Status, 8)
	c, err := New(Spec{Type: TCP, Addr: addr, Interval: 100 * time.Millisecond, Timeout: 50 * time.Millisecond, UnhealthyThreshold: 2},
		Options{OnChange: func(s Status) { changed <- s }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go c.Run(ctx)
	want := func(healthy bool, reason string) {
		t.Helper()
		select {
		case s := <-changed:
			if s.Healthy != healthy || s.Reason != reason {
				t.Fatalf("change %+v, want healthy=%v reason %q", s, healthy, reason)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no change to healthy=%v", healthy)
		}
	}
	want(false, "connect refused")
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("port %s taken meanwhile: %v", addr, err)
	}
	want(true, "")
	ln.Close()
	want(false, "connect refused")
}
