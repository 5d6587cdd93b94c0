package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

func azSrc(id string) []*meshv1.AuthzSource {
	return []*meshv1.AuthzSource{{Match: &meshv1.AuthzSource_Identity{Identity: id}}}
}

// setAuthz pushes the orders proxy its own snapshot with authz.
func setAuthz(t testing.TB, s *server, version string, az *meshv1.Authorization) {
	t.Helper()
	in := &meshv1.Service{Name: s.svc.GetName(), Namespace: s.svc.GetNamespace(), Ports: s.svc.GetPorts()}
	if err := s.proxy.Update(&meshv1.Snapshot{Version: version, Inbound: in, InboundPolicy: &meshv1.InboundPolicy{Authorization: az}}); err != nil {
		t.Fatal(err)
	}
}

func allowPolicy(name string, rules ...*meshv1.AuthzRule) *meshv1.AuthzPolicy {
	return &meshv1.AuthzPolicy{Name: name, Action: meshv1.AuthzAction_AUTHZ_ALLOW, Rules: rules}
}

// TestAuthzHTTP: on real sockets between two proxies, an ALLOW policy lets
// its caller's matching requests through and answers the rest 403 AZ naming
// why; a DENY policy wins over it; revoking the allow stops the next
// request on the same pooled connection; decisions are counted.
func TestAuthzHTTP(t *testing.T) {
	m := newMesh(t, Options{})
	c := proxyClient(m.client)
	setAuthz(t, m.orders, "2", &meshv1.Authorization{Policies: []*meshv1.AuthzPolicy{
		allowPolicy("default/frontend", &meshv1.AuthzRule{From: azSrc(spiffeFor("frontend")),
			Paths: []*meshv1.AuthzPath{{Match: &meshv1.AuthzPath_Prefix{Prefix: "/ok"}}}}),
		{Name: "default/no-admin", Action: meshv1.AuthzAction_AUTHZ_DENY, Rules: []*meshv1.AuthzRule{{
			Paths: []*meshv1.AuthzPath{{Match: &meshv1.AuthzPath_Prefix{Prefix: "/ok/admin"}}}}}},
	}})
	resp, body := get(t, c, "http://orders/ok/1", nil)
	if resp.StatusCode != 200 || body != "orders GET /ok/1" {
		t.Fatalf("allowed request: %d %q", resp.StatusCode, body)
	}
	resp, body = get(t, c, "http://orders/other", nil)
	if resp.StatusCode != http.StatusForbidden || resp.Header.Get(headerError) != "AZ" ||
		!strings.Contains(body, "no rule of the ALLOW AuthorizationPolicies of orders.default matches") {
		t.Fatalf("unmatched request: %d %s %q", resp.StatusCode, resp.Header.Get(headerError), body)
	}
	resp, body = get(t, c, "http://orders/ok/admin/x", nil)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "denied by AuthorizationPolicy default/no-admin (DENY)") {
		t.Fatalf("deny before allow: %d %q", resp.StatusCode, body)
	}
	// Revoked in flight: the client's pooled HTTP/2 connection to orders
	// stays; the next request on it is denied.
	setAuthz(t, m.orders, "3", &meshv1.Authorization{Policies: []*meshv1.AuthzPolicy{
		allowPolicy("default/frontend", &meshv1.AuthzRule{From: azSrc(spiffeFor("someone-else"))}),
	}})
	resp, body = get(t, c, "http://orders/ok/1", nil)
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("after revocation: %d %q", resp.StatusCode, body)
	}
	assertMetric(t, m.orders.proxy, `trellis_proxy_authz_decisions_total{decision="allow",policy="default/frontend"} 1`)
	assertMetric(t, m.orders.proxy, `trellis_proxy_authz_decisions_total{decision="deny",policy="default/no-admin"} 1`)
	assertMetric(t, m.orders.proxy, `trellis_proxy_authz_decisions_total{decision="deny",policy="no-allow-match"} 2`)
	assertMetric(t, m.orders.proxy, `trellis_requests_total{reporter="destination",destination_service="orders",destination_namespace="default",response_code="403",response_flags="AZ"} 3`)
}

// TestAuthzDefaultDeny: with the mesh default deny and no policy, nothing
// gets in; the body says the default decided.
func TestAuthzDefaultDeny(t *testing.T) {
	m := newMesh(t, Options{})
	setAuthz(t, m.orders, "2", &meshv1.Authorization{DefaultAction: meshv1.AuthzAction_AUTHZ_DENY})
	resp, body := get(t, proxyClient(m.client), "http://orders/", nil)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "denied by the mesh default") {
		t.Fatalf("default deny: %d %q", resp.StatusCode, body)
	}
}

// TestAuthzTCPRefusedBeforeApp: a denied tunnel is refused in its preamble
// and the app never sees a connection; an allowed one works.
func TestAuthzTCPRefusedBeforeApp(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var accepted atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() { defer c.Close(); buf := make([]byte, 64); n, _ := c.Read(buf); _, _ = c.Write(buf[:n]) }()
		}
	}()
	app := startApp(t, whoami("orders"))
	orders := startServer(t, ca, "orders", app, port(80, app, meshv1.Protocol_HTTP), port(82, ln.Addr().String(), meshv1.Protocol_TCP))
	client := startClient(t, ca, Options{})
	if err := client.Update(snapshot("1", orders.svc)); err != nil {
		t.Fatal(err)
	}
	tunnel := func(client *Proxy) (int, string) {
		conn, err := net.Dial("tcp", client.OutboundAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "CONNECT orders:82 HTTP/1.1\r\nHost: orders:82\r\n\r\n")
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 {
			return resp.StatusCode, ""
		}
		fmt.Fprintf(conn, "ping")
		buf := make([]byte, 4)
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := br.Read(buf); err != nil {
			t.Fatal(err)
		}
		return 200, string(buf)
	}
	// An ALLOW rule with a path never matches TCP; nothing else allows.
	setAuthz(t, orders, "2", &meshv1.Authorization{Policies: []*meshv1.AuthzPolicy{
		allowPolicy("default/http-only", &meshv1.AuthzRule{From: azSrc(spiffeFor("frontend")),
			Paths: []*meshv1.AuthzPath{{Match: &meshv1.AuthzPath_Prefix{Prefix: "/"}}}}),
	}})
	if code, _ := tunnel(client); code != http.StatusBadGateway {
		t.Fatalf("denied tunnel: status %d, want 502", code)
	}
	if n := accepted.Load(); n != 0 {
		t.Fatalf("the app accepted %d connections of a denied tunnel", n)
	}
	assertMetric(t, orders.proxy, `trellis_proxy_authz_decisions_total{decision="deny",policy="no-allow-match"} 1`)
	setAuthz(t, orders, "3", &meshv1.Authorization{Policies: []*meshv1.AuthzPolicy{
		allowPolicy("default/tcp", &meshv1.AuthzRule{From: azSrc(spiffeFor("frontend")), Ports: []uint32{82}}),
	}})
	if code, got := tunnel(client); code != 200 || got != "ping" {
		t.Fatalf("allowed tunnel: %d %q", code, got)
	}
	assertMetric(t, orders.proxy, `trellis_proxy_authz_decisions_total{decision="allow",policy="default/tcp"} 1`)
	// Another identity, same port: refused, and the app still saw only the
	// allowed tunnel.
	intruder := startClient(t, ca, Options{ClientTLS: ca.clientTLS(ca.svid(t, spiffeFor("intruder")))})
	if err := intruder.Update(snapshot("1", orders.svc)); err != nil {
		t.Fatal(err)
	}
	if code, _ := tunnel(intruder); code != http.StatusBadGateway {
		t.Fatalf("tunnel from a denied identity: status %d, want 502", code)
	}
	if n := accepted.Load(); n != 1 {
		t.Fatalf("the app accepted %d connections, want the allowed one only", n)
	}
}

// TestAuthzInvalidNACKed: a malformed authorization refuses the snapshot
// and the proxy keeps enforcing the last good one.
func TestAuthzInvalidNACKed(t *testing.T) {
	m := newMesh(t, Options{})
	setAuthz(t, m.orders, "2", &meshv1.Authorization{DefaultAction: meshv1.AuthzAction_AUTHZ_DENY})
	in := &meshv1.Service{Name: "orders", Namespace: "default", Ports: m.orders.svc.GetPorts()}
	err := m.orders.proxy.Update(&meshv1.Snapshot{Version: "3", Inbound: in, InboundPolicy: &meshv1.InboundPolicy{
		Authorization: &meshv1.Authorization{Policies: []*meshv1.AuthzPolicy{allowPolicy("default/x")}}}})
	if err == nil || !strings.Contains(err.Error(), "inbound_policy.authorization") {
		t.Fatalf("Update = %v, want a NACK naming inbound_policy.authorization", err)
	}
	if resp, _ := get(t, proxyClient(m.client), "http://orders/", nil); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("last good (deny) config lost: %d", resp.StatusCode)
	}
}

// BenchmarkAuthzFilter: an allowed request through the inbound
// authorization stage against a policy of 10 rules allocates nothing.
func BenchmarkAuthzFilter(b *testing.B) {
	var rules []*meshv1.AuthzRule
	for i := range 10 {
		rules = append(rules, &meshv1.AuthzRule{From: azSrc(spiffeFor(fmt.Sprint("client-", i))),
			Methods: []string{"GET"}, Paths: []*meshv1.AuthzPath{{Match: &meshv1.AuthzPath_Prefix{Prefix: "/api"}}}})
	}
	c := &compiled{inbound: inboundConfig{key: "orders.default"}}
	if err := c.compileAuthz(&meshv1.Authorization{Policies: []*meshv1.AuthzPolicy{allowPolicy("default/p", rules...)}}, compileEnv{}); err != nil {
		b.Fatal(err)
	}
	p := &Proxy{}
	ok := &Response{Status: 200}
	h := p.authzFilter(HandlerFunc(func(*Exchange) *Response { return ok }))
	ex := &Exchange{cfg: c, PeerID: spiffeFor("client-9"), Method: "GET", Path: "/api/x", Header: http.Header{}, Port: 80}
	b.ReportAllocs()
	for b.Loop() {
		if h.Serve(ex) != ok {
			b.Fatal("denied")
		}
	}
}

// BenchmarkHopAuthz: one request across both proxies (HTTP/2 hop) with no
// AuthorizationPolicy, then with an ALLOW policy of 10 rules the caller
// matches only the last of: what authorization adds to a real request.
func BenchmarkHopAuthz(b *testing.B) {
	ca := newTestCA(b, "trellis.local")
	app := startApp(b, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) }))
	srv := startServer(b, ca, "orders", app, port(80, app, meshv1.Protocol_HTTP))
	client := startClient(b, ca, Options{})
	client.hopH2 = true
	if err := client.Update(snapshot("1", srv.svc)); err != nil {
		b.Fatal(err)
	}
	var rules []*meshv1.AuthzRule
	for i := range 9 {
		rules = append(rules, &meshv1.AuthzRule{From: azSrc(spiffeFor(fmt.Sprint("caller-", i))),
			Methods: []string{"GET", "POST"}, Paths: []*meshv1.AuthzPath{{Match: &meshv1.AuthzPath_Prefix{Prefix: fmt.Sprint("/api/v", i)}}}})
	}
	rules = append(rules, &meshv1.AuthzRule{From: azSrc(spiffeFor("frontend")),
		Methods: []string{"GET", "POST"}, Paths: []*meshv1.AuthzPath{{Match: &meshv1.AuthzPath_Prefix{Prefix: "/"}}}})
	for _, tc := range []struct {
		name string
		az   *meshv1.Authorization
	}{
		{"authz=off", nil},
		{"authz=10rules", &meshv1.Authorization{Policies: []*meshv1.AuthzPolicy{allowPolicy("default/bench", rules...)}}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			setAuthz(b, srv, tc.name, tc.az)
			tr := &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}
			defer tr.CloseIdleConnections()
			b.ReportAllocs()
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				req, _ := http.NewRequest("GET", "http://"+client.OutboundAddr()+"/bench", nil)
				req.Host = "orders"
				for pb.Next() {
					resp, err := tr.RoundTrip(req)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
				}
			})
		})
	}
}
