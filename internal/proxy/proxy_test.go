package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// whoami answers with what it saw, so tests can check every hop.
func whoami(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-App", name)
		h.Set("X-Seen-Client-Id", strings.Join(r.Header.Values(HeaderClientID), "|"))
		h.Set("X-Seen-Host", r.Host)
		h.Set("X-Seen-Xff", r.Header.Get("X-Forwarded-For"))
		h.Set("X-Seen-Traceparent", r.Header.Get("Traceparent"))
		h.Set("X-Seen-Secret", r.Header.Get("X-Secret"))
		h.Set("X-Seen-Port-Header", r.Header.Get(headerPort))
		h.Set("X-Seen-Proto", r.Proto)
		fmt.Fprintf(w, "%s %s %s", name, r.Method, r.URL.Path)
	})
}

type meshFixture struct {
	ca     *testCA
	orders *server
	client *Proxy
	echo   string
}

// newMesh: frontend's client proxy → orders' proxy → orders app on port 80
// (http), an echo server on port 82 (tcp).
func newMesh(t *testing.T, o Options) *meshFixture {
	t.Helper()
	ca := newTestCA(t, "trellis.local")
	app := startApp(t, whoami("orders"))
	echo := startEcho(t)
	orders := startServer(t, ca, "orders", app,
		port(80, app, meshv1.Protocol_HTTP), port(82, echo, meshv1.Protocol_TCP))
	client := startClient(t, ca, o)
	if err := client.Update(snapshot("1", orders.svc)); err != nil {
		t.Fatal(err)
	}
	return &meshFixture{ca: ca, orders: orders, client: client, echo: echo}
}

func TestHTTPThroughMeshHostAliases(t *testing.T) {
	m := newMesh(t, Options{})
	c := proxyClient(m.client)
	direct := &http.Client{Timeout: 5 * time.Second}
	for _, tc := range []struct {
		name   string
		client *http.Client
		url    string
		host   string
	}{
		{"absolute-form name", c, "http://orders/a", ""},
		{"absolute-form name.ns", c, "http://orders.default/a", ""},
		{"absolute-form fqdn", c, "http://orders.default.svc.trellis.local/a", ""},
		{"absolute-form fqdn with port", c, "http://orders.default.svc.trellis.local:80/a", ""},
		{"origin-form Host name", direct, "http://" + m.client.OutboundAddr() + "/a", "orders"},
		{"origin-form Host upper case, trailing dot", direct, "http://" + m.client.OutboundAddr() + "/a", "ORDERS.Default."},
		{"origin-form Host name.ns.svc:80", direct, "http://" + m.client.OutboundAddr() + "/a", "orders.default.svc:80"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := map[string]string{
				"Traceparent":  "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
				HeaderClientID: "spiffe://evil/ns/x/sa/spoof",
				"Connection":   "X-Secret",
				"X-Secret":     "hop-only",
			}
			if tc.host != "" {
				hdr["Host"] = tc.host
			}
			resp, body := get(t, tc.client, tc.url, hdr)
			if resp.StatusCode != 200 || body != "orders GET /a" {
				t.Fatalf("got %d %q", resp.StatusCode, body)
			}
			h := resp.Header
			if got := h.Get("X-Seen-Client-Id"); got != spiffeFor("frontend") {
				t.Errorf("app saw client id %q, want only the verified %q", got, spiffeFor("frontend"))
			}
			if got := h.Get("X-Seen-Traceparent"); got != hdr["Traceparent"] {
				t.Errorf("traceparent changed to %q", got)
			}
			if got := h.Get("X-Seen-Secret"); got != "" {
				t.Errorf("header named by Connection crossed the hop: %q", got)
			}
			if got := h.Get("X-Seen-Xff"); got != "127.0.0.1, 127.0.0.1" {
				t.Errorf("X-Forwarded-For = %q, want both hops", got)
			}
			if got := h.Get("X-Seen-Port-Header"); got != "" {
				t.Errorf("internal port header leaked to the app: %q", got)
			}
		})
	}
	resp, body := get(t, c, "http://nosuch.default/", nil)
	if resp.StatusCode != 503 || !strings.Contains(body, "nosuch.default is unknown") {
		t.Fatalf("unknown service: %d %q", resp.StatusCode, body)
	}
	// A host outside the registry is the egress policy's (egress_test.go).
}

func TestSubscribeUnknownService(t *testing.T) {
	var m *meshFixture
	var asked atomic.Value
	m = newMesh(t, Options{Subscribe: func(svc string) {
		asked.Store(svc)
		go func() {
			time.Sleep(20 * time.Millisecond)
			pay := renamed(m.orders.svc, "payments")
			_ = m.client.Update(snapshot("2", m.orders.svc, pay))
		}()
	}})
	resp, body := get(t, proxyClient(m.client), "http://payments/x", nil)
	if resp.StatusCode != 200 || body != "orders GET /x" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	if asked.Load() != "payments.default" {
		t.Fatalf("Subscribe got %v", asked.Load())
	}
}

// proto renamed returns a copy of s renamed, sharing its endpoints.
func renamed(s *meshv1.Service, name string) *meshv1.Service {
	return &meshv1.Service{Name: name, Namespace: s.Namespace, Ports: s.Ports, Endpoints: s.Endpoints}
}

func TestUpstreamListeners(t *testing.T) {
	m := newMesh(t, Options{Upstreams: map[string]string{"orders": "127.0.0.1:0", "orders.default:82": "127.0.0.1:0"}})
	// HTTP: every request goes to orders whatever its Host.
	resp, body := get(t, &http.Client{}, "http://"+m.client.UpstreamAddr("orders")+"/up", nil)
	if resp.StatusCode != 200 || body != "orders GET /up" {
		t.Fatalf("http upstream: %d %q", resp.StatusCode, body)
	}
	// TCP port: raw bytes through the mTLS tunnel to the echo server.
	conn, err := net.Dial("tcp", m.client.UpstreamAddr("orders.default:82"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	echoRoundTrip(t, conn, conn)
}

func echoRoundTrip(t *testing.T, w io.Writer, r io.Reader) {
	t.Helper()
	msg := []byte("hello through the tunnel\n")
	if _, err := w.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(r, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != string(msg) {
		t.Fatalf("echo = %q", got)
	}
}

func TestConnectTunnel(t *testing.T) {
	m := newMesh(t, Options{})
	dial := func(target string) (net.Conn, *bufio.Reader, *http.Response) {
		conn, err := net.Dial("tcp", m.client.OutboundAddr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		return conn, br, resp
	}
	conn, br, resp := dial("orders:82")
	if resp.StatusCode != 200 {
		t.Fatalf("CONNECT status %d", resp.StatusCode)
	}
	echoRoundTrip(t, conn, br)
	// Half-close: the echo's answer still arrives after we stop writing.
	if _, err := conn.Write([]byte("last\n")); err != nil {
		t.Fatal(err)
	}
	conn.(*net.TCPConn).CloseWrite()
	rest, _ := io.ReadAll(br)
	if string(rest) != "last\n" {
		t.Fatalf("after half-close got %q", rest)
	}
	// The client side refuses ports not declared tcp (undeclared ones
	// included); hardening_test.go has the inbound side's refusals.
	_, _, resp = dial("orders:9999")
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("undeclared port: status %d, want 403", resp.StatusCode)
	}
	_, _, resp = dial("orders")
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("CONNECT without port: status %d, want 400", resp.StatusCode)
	}
	assertMetric(t, m.client, `trellis_tcp_connections_opened_total{reporter="source",destination_service="orders",destination_namespace="default"} 1`)
	assertMetric(t, m.orders.proxy, `trellis_tcp_connections_opened_total{reporter="destination",destination_service="orders",destination_namespace="default"} 1`)
	// Both sides count the closed tunnel and its bytes: 30 each way
	// (the echo and "last\n"), and none open any more.
	for _, p := range []*Proxy{m.client, m.orders.proxy} {
		assertMetric(t, p, `trellis_tcp_connections_closed_total{destination_service="orders"} 1`)
		assertMetric(t, p, `trellis_tcp_received_bytes_total{destination_service="orders"} 30`)
		assertMetric(t, p, `trellis_tcp_sent_bytes_total{destination_service="orders"} 30`)
		assertMetric(t, p, `trellis_tcp_connections_open{destination_service="orders"} 0`)
	}
}

func TestH2CFromApp(t *testing.T) {
	m := newMesh(t, Options{})
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &protos}
	defer tr.CloseIdleConnections() // else shutdown waits out HTTP/2's GOAWAY grace
	c := &http.Client{Transport: tr}
	resp, body := get(t, c, "http://"+m.client.OutboundAddr()+"/h2", map[string]string{"Host": "orders"})
	if resp.StatusCode != 200 || body != "orders GET /h2" || resp.Proto != "HTTP/2.0" {
		t.Fatalf("got %d %s %q", resp.StatusCode, resp.Proto, body)
	}
}

func TestInboundRejectsUnauthenticated(t *testing.T) {
	m := newMesh(t, Options{})
	addr := m.orders.proxy.InboundAddr()

	// Plaintext HTTP gets no response.
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: orders\r\n\r\n")
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, _ := io.ReadAll(conn)
	conn.Close()
	if strings.Contains(string(b), "orders GET") {
		t.Fatalf("plaintext client reached the app: %q", b)
	}

	// TLS without a client certificate, and with one from a foreign CA.
	foreign := newTestCA(t, "trellis.local")
	fs := foreign.svid(t, spiffeFor("frontend"))
	for name, cfg := range map[string]*tls.Config{
		"no client cert": {InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}},
		"foreign CA":     foreign.clientTLS(fs)(spiffeFor("orders")),
	} {
		t.Run(name, func(t *testing.T) {
			cfg = cfg.Clone()
			cfg.InsecureSkipVerify = true
			cfg.VerifyPeerCertificate = nil
			cfg.NextProtos = []string{"http/1.1"}
			tr := &http.Transport{TLSClientConfig: cfg}
			defer tr.CloseIdleConnections()
			req, _ := http.NewRequest("GET", "https://"+addr+"/", nil)
			resp, err := tr.RoundTrip(req)
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				t.Fatalf("unauthenticated client got %d %q", resp.StatusCode, b)
			}
		})
	}
}

func TestSecureNaming(t *testing.T) {
	m := newMesh(t, Options{})
	// The registry claims orders runs as "payments": the outbound proxy
	// must refuse the real orders proxy's certificate.
	bad := renamed(m.orders.svc, "orders")
	bad.Endpoints = []*meshv1.Endpoint{{Address: m.orders.proxy.InboundAddr(), Identity: spiffeFor("payments"), Healthy: true}}
	if err := m.client.Update(snapshot("2", bad)); err != nil {
		t.Fatal(err)
	}
	resp, body := get(t, proxyClient(m.client), "http://orders/", nil)
	if resp.StatusCode != http.StatusBadGateway || strings.Contains(body, "orders GET") {
		t.Fatalf("got %d %q, want 502", resp.StatusCode, body)
	}
	conn, err := net.Dial("tcp", m.client.OutboundAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "CONNECT orders:82 HTTP/1.1\r\nHost: orders:82\r\n\r\n")
	r, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || r.StatusCode != http.StatusBadGateway {
		t.Fatalf("tunnel to wrong identity: %v %v", r, err)
	}
}

func TestUpdateInvalidKeepsOldConfig(t *testing.T) {
	m := newMesh(t, Options{})
	good := m.orders.svc
	withRoute := func(r *meshv1.Route) *meshv1.Service { return withRoutes(good, r) }
	for _, tc := range []struct {
		name string
		snap *meshv1.Snapshot
		want string
	}{
		{"nil", nil, "snapshot is nil"},
		{"bad regex", snapshot("x", withRoute(&meshv1.Route{
			Matches:  []*meshv1.Match{{Path: &meshv1.PathMatch{Type: meshv1.PathMatch_REGEX, Value: "(["}}},
			Backends: []*meshv1.Backend{{Service: "orders", Weight: 1}},
		})), "services[0].routes[0].matches[0].path.value: bad regex"},
		{"bad header regex", snapshot("x", withRoute(&meshv1.Route{
			Matches:  []*meshv1.Match{{Headers: []*meshv1.HeaderMatch{{Type: meshv1.HeaderMatch_REGEX, Name: "x", Value: "*"}}}},
			Backends: []*meshv1.Backend{{Service: "orders", Weight: 1}},
		})), "headers[0].value: bad regex"},
		{"zero weights only", snapshot("x", withRoute(&meshv1.Route{
			Backends: []*meshv1.Backend{{Service: "orders", Weight: 0}},
		})), "every weight is 0"},
		{"no backends", snapshot("x", withRoute(&meshv1.Route{})), "backends: empty"},
		{"unknown backend", snapshot("x", withRoute(&meshv1.Route{
			Backends: []*meshv1.Backend{{Service: "ghost", Weight: 1}},
		})), "ghost.default is not in the snapshot"},
		{"endpoint without identity", snapshot("x", &meshv1.Service{Name: "orders", Namespace: "default",
			Endpoints: []*meshv1.Endpoint{{Address: "127.0.0.1:1", Healthy: true}}}), "endpoints[0].identity"},
		{"endpoint bad address", snapshot("x", &meshv1.Service{Name: "orders", Namespace: "default",
			Endpoints: []*meshv1.Endpoint{{Address: "nowhere", Identity: spiffeFor("orders"), Healthy: true}}}), "endpoints[0].address"},
		{"duplicate service", snapshot("x", good, good), "duplicate service orders.default"},
		{"bad name", snapshot("x", &meshv1.Service{Name: "Orders!", Namespace: "default"}), "services[0].name"},
		{"bad port", snapshot("x", &meshv1.Service{Name: "o", Namespace: "default", Ports: []*meshv1.Port{{Port: 70000}}}), "ports[0].port"},
		{"empty filter", snapshot("x", withRoute(&meshv1.Route{
			Backends: []*meshv1.Backend{{Service: "orders", Weight: 1}},
			Filters:  []*meshv1.RouteFilter{{Filter: &meshv1.RouteFilter_RequestHeaderModifier{RequestHeaderModifier: &meshv1.HeaderModifier{}}}, {}},
		})), "services[0].routes[0].filters[1]: empty or unknown filter kind"},
		{"bad header name in filter", snapshot("x", withRoute(&meshv1.Route{
			Backends: []*meshv1.Backend{{Service: "orders", Weight: 1}},
			Filters: []*meshv1.RouteFilter{{Filter: &meshv1.RouteFilter_ResponseHeaderModifier{ResponseHeaderModifier: &meshv1.HeaderModifier{
				Add: []*meshv1.HeaderValue{{Name: "bad name", Value: "v"}}}}}},
		})), "filters[0].response_header_modifier.add[0].name"},
		{"hop-by-hop header in filter", snapshot("x", withRoute(&meshv1.Route{
			Backends: []*meshv1.Backend{{Service: "orders", Weight: 1}},
			Filters: []*meshv1.RouteFilter{{Filter: &meshv1.RouteFilter_RequestHeaderModifier{RequestHeaderModifier: &meshv1.HeaderModifier{
				Set: []*meshv1.HeaderValue{{Name: "connection", Value: "close"}}}}}},
		})), "filters[0].request_header_modifier.set[0].name"},
		{"bad header value in filter", snapshot("x", withRoute(&meshv1.Route{
			Backends: []*meshv1.Backend{{Service: "orders", Weight: 1}},
			Filters: []*meshv1.RouteFilter{{Filter: &meshv1.RouteFilter_RequestHeaderModifier{RequestHeaderModifier: &meshv1.HeaderModifier{
				Set: []*meshv1.HeaderValue{{Name: "x-a", Value: "line\nbreak"}}}}}},
		})), "request_header_modifier.set[0].value"},
		{"negative timeout", snapshot("x", withRoute(&meshv1.Route{
			Backends: []*meshv1.Backend{{Service: "orders", Weight: 1}},
			Timeouts: &meshv1.RouteTimeouts{Request: durationpb.New(-time.Second)},
		})), "services[0].routes[0].timeouts.request"},
		{"attempt outlasts request", snapshot("x", withRoute(&meshv1.Route{
			Backends: []*meshv1.Backend{{Service: "orders", Weight: 1}},
			Timeouts: &meshv1.RouteTimeouts{Request: durationpb.New(time.Second), BackendRequest: durationpb.New(2 * time.Second)},
		})), "timeouts.backend_request: 2s is longer than request 1s"},
		{"unknown balancer", snapshot("x", &meshv1.Service{Name: "orders", Namespace: "default",
			BackendPolicy: &meshv1.BackendPolicy{LoadBalancer: 42}}), "services[0].backend_policy.load_balancer: unknown balancer 42"},
		{"relative exact path", snapshot("x", withRoute(&meshv1.Route{
			Matches:  []*meshv1.Match{{Path: &meshv1.PathMatch{Type: meshv1.PathMatch_EXACT, Value: "a"}}},
			Backends: []*meshv1.Backend{{Service: "orders", Weight: 1}},
		})), "must start with /"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := m.client.cfg.Load()
			err := m.client.Update(tc.snap)
			if err == nil || !errors.Is(err, ErrInvalidSnapshot) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Update error = %v, want %q", err, tc.want)
			}
			if m.client.cfg.Load() != before {
				t.Fatal("config changed after a refused Update")
			}
			resp, body := get(t, proxyClient(m.client), "http://orders/still", nil)
			if resp.StatusCode != 200 || body != "orders GET /still" {
				t.Fatalf("old config no longer serves: %d %q", resp.StatusCode, body)
			}
		})
	}
}

func TestMalformedRequests(t *testing.T) {
	m := newMesh(t, Options{})
	for _, raw := range []string{
		"GET / HTTP/1.1\r\nHost: orders:99999\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: ord ers\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
		"NOT AN HTTP REQUEST LINE AT ALL\r\n\r\n",
		"GET / HTTP/1.1\r\n\r\n",
		"GET http://orders/ HTTP/1.1\r\nHost: orders\r\nContent-Length: -4\r\n\r\n",
	} {
		conn, err := net.Dial("tcp", m.client.OutboundAddr())
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(3 * time.Second))
		io.WriteString(conn, raw)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		conn.Close()
		if err != nil {
			t.Fatalf("%q: %v", raw, err)
		}
		if resp.StatusCode < 400 || resp.StatusCode >= 500 {
			t.Fatalf("%q: status %d, want 4xx", raw, resp.StatusCode)
		}
	}
}

func TestRoutesSplitAndMatchEndToEnd(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	v1 := startServer(t, ca, "reviews-v1", startApp(t, whoami("v1")), port(80, "x:1", 0))
	v2 := startServer(t, ca, "reviews-v2", startApp(t, whoami("v2")), port(80, "x:1", 0))
	fixPorts(v1, v2)
	client := startClient(t, ca, Options{})
	reviews := &meshv1.Service{Name: "reviews", Namespace: "default", Ports: v1.svc.Ports, Routes: []*meshv1.Route{
		{Name: "default/reviews/rules[0]", Matches: []*meshv1.Match{{Headers: []*meshv1.HeaderMatch{{Name: "x-canary", Value: "yes"}}}},
			Backends: []*meshv1.Backend{{Service: "reviews-v2", Weight: 1}}},
		{Name: "default/reviews/rules[1]", Matches: []*meshv1.Match{{Path: &meshv1.PathMatch{Type: meshv1.PathMatch_PREFIX, Value: "/api"}}},
			Backends: []*meshv1.Backend{{Service: "reviews-v1", Weight: 80}, {Service: "reviews-v2", Weight: 20}}},
	}}
	if err := client.Update(snapshot("1", reviews, v1.svc, v2.svc)); err != nil {
		t.Fatal(err)
	}
	c := proxyClient(client)
	if resp, body := get(t, c, "http://reviews/api", map[string]string{"X-Canary": "yes"}); resp.StatusCode != 200 || body != "v2 GET /api" {
		t.Fatalf("header match: %d %q", resp.StatusCode, body)
	}
	if resp, _ := get(t, c, "http://reviews/other", nil); resp.StatusCode != 404 {
		t.Fatalf("no match: %d, want 404", resp.StatusCode)
	}
	n1 := 0
	const n = 300
	for range n {
		resp, body := get(t, c, "http://reviews/api/x", nil)
		if resp.StatusCode != 200 {
			t.Fatalf("split: %d %q", resp.StatusCode, body)
		}
		if strings.HasPrefix(body, "v1") {
			n1++
		}
	}
	if f := float64(n1) / n; f < 0.70 || f > 0.90 {
		t.Fatalf("v1 got %.2f of traffic, want ~0.80", f)
	}
}

// fixPorts points each server's declared port at its own app (startServer
// was given a placeholder target).
func fixPorts(ss ...*server) {
	for _, s := range ss {
		in := s.proxy.cfg.Load()
		app := in.inbound.def.appAddr
		_, p, _ := net.SplitHostPort(app)
		ports := []*meshv1.Port{port(80, "x:"+p, meshv1.Protocol_HTTP)}
		s.svc.Ports = ports
		_ = s.proxy.Update(&meshv1.Snapshot{Version: "2", Inbound: &meshv1.Service{Name: s.name, Namespace: "default", Ports: ports}})
	}
}

func TestConfigSwapUnderLoad(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	v1 := startServer(t, ca, "reviews-v1", startApp(t, whoami("v1")), port(80, "x:1", 0))
	v2 := startServer(t, ca, "reviews-v2", startApp(t, whoami("v2")), port(80, "x:1", 0))
	v2b := startServer(t, ca, "reviews-v2", startApp(t, whoami("v2")), port(80, "x:1", 0))
	fixPorts(v1, v2, v2b)
	client := startClient(t, ca, Options{})
	snap := func(i int) *meshv1.Snapshot {
		w1, w2 := uint32(i%2), uint32(1-i%2)
		if i%3 == 0 {
			w1 = 1
		}
		// Endpoints of v2 change too: the pool and balancer must cope.
		v2s := renamed(v2.svc, "reviews-v2")
		if i%2 == 1 {
			v2s.Endpoints = append(append([]*meshv1.Endpoint{}, v2.svc.Endpoints...), v2b.svc.Endpoints...)
		}
		return snapshot(fmt.Sprint(i), &meshv1.Service{Name: "reviews", Namespace: "default", Routes: []*meshv1.Route{{
			Backends: []*meshv1.Backend{{Service: "reviews-v1", Weight: w1}, {Service: "reviews-v2", Weight: w2}},
		}}}, v1.svc, v2s)
	}
	if err := client.Update(snap(0)); err != nil {
		t.Fatal(err)
	}
	c := proxyClient(client)
	var stop atomic.Bool
	var total, failed atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				resp, err := c.Get("http://reviews/load")
				total.Add(1)
				if err != nil {
					failed.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
				}
			}
		}()
	}
	for i := 1; i <= 60; i++ {
		if err := client.Update(snap(i)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	if failed.Load() != 0 || total.Load() < 100 {
		t.Fatalf("%d of %d requests failed during config swaps", failed.Load(), total.Load())
	}
}

func TestShutdownDrainsInFlight(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	release := make(chan struct{})
	entered := make(chan struct{})
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
		io.WriteString(w, "slow done")
	}))
	slow := startServer(t, ca, "slow", app, port(80, app, meshv1.Protocol_HTTP))
	client := startClient(t, ca, Options{})
	if err := client.Update(snapshot("1", slow.svc)); err != nil {
		t.Fatal(err)
	}
	client.SetReady(true)
	adminGet := func(p *Proxy, path string) int {
		resp, err := http.Get("http://" + p.AdminAddr() + path)
		if err != nil {
			return -1
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := adminGet(slow.proxy, "/ready"); got != 200 {
		t.Fatalf("/ready before drain = %d", got)
	}
	type result struct {
		code int
		body string
		err  error
	}
	res := make(chan result, 1)
	go func() {
		resp, err := proxyClient(client).Get("http://slow/")
		if err != nil {
			res <- result{err: err}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		res <- result{code: resp.StatusCode, body: string(b)}
	}()
	<-entered
	shut := make(chan error, 1)
	go func() { shut <- slow.proxy.Shutdown(context.Background()) }()
	deadline := time.Now().Add(5 * time.Second)
	for adminGet(slow.proxy, "/ready") == 200 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := adminGet(slow.proxy, "/ready"); got == 200 {
		t.Fatal("/ready still 200 while draining")
	}
	for time.Now().Before(deadline) {
		c, err := net.Dial("tcp", slow.proxy.InboundAddr())
		if err != nil {
			break
		}
		c.Close()
		time.Sleep(5 * time.Millisecond)
	}
	if c, err := net.Dial("tcp", slow.proxy.InboundAddr()); err == nil {
		c.Close()
		t.Fatal("inbound still accepts connections while draining")
	}
	close(release)
	r := <-res
	if r.err != nil || r.code != 200 || r.body != "slow done" {
		t.Fatalf("in-flight request: %+v", r)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

func TestShutdownDeadlineCutsStuckRequests(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	block := make(chan struct{})
	t.Cleanup(func() { close(block) })
	entered := make(chan struct{}, 1)
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	s := ca.svid(t, spiffeFor("stuck"))
	p := startProxy(t, Options{Service: "stuck", AppAddr: app, InboundAddr: "127.0.0.1:0", ServerTLS: ca.serverTLS(s), ClientTLS: ca.clientTLS(s), DrainTimeout: 200 * time.Millisecond})
	stuck := &meshv1.Service{Name: "stuck", Namespace: "default", Endpoints: []*meshv1.Endpoint{{Address: p.InboundAddr(), Identity: spiffeFor("stuck"), Healthy: true}}}
	client := startClient(t, ca, Options{})
	if err := client.Update(snapshot("1", stuck)); err != nil {
		t.Fatal(err)
	}
	go func() {
		resp, err := proxyClient(client).Get("http://stuck/")
		if err == nil {
			resp.Body.Close()
		}
	}()
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("request never reached the app")
	}
	start := time.Now()
	err := p.Shutdown(context.Background())
	if err == nil || time.Since(start) > 3*time.Second {
		t.Fatalf("Shutdown = %v after %v; want a drain error after ~200ms", err, time.Since(start))
	}
}

// TestRouteHeaderFilters: Gateway API header modifiers on a route — set
// replaces, add appends, remove deletes — on the request the app sees and
// on the response the client sees, the proxy's own errors included.
func TestRouteHeaderFilters(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Got-Set", strings.Join(r.Header.Values("X-Set"), "|"))
		h.Set("X-Got-Add", strings.Join(r.Header.Values("X-Add"), "|"))
		h.Set("X-Got-Remove", strings.Join(r.Header.Values("X-Remove"), "|"))
		h.Set("Server", "app")
		h.Set("X-Internal", "secret")
		h.Add("X-Multi", "app")
	}))
	orders := startServer(t, ca, "orders", app, port(80, app, meshv1.Protocol_HTTP))
	hv := func(n, v string) *meshv1.HeaderValue { return &meshv1.HeaderValue{Name: n, Value: v} }
	svc := withRoutes(orders.svc, &meshv1.Route{
		Backends: []*meshv1.Backend{{Service: "orders", Weight: 1}},
		Filters: []*meshv1.RouteFilter{
			{Filter: &meshv1.RouteFilter_RequestHeaderModifier{RequestHeaderModifier: &meshv1.HeaderModifier{
				Set: []*meshv1.HeaderValue{hv("x-set", "route")}, Add: []*meshv1.HeaderValue{hv("X-Add", "route")}, Remove: []string{"x-remove"},
			}}},
			{Filter: &meshv1.RouteFilter_ResponseHeaderModifier{ResponseHeaderModifier: &meshv1.HeaderModifier{
				Set: []*meshv1.HeaderValue{hv("server", "trellis")}, Add: []*meshv1.HeaderValue{hv("x-multi", "route")}, Remove: []string{"X-Internal"},
			}}},
		},
	}, &meshv1.Route{
		Matches:  []*meshv1.Match{{Path: &meshv1.PathMatch{Value: "/none"}}},
		Backends: []*meshv1.Backend{{Service: "empty", Weight: 1}},
		Filters: []*meshv1.RouteFilter{{Filter: &meshv1.RouteFilter_ResponseHeaderModifier{ResponseHeaderModifier: &meshv1.HeaderModifier{
			Set: []*meshv1.HeaderValue{hv("x-route", "none")}}}}},
	})
	svc.Routes[0], svc.Routes[1] = svc.Routes[1], svc.Routes[0]
	client := startClient(t, ca, Options{})
	if err := client.Update(snapshot("1", svc, &meshv1.Service{Name: "empty", Namespace: "default"})); err != nil {
		t.Fatal(err)
	}
	c := proxyClient(client)
	req, _ := http.NewRequest("GET", "http://orders/x", nil)
	req.Header.Add("X-Set", "client1")
	req.Header.Add("X-Set", "client2")
	req.Header.Add("X-Add", "client")
	req.Header.Add("X-Remove", "client")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for k, want := range map[string]string{
		"X-Got-Set": "route", "X-Got-Add": "client|route", "X-Got-Remove": "",
		"Server": "trellis", "X-Multi": "app|route", "X-Internal": "",
	} {
		if got := strings.Join(resp.Header.Values(k), "|"); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	// The proxy's own answer (no endpoints: 503) gets the response filter.
	resp, _ = get(t, c, "http://orders/none", nil)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Route") != "none" {
		t.Fatalf("proxy error: %d, X-Route %q", resp.StatusCode, resp.Header.Get("X-Route"))
	}
}
