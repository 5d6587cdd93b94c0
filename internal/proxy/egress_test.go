package proxy

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// listenLoopback listens on 127.0.0.2 when the machine routes it (Linux
// does: all of 127/8 is loopback), else 127.0.0.1: a stand-in for the
// internet that no mesh name resolves to.
func listenLoopback(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// startInternet serves h on a loopback address outside the mesh.
func startInternet(t *testing.T, h http.Handler) string {
	t.Helper()
	ln := listenLoopback(t)
	srv := &http.Server{Handler: h}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// egressSnapshot is snapshot() with an outbound traffic policy.
func egressSnapshot(mode meshv1.OutboundTrafficPolicy_Mode, hosts []*meshv1.ExternalHost, svcs ...*meshv1.Service) *meshv1.Snapshot {
	s := snapshot("1", svcs...)
	s.OutboundTrafficPolicy = &meshv1.OutboundTrafficPolicy{Mode: mode, Namespaces: []string{"default", "shop"}, ExternalHosts: hosts}
	return s
}

func update(t *testing.T, p *Proxy, s *meshv1.Snapshot) {
	t.Helper()
	if err := p.Update(s); err != nil {
		t.Fatal(err)
	}
}

// TestEgressOutsideTheRegistry: an app with HTTP_PROXY set (the proxy
// client) reaches a host outside the mesh directly under ALLOW_ANY and is
// refused under REGISTRY_ONLY with 502 EG and a body that says what to do;
// both counted; a two-label host whose second label is no namespace of the
// mesh is never subscribed to, one whose second label is still is.
func TestEgressOutsideTheRegistry(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	addr := startInternet(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if v := r.Header.Get("Via"); !strings.HasPrefix(v, "1.1 trellis-") {
			w.WriteHeader(http.StatusTeapot) // the proxy's Via entry is missing
		}
		fmt.Fprintf(w, "internet saw %s %s", r.Host, r.URL.Path)
	}))
	var subs sync.Map
	c := startClient(t, ca, Options{Subscribe: func(s string) { subs.Store(s, true) }})
	update(t, c, egressSnapshot(meshv1.OutboundTrafficPolicy_ALLOW_ANY, nil))
	hc := proxyClient(c)

	resp, body := get(t, hc, "http://"+addr+"/hello", nil)
	if resp.StatusCode != 200 || body != "internet saw "+addr+" /hello" {
		t.Fatalf("ALLOW_ANY: %d %q, want the outside server's answer", resp.StatusCode, body)
	}
	waitCounted(t, c, "outbound", "outbound,unknown,200,-")
	assertMetric(t, c, `trellis_proxy_egress_requests_total{decision="passthrough",policy="allow_any",protocol="http"} 1`)

	// example.com is not service example in namespace com: no subscription.
	resp, _ = get(t, hc, "http://example.invalid:1/", nil)
	if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("X-Trellis-Error") != "UF" {
		t.Fatalf("unreachable outside host: %d %s, want 502 UF", resp.StatusCode, resp.Header.Get("X-Trellis-Error"))
	}
	// orders.shop has the mesh's form (shop is a namespace): subscribed.
	_, _ = get(t, hc, "http://orders.shop/", nil)
	if _, ok := subs.Load("example.invalid"); ok {
		t.Error("subscribed to example.invalid as a mesh service")
	}
	if _, ok := subs.Load("orders.shop"); !ok {
		t.Error("orders.shop (a mesh namespace) was not subscribed to")
	}

	// The app asking for the proxy's own port: refused once, not looped.
	resp, body = get(t, hc, "http://"+c.OutboundAddr()+"/", nil)
	if resp.StatusCode != http.StatusLoopDetected || !strings.Contains(body, "came back to this proxy") {
		t.Fatalf("request to the proxy's own port: %d %q, want 508", resp.StatusCode, body)
	}

	update(t, c, egressSnapshot(meshv1.OutboundTrafficPolicy_REGISTRY_ONLY, nil))
	resp, body = get(t, hc, "http://"+addr+"/hello", nil)
	if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("X-Trellis-Error") != "EG" ||
		!strings.Contains(body, "REGISTRY_ONLY") || !strings.Contains(body, "ExternalService") {
		t.Fatalf("REGISTRY_ONLY: %d %s %q, want 502 EG saying to register an ExternalService", resp.StatusCode, resp.Header.Get("X-Trellis-Error"), body)
	}
	assertMetric(t, c, `trellis_proxy_egress_requests_total{decision="refused",policy="registry_only",protocol="http"} 1`)
}

// connect sends CONNECT target through the proxy's outbound port.
func connect(t *testing.T, p *Proxy, target string) (net.Conn, *bufio.Reader, *http.Response) {
	t.Helper()
	conn, err := net.Dial("tcp", p.OutboundAddr())
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

// startEchoOutside is startEcho on the outside loopback address.
func startEchoOutside(t *testing.T) string {
	t.Helper()
	ln := listenLoopback(t)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

// TestEgressConnectOutside: CONNECT to a host outside the registry is
// tunnelled directly under ALLOW_ANY and refused (403 EG) under
// REGISTRY_ONLY; both counted as tcp.
func TestEgressConnectOutside(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	echo := startEchoOutside(t)
	c := startClient(t, ca, Options{})
	update(t, c, egressSnapshot(meshv1.OutboundTrafficPolicy_ALLOW_ANY, nil))
	conn, br, resp := connect(t, c, echo)
	if resp.StatusCode != 200 {
		t.Fatalf("ALLOW_ANY CONNECT: %d", resp.StatusCode)
	}
	echoRoundTrip(t, conn, br)
	assertMetric(t, c, `trellis_proxy_egress_requests_total{decision="passthrough",policy="allow_any",protocol="tcp"} 1`)

	update(t, c, egressSnapshot(meshv1.OutboundTrafficPolicy_REGISTRY_ONLY, nil))
	_, _, resp = connect(t, c, echo)
	if resp.StatusCode != http.StatusForbidden || resp.Header.Get("X-Trellis-Error") != "EG" {
		t.Fatalf("REGISTRY_ONLY CONNECT: %d %s, want 403 EG", resp.StatusCode, resp.Header.Get("X-Trellis-Error"))
	}
	assertMetric(t, c, `trellis_proxy_egress_requests_total{decision="refused",policy="registry_only",protocol="tcp"} 1`)
}

// externalSvc is an ExternalService "payments" called api.payments.test,
// with addr as its one fixed endpoint.
func externalSvc(addr string, ports ...*meshv1.Port) *meshv1.Service {
	if len(ports) == 0 {
		ports = []*meshv1.Port{{Name: "http", Port: 80, Protocol: meshv1.Protocol_HTTP}}
	}
	return &meshv1.Service{
		Name: "payments", Namespace: "default", Ports: ports,
		External:  &meshv1.External{Hosts: []string{"api.payments.test"}},
		Endpoints: []*meshv1.Endpoint{{Id: "payments-0", Service: "payments", Namespace: "default", Address: addr, Healthy: true}},
	}
}

var paymentsHost = []*meshv1.ExternalHost{{Host: "api.payments.test", Service: "payments", Namespace: "default"}}

// TestExternalServiceRetriesAndTimeouts: an ExternalService with a fixed
// endpoint is reached by its host name under REGISTRY_ONLY, through its
// BackendPolicy's retries (a server failing once then answering: the retry
// is visible to the server and in the metrics) and its route's timeout.
func TestExternalServiceRetriesAndTimeouts(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	var calls atomic.Int32
	addr := startInternet(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(300 * time.Millisecond)
		}
		if calls.Add(1) == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		if r.Header.Get("X-Trellis-Port") != "" || r.Header.Get("X-Trellis-Source-Service") != "" {
			w.WriteHeader(http.StatusTeapot) // mesh headers leaked outside
			return
		}
		w.Header().Set("X-Trellis-Error", "UF") // an outsider's forgery
		fmt.Fprintf(w, "paid via %s", r.Host)
	}))
	svc := externalSvc(addr)
	svc.BackendPolicy = &meshv1.BackendPolicy{Retry: testRetry(2)}
	svc.Routes = []*meshv1.Route{
		{Name: "slow", Matches: []*meshv1.Match{{Path: &meshv1.PathMatch{Type: meshv1.PathMatch_EXACT, Value: "/slow"}}},
			Backends: []*meshv1.Backend{{Service: "payments", Namespace: "default", Weight: 1}},
			Timeouts: &meshv1.RouteTimeouts{Request: durationpb.New(100 * time.Millisecond)}},
		{Name: "rest", Backends: []*meshv1.Backend{{Service: "payments", Namespace: "default", Weight: 1}}},
	}
	var subscribed atomic.Value
	c := startClient(t, ca, Options{Subscribe: func(s string) { subscribed.Store(s) }})
	// First without the service: the proxy subscribes to it by its key.
	update(t, c, egressSnapshot(meshv1.OutboundTrafficPolicy_REGISTRY_ONLY, paymentsHost))
	go func() {
		for subscribed.Load() == nil {
			time.Sleep(5 * time.Millisecond)
		}
		update(t, c, egressSnapshot(meshv1.OutboundTrafficPolicy_REGISTRY_ONLY, paymentsHost, svc))
	}()
	resp, body := get(t, proxyClient(c), "http://api.payments.test/pay", nil)
	if resp.StatusCode != 200 || body != "paid via api.payments.test" {
		t.Fatalf("external service: %d %q, want 200 after one retry", resp.StatusCode, body)
	}
	if got := subscribed.Load(); got != "payments.default" {
		t.Errorf("subscribed to %v, want payments.default", got)
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("server saw %d calls, want 2 (one retry)", n)
	}
	if resp.Header.Get("X-Trellis-Error") != "" {
		t.Error("an outside server's X-Trellis-Error reached the app")
	}
	assertMetric(t, c, `trellis_proxy_retries_total{destination_service="payments.default",result="sent"} 1`)
	waitCounted(t, c, "outbound", "outbound,payments.default,200,-")

	resp, _ = get(t, proxyClient(c), "http://api.payments.test/slow", nil)
	if resp.StatusCode != http.StatusGatewayTimeout || resp.Header.Get("X-Trellis-Error") != "UT" {
		t.Fatalf("route timeout: %d %s, want 504 UT", resp.StatusCode, resp.Header.Get("X-Trellis-Error"))
	}
}

// TestExternalServiceTLSOrigination: the app speaks plaintext HTTP, the
// proxy originates TLS to the external server, verifying it with the
// ExternalService's CA file and sending its SNI, which the server checks;
// MUTUAL presents the client certificate. A CA file the proxy cannot read
// refuses the snapshot, and the last good one stays.
func TestExternalServiceTLSOrigination(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	ext := newTestCA(t, "example.org") // the outside world's CA
	dir := t.TempDir()
	caFile := writePEM(t, dir, "ca.pem", "CERTIFICATE", ext.Cert.Raw)
	leaf := ext.TLSCertificate(t, "", func(c *x509.Certificate) { c.DNSNames = []string{"tls.payments.test"} })
	clientCert := ext.TLSCertificate(t, "", func(c *x509.Certificate) { c.DNSNames = []string{"client.test"} })
	certFile := writePEM(t, dir, "client.pem", "CERTIFICATE", clientCert.Certificate[0])
	keyDER, err := x509.MarshalPKCS8PrivateKey(clientCert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := writePEM(t, dir, "client.key", "PRIVATE KEY", keyDER)

	var sni atomic.Value
	ln := listenLoopback(t)
	srv := &http.Server{
		ErrorLog: log.New(io.Discard, "", 0), // the wrong-SNI handshake below fails on purpose
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			peer := "none"
			if len(r.TLS.PeerCertificates) > 0 {
				peer = r.TLS.PeerCertificates[0].DNSNames[0]
			}
			w.Header().Set("X-Proto", r.Proto)
			fmt.Fprintf(w, "tls %s sni=%s client=%s", r.Host, r.TLS.ServerName, peer)
		}),
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{leaf},
			ClientAuth:   tls.VerifyClientCertIfGiven,
			ClientCAs:    ext.Pool(),
			GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
				sni.Store(h.ServerName)
				return nil, nil
			},
		},
	}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })

	svc := externalSvc(ln.Addr().String())
	svc.External.Tls = &meshv1.TLSOrigination{Mode: meshv1.TLSOrigination_SIMPLE, Sni: "tls.payments.test", CaCertificates: caFile}
	c := startClient(t, ca, Options{})
	update(t, c, egressSnapshot(meshv1.OutboundTrafficPolicy_ALLOW_ANY, paymentsHost, svc))
	resp, body := get(t, proxyClient(c), "http://api.payments.test/x", nil)
	if resp.StatusCode != 200 || body != "tls api.payments.test sni=tls.payments.test client=none" {
		t.Fatalf("SIMPLE: %d %q", resp.StatusCode, body)
	}
	if got := sni.Load(); got != "tls.payments.test" {
		t.Errorf("server saw SNI %v", got)
	}
	if p := resp.Header.Get("X-Proto"); p != "HTTP/1.1" {
		t.Errorf("http port spoke %s to the server, want HTTP/1.1", p)
	}
	// An http2 port: HTTP/2 over the originated TLS (ALPN h2), whatever
	// the app spoke to its proxy.
	h2svc := externalSvc(ln.Addr().String(), &meshv1.Port{Name: "h2", Port: 80, Protocol: meshv1.Protocol_HTTP2})
	h2svc.External.Tls = svc.External.Tls
	update(t, c, egressSnapshot(meshv1.OutboundTrafficPolicy_ALLOW_ANY, paymentsHost, h2svc))
	if resp, _ = get(t, proxyClient(c), "http://api.payments.test/x", nil); resp.StatusCode != 200 || resp.Header.Get("X-Proto") != "HTTP/2.0" {
		t.Fatalf("http2 port: %d %s, want 200 over HTTP/2", resp.StatusCode, resp.Header.Get("X-Proto"))
	}

	svc.External.Tls = &meshv1.TLSOrigination{Mode: meshv1.TLSOrigination_MUTUAL, Sni: "tls.payments.test", CaCertificates: caFile,
		ClientCertificate: certFile, PrivateKey: keyFile}
	update(t, c, egressSnapshot(meshv1.OutboundTrafficPolicy_ALLOW_ANY, paymentsHost, svc))
	if _, body = get(t, proxyClient(c), "http://api.payments.test/x", nil); !strings.HasSuffix(body, "client=client.test") {
		t.Fatalf("MUTUAL: %q, want the client certificate presented", body)
	}

	// A wrong SNI fails verification: 502 UF, the request never sent.
	svc.External.Tls = &meshv1.TLSOrigination{Mode: meshv1.TLSOrigination_SIMPLE, Sni: "other.test", CaCertificates: caFile}
	update(t, c, egressSnapshot(meshv1.OutboundTrafficPolicy_ALLOW_ANY, paymentsHost, svc))
	if resp, _ = get(t, proxyClient(c), "http://api.payments.test/x", nil); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("SNI the certificate does not name: %d, want 502", resp.StatusCode)
	}

	svc.External.Tls = &meshv1.TLSOrigination{Mode: meshv1.TLSOrigination_SIMPLE, CaCertificates: filepath.Join(dir, "missing.pem")}
	err = c.Update(egressSnapshot(meshv1.OutboundTrafficPolicy_ALLOW_ANY, paymentsHost, svc))
	if err == nil || !strings.Contains(err.Error(), "services[0].external.tls.ca_certificates") {
		t.Fatalf("missing CA file: %v, want a NACK naming the field", err)
	}
}

// writePEM writes one PEM block to dir/name and returns its path.
func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestExternalServiceDNSAndTunnel: under REGISTRY_ONLY, an ExternalService
// resolved by DNS whose host is the outside server's IP is reached both by
// CONNECT to its tcp port (tunnelled straight to the host the request
// named, counted as a tunnel to the service) and by HTTP on its http port;
// a CONNECT to its http port is refused as for a mesh service.
func TestExternalServiceDNSAndTunnel(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	echo := startEchoOutside(t)
	ip, echoPort, _ := net.SplitHostPort(echo)
	web := startInternet(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "web %s", r.Host) }))
	_, webPort, _ := net.SplitHostPort(web)
	tcpPort, httpPort := mustPort(t, echoPort), mustPort(t, webPort)
	svc := &meshv1.Service{
		Name: "outside", Namespace: "default",
		Ports: []*meshv1.Port{{Name: "tcp", Port: tcpPort, Protocol: meshv1.Protocol_TCP}, {Name: "http", Port: httpPort, Protocol: meshv1.Protocol_HTTP}},
		// hosts[0] listens on nothing: DNS resolution dials the host the
		// request named, not the first one.
		External: &meshv1.External{Resolution: meshv1.External_DNS, Hosts: []string{"127.0.0.9", ip}},
	}
	hosts := []*meshv1.ExternalHost{{Host: "127.0.0.9", Service: "outside", Namespace: "default"}, {Host: ip, Service: "outside", Namespace: "default"}}
	c := startClient(t, ca, Options{})
	update(t, c, egressSnapshot(meshv1.OutboundTrafficPolicy_REGISTRY_ONLY, hosts, svc))

	conn, br, resp := connect(t, c, echo)
	if resp.StatusCode != 200 {
		t.Fatalf("CONNECT to the external tcp port: %d", resp.StatusCode)
	}
	echoRoundTrip(t, conn, br)
	conn.Close()
	assertMetric(t, c, `trellis_tcp_connections_opened_total{reporter="source",destination_service="outside",destination_namespace="default"} 1`)

	resp, body := get(t, proxyClient(c), "http://"+web+"/", nil)
	if resp.StatusCode != 200 || body != "web "+web {
		t.Fatalf("HTTP to the external http port: %d %q", resp.StatusCode, body)
	}
	if _, _, resp = connect(t, c, web); resp.StatusCode != http.StatusForbidden || resp.Header.Get("X-Trellis-Error") != "NR" {
		t.Fatalf("CONNECT to the external http port: %d %s, want 403 NR", resp.StatusCode, resp.Header.Get("X-Trellis-Error"))
	}
	assertMetric(t, c, `trellis_proxy_egress_requests_total{decision="refused",policy="registry_only",protocol="tcp"} 0`)
}

func mustPort(t *testing.T, s string) uint32 {
	t.Helper()
	p, ok := parsePort(s)
	if !ok {
		t.Fatalf("port %q", s)
	}
	return p
}

// TestEgressSnapshotRefused: a malformed outbound traffic policy or
// external part is refused (NACK) naming the field, the last good config
// kept.
func TestEgressSnapshotRefused(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	c := startClient(t, ca, Options{})
	update(t, c, egressSnapshot(meshv1.OutboundTrafficPolicy_REGISTRY_ONLY, nil))
	good := c.cfg.Load()
	ext := func(mod func(*meshv1.Service)) *meshv1.Service {
		s := externalSvc("203.0.113.1")
		mod(s)
		return s
	}
	for _, tc := range []struct {
		name string
		snap *meshv1.Snapshot
		want string
	}{
		{"mode", egressSnapshot(7, nil), "outbound_traffic_policy.mode: unknown mode 7"},
		{"namespace", &meshv1.Snapshot{OutboundTrafficPolicy: &meshv1.OutboundTrafficPolicy{Namespaces: []string{"Shop"}}}, `outbound_traffic_policy.namespaces[0]: "Shop" is not a DNS label`},
		{"host", egressSnapshot(0, []*meshv1.ExternalHost{{Host: "a b", Service: "x", Namespace: "default"}}), `outbound_traffic_policy.external_hosts[0].host: "a b"`},
		{"host twice", egressSnapshot(0, append(paymentsHost, paymentsHost...)), `external_hosts[1].host: "api.payments.test" is listed twice`},
		{"no hosts", egressSnapshot(0, nil, ext(func(s *meshv1.Service) { s.External.Hosts = nil })), "services[0].external.hosts: an external service needs at least one host"},
		{"identity", egressSnapshot(0, nil, ext(func(s *meshv1.Service) { s.Endpoints[0].Identity = spiffeFor("x") })), "services[0].endpoints[0].identity: an external endpoint has no mesh identity"},
		{"address", egressSnapshot(0, nil, ext(func(s *meshv1.Service) { s.Endpoints[0].Address = "a:b:c]" })), `services[0].endpoints[0].address: "a:b:c]"`},
		{"dns with endpoints", egressSnapshot(0, nil, ext(func(s *meshv1.Service) { s.External.Resolution = meshv1.External_DNS })), "services[0].endpoints: a DNS-resolved external service lists no endpoints"},
		{"tls mode", egressSnapshot(0, nil, ext(func(s *meshv1.Service) { s.External.Tls = &meshv1.TLSOrigination{Mode: 9} })), "services[0].external.tls.mode: unknown mode 9"},
		{"client key", egressSnapshot(0, nil, ext(func(s *meshv1.Service) {
			s.External.Tls = &meshv1.TLSOrigination{Mode: meshv1.TLSOrigination_MUTUAL, ClientCertificate: "/nonexistent/c.pem", PrivateKey: "/nonexistent/k.pem"}
		})), "services[0].external.tls.client_certificate: open /nonexistent/c.pem"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := c.Update(tc.snap)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Update: %v, want %q", err, tc.want)
			}
			if c.cfg.Load() != good {
				t.Fatal("a refused snapshot replaced the last good one")
			}
		})
	}
}

// FuzzEgressAddress: the proxy's endpoint address and host checks never
// panic; an endpoint split succeeds on what it joins; dialAddr keeps a
// fixed address's own port and otherwise takes the authority's.
func FuzzEgressAddress(f *testing.F) {
	for _, s := range []string{"10.0.0.1", "10.0.0.1:80", "[::1]", "[::1]:443", "::1", "a.example", "a.example:8443", "a:b", "[", "]:1", ""} {
		f.Add(s, "api.example:443")
	}
	f.Fuzz(func(t *testing.T, fixed, authority string) {
		_ = validExternalHost(fixed)
		h, p, ok := splitEndpoint(fixed)
		if !ok {
			return
		}
		if h == "" {
			t.Fatalf("splitEndpoint(%q) accepted an empty host", fixed)
		}
		got := dialAddr(fixed, authority)
		if p != "" && got != fixed {
			t.Fatalf("dialAddr(%q, %q) = %q: a fixed port must win", fixed, authority, got)
		}
		if _, ap, err := net.SplitHostPort(authority); err == nil && p == "" {
			if _, gp, err := net.SplitHostPort(got); err != nil || gp != ap {
				t.Fatalf("dialAddr(%q, %q) = %q: want the authority's port %q", fixed, authority, got, ap)
			}
		}
	})
}
