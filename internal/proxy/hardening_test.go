package proxy

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

func TestMeshHeader(t *testing.T) {
	for name, want := range map[string]bool{
		"X-Trellis-Client-Id": true,
		"x-trellis-client-id": true,
		"X_Trellis_Client_Id": true,
		"X_trellis_client_id": true,
		"X-TRELLIS-PORT":      true,
		"x-trellis_anything":  true,
		"X-Trellis-":          true,
		"X-Trellis":           false,
		"X-Trellisx-Id":       false,
		"Y-Trellis-Client-Id": false,
		"X-Forwarded-For":     false,
		"":                    false,
	} {
		if got := meshHeader(name); got != want {
			t.Errorf("meshHeader(%q) = %v, want %v", name, got, want)
		}
	}
}

// meshSeer is an app that answers with every mesh-owned header and trailer
// it received, "Name=v1|v2" per line, sorted.
func meshSeer() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		var seen []string
		for k, vv := range r.Header {
			if meshHeader(k) {
				seen = append(seen, k+"="+strings.Join(vv, "|"))
			}
		}
		for k, vv := range r.Trailer {
			if meshHeader(k) {
				seen = append(seen, "trailer "+k+"="+strings.Join(vv, "|"))
			}
		}
		slices.Sort(seen)
		_, _ = io.WriteString(w, strings.Join(seen, "\n"))
	})
}

func refusedLine(reason string, n int) string {
	return `trellis_proxy_refused_total{reason="` + reason + `"} ` + strconv.Itoa(n)
}

// TestForgedMeshHeadersNeverReachTheApp: the calling app's identity header,
// its underscore twin, other X-Trellis-* names and a request trailer are
// stripped on HTTP/1.1 and h2c; the app behind the receiving proxy sees
// exactly one identity, the verified one.
func TestForgedMeshHeadersNeverReachTheApp(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	app := startApp(t, meshSeer())
	orders := startServer(t, ca, "orders", app, port(80, app, meshv1.Protocol_HTTP))
	client := startClient(t, ca, Options{})
	if err := client.Update(snapshot("1", orders.svc)); err != nil {
		t.Fatal(err)
	}
	want := HeaderClientID + "=" + spiffeFor("frontend")
	forged := map[string]string{
		HeaderClientID:        spiffeFor("admin"),
		"X_Trellis_Client_Id": spiffeFor("admin"),
		"X-Trellis-Port":      "82",
		"x-trellis-anything":  "1",
	}
	var h2 http.Protocols
	h2.SetUnencryptedHTTP2(true)
	h2tr := &http.Transport{Protocols: &h2}
	defer h2tr.CloseIdleConnections()
	for name, c := range map[string]*http.Client{
		"HTTP/1.1": proxyClient(client),
		"h2c":      {Transport: h2tr, Timeout: 10 * time.Second},
	} {
		t.Run(name, func(t *testing.T) {
			u := "http://orders/x"
			if name == "h2c" {
				u = "http://" + client.OutboundAddr() + "/x"
			}
			req, _ := http.NewRequest("GET", u, nil)
			req.Host = "orders"
			for k, v := range forged {
				req.Header[k] = []string{v} // as sent, not canonicalised
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(body) != want {
				t.Fatalf("app saw %d %q, want only %q", resp.StatusCode, body, want)
			}
		})
	}
	// A chunked HTTP/1.1 request declaring the identity as a trailer.
	conn, err := net.Dial("tcp", client.OutboundAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(conn, "POST /t HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: chunked\r\nTrailer: X-Trellis-Client-Id, X_Trellis_Client_Id\r\n\r\n"+
		"3\r\nabc\r\n0\r\nX-Trellis-Client-Id: "+spiffeFor("admin")+"\r\nX_Trellis_Client_Id: "+spiffeFor("admin")+"\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != want {
		t.Fatalf("trailer: app saw %d %q, want only %q", resp.StatusCode, body, want)
	}
	assertMetric(t, client, refusedLine("mesh_header", 3))
}

// TestInboundReplacesIdentityHeader: a mesh member that sends its own
// X-Trellis-Client-Id (or its twin) straight to a peer's inbound port
// cannot make the app see another identity: the inbound proxy replaces it.
func TestInboundReplacesIdentityHeader(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	app := startApp(t, meshSeer())
	orders := startServer(t, ca, "orders", app, port(80, app, meshv1.Protocol_HTTP))
	s := ca.svid(t, spiffeFor("frontend"))
	cfg := tlsconfig.MTLSClientConfig(s, ca.Bundle(ca.td), tlsconfig.AuthorizeAny())
	for _, proto := range []string{"h2", "http/1.1"} {
		t.Run(proto, func(t *testing.T) {
			c := cfg.Clone()
			c.NextProtos = []string{proto}
			var protos http.Protocols
			protos.SetHTTP1(proto == "http/1.1")
			protos.SetHTTP2(proto == "h2")
			tr := &http.Transport{TLSClientConfig: c, Protocols: &protos}
			defer tr.CloseIdleConnections()
			req, _ := http.NewRequest("GET", "https://"+orders.proxy.InboundAddr()+"/", nil)
			req.Header[HeaderClientID] = []string{spiffeFor("admin")}
			req.Header["X_Trellis_Client_Id"] = []string{spiffeFor("admin")}
			resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if want := HeaderClientID + "=" + spiffeFor("frontend"); resp.StatusCode != 200 || string(body) != want {
				t.Fatalf("app saw %d %q, want only %q", resp.StatusCode, body, want)
			}
		})
	}
	assertMetric(t, orders.proxy, refusedLine("mesh_header", 2))
}

// TestAppResponseCannotForgeMeshHeaders: an app's X-Trellis-Error (or
// twin, or trailer) does not pass for its proxy's.
func TestAppResponseCannotForgeMeshHeaders(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Trellis-Error")
		w.Header()["X_Trellis_Error"] = []string{"UF"}
		w.Header().Set(headerError, "UF")
		w.WriteHeader(502)
		_, _ = io.WriteString(w, "app body")
		w.Header().Set("X-Trellis-Error", "UF")
	}))
	orders := startServer(t, ca, "orders", app, port(80, app, meshv1.Protocol_HTTP))
	client := startClient(t, ca, Options{})
	if err := client.Update(snapshot("1", orders.svc)); err != nil {
		t.Fatal(err)
	}
	resp, body := get(t, proxyClient(client), "http://orders/", nil)
	for k := range resp.Header {
		if meshHeader(k) {
			t.Errorf("caller saw app's %s: %v", k, resp.Header[k])
		}
	}
	for k := range resp.Trailer {
		if meshHeader(k) && resp.Trailer.Get(k) != "" {
			t.Errorf("caller saw app's trailer %s", k)
		}
	}
	if resp.StatusCode != 502 || body != "app body" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}

// dialTunnelRaw opens the trellis-tcp ALPN to addr with cfg and sends the
// preamble; it returns the server's reply line, or the handshake error.
func dialTunnelRaw(t *testing.T, addr string, cfg *tls.Config, port string) (string, error) {
	t.Helper()
	c := cfg.Clone()
	c.NextProtos = []string{ALPNTCP}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, c)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, port+"\n"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	return strings.TrimSuffix(line, "\n"), err
}

// TestInboundTunnelOnlyToTCPPorts: a valid peer's tunnel to an HTTP port is
// refused (it would bypass the inbound chain); to a TCP port it opens.
func TestInboundTunnelOnlyToTCPPorts(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	app := startApp(t, whoami("orders"))
	echo := startEcho(t)
	orders := startServer(t, ca, "orders", app,
		port(80, app, meshv1.Protocol_HTTP), port(81, app, meshv1.Protocol_GRPC), port(82, echo, meshv1.Protocol_TCP))
	s := ca.svid(t, spiffeFor("frontend"))
	cfg := tlsconfig.MTLSClientConfig(s, ca.Bundle(ca.td), tlsconfig.AuthorizeAny())
	for port, want := range map[string]string{
		"80": "error port 80 of orders.default is not a tcp port",
		"81": "error port 81 of orders.default is not a tcp port",
		"82": "ok",
	} {
		got, err := dialTunnelRaw(t, orders.proxy.InboundAddr(), cfg, port)
		if err != nil || got != want {
			t.Errorf("tunnel to port %s: %q, %v; want %q", port, got, err, want)
		}
	}
	assertMetric(t, orders.proxy, refusedLine("tunnel_port", 2))
}

// TestConnectOnlyToTCPPorts: the client proxy refuses CONNECT to an HTTP or
// gRPC port, before dialing anyone.
func TestConnectOnlyToTCPPorts(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	app := startApp(t, whoami("orders"))
	echo := startEcho(t)
	orders := startServer(t, ca, "orders", app,
		port(80, app, meshv1.Protocol_HTTP), port(81, app, meshv1.Protocol_GRPC), port(82, echo, meshv1.Protocol_TCP))
	client := startClient(t, ca, Options{})
	if err := client.Update(snapshot("1", orders.svc)); err != nil {
		t.Fatal(err)
	}
	for target, want := range map[string]int{"orders:80": 403, "orders:81": 403, "orders:82": 200} {
		resp := rawRequest(t, client.OutboundAddr(), "CONNECT "+target+" HTTP/1.1\r\nHost: "+target+"\r\n\r\n")
		if resp.StatusCode != want {
			t.Errorf("CONNECT %s: %d, want %d", target, resp.StatusCode, want)
		}
	}
	assertMetric(t, client, refusedLine("tunnel_port", 2))
	assertMetric(t, orders.proxy, refusedLine("tunnel_port", 0))
}

// TestTunnelRefusesCertWithoutSPIFFEID: the inbound refuses a client
// certificate that chains to the trust bundle but names no SPIFFE ID, even
// when ServerTLS itself checks only the chain.
func TestTunnelRefusesCertWithoutSPIFFEID(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	echo := startEcho(t)
	serverCert := ca.TLSCertificate(t, spiffeFor("orders"))
	p := startProxy(t, Options{
		Service: "orders", AppAddr: echo, InboundAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		// Chain only: the proxy must add the SPIFFE ID check itself.
		ServerTLS: &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool(), MinVersion: tls.VersionTLS13},
	})
	if err := p.Update(&meshv1.Snapshot{Version: "1", Inbound: &meshv1.Service{Name: "orders", Namespace: "default", Ports: []*meshv1.Port{port(82, echo, meshv1.Protocol_TCP)}}}); err != nil {
		t.Fatal(err)
	}
	noID := ca.TLSCertificate(t, "")
	leaf, _ := x509.ParseCertificate(noID.Certificate[0])
	if len(leaf.URIs) != 0 {
		t.Fatalf("test certificate has URIs %v", leaf.URIs)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{noID}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13} //nolint:gosec // the test is about the server
	if got, err := dialTunnelRaw(t, p.InboundAddr(), cfg, "82"); err == nil {
		t.Fatalf("tunnel with a certificate without SPIFFE ID: %q, want a refused handshake", got)
	}
	withID := &tls.Config{Certificates: []tls.Certificate{ca.TLSCertificate(t, spiffeFor("frontend"))}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13} //nolint:gosec // as above
	if got, err := dialTunnelRaw(t, p.InboundAddr(), withID, "82"); err != nil || got != "ok" {
		t.Fatalf("tunnel with a SPIFFE ID: %q, %v", got, err)
	}
	assertMetric(t, p, refusedLine("bad_identity", 1))
}

// TestSecureNamingChainOnlyClientTLS: the client proxy refuses an endpoint whose certificate
// is chain-valid but names another identity than the endpoint's registered
// one. The client's TLS config here checks only the chain, so the test
// fails if the proxy's own check (verifyPeerID) goes.
func TestSecureNamingChainOnlyClientTLS(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	app := startApp(t, whoami("impostor"))
	impostor := startProxy(t, Options{
		Service: "orders", AppAddr: app, InboundAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		ServerTLS: ca.serverTLS(ca.svid(t, spiffeFor("payments"))),
	})
	if err := impostor.Update(&meshv1.Snapshot{Version: "1", Inbound: &meshv1.Service{Name: "orders", Namespace: "default"}}); err != nil {
		t.Fatal(err)
	}
	s := ca.svid(t, spiffeFor("frontend"))
	chainOnly := func(string) *tls.Config {
		return tlsconfig.MTLSClientConfig(s, ca.Bundle(ca.td), tlsconfig.AuthorizeAny())
	}
	client := startClient(t, ca, Options{ClientTLS: chainOnly})
	svc := &meshv1.Service{Name: "orders", Namespace: "default", Endpoints: []*meshv1.Endpoint{{
		Id: "orders-1", Service: "orders", Namespace: "default", Address: impostor.InboundAddr(),
		Identity: spiffeFor("orders"), Healthy: true,
	}}}
	if err := client.Update(snapshot("1", svc)); err != nil {
		t.Fatal(err)
	}
	resp, body := get(t, proxyClient(client), "http://orders/", nil)
	if resp.StatusCode != http.StatusBadGateway || resp.Header.Get(headerError) != "UF" {
		t.Fatalf("impostor endpoint: %d %s %q, want 502 UF", resp.StatusCode, resp.Header.Get(headerError), body)
	}
	if n := refusedCount(t, client, "peer_identity"); n < 1 {
		t.Fatalf("peer_identity refusals = %d, want >= 1", n)
	}
}

// refusedCount reads trellis_proxy_refused_total{reason} from p's /metrics.
func refusedCount(t *testing.T, p *Proxy, reason string) int {
	t.Helper()
	resp, err := http.Get((&url.URL{Scheme: "http", Host: p.AdminAddr(), Path: "/metrics"}).String())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	prefix := `trellis_proxy_refused_total{reason="` + reason + `"} `
	for l := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, prefix); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	t.Fatalf("no %s in /metrics", prefix)
	return 0
}

// rawExchange writes raw to addr and reads one response; it reports
// whether the proxy closed the connection after it.
// rawStream writes raw on a new connection and returns all the proxy
// sends until it closes the connection (or 5 s pass).
func rawStream(t *testing.T, addr, raw string) string {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(conn)
	if err != nil {
		t.Errorf("%q: the connection was not closed: %v", raw, err)
	}
	return string(b)
}

func rawExchange(t *testing.T, addr, raw string) (*http.Response, string, bool) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("%q: %v", raw, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	// A refused connection is closed at once; an open one stays so.
	_ = conn.SetReadDeadline(time.Now().Add(time.Second))
	_, err = br.ReadByte()
	return resp, string(body), err == io.EOF
}

// TestSmugglingShapesRefusedAtTheEdge: ambiguous HTTP/1.1 framing gets 400
// from the proxy the app called, which closes the connection; the request
// never reaches an endpoint. Pipelining a clean request first changes
// nothing.
func TestSmugglingShapesRefusedAtTheEdge(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	var reached atomic.Int64
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	orders := startServer(t, ca, "orders", app, port(80, app, meshv1.Protocol_HTTP))
	client := startClient(t, ca, Options{Upstreams: map[string]string{"orders": "127.0.0.1:0"}})
	if err := client.Update(snapshot("1", orders.svc)); err != nil {
		t.Fatal(err)
	}
	shapes := map[string]string{
		"CL+TE":          "POST / HTTP/1.1\r\nHost: orders\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"TE+CL":          "POST / HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
		"double CL":      "POST / HTTP/1.1\r\nHost: orders\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
		"obs-fold":       "GET / HTTP/1.1\r\nHost: orders\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n",
		"bad chunk size": "POST / HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
		"TE on HTTP/1.0": "POST / HTTP/1.0\r\nHost: orders\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
	}
	for name, raw := range shapes {
		for _, addr := range []string{client.OutboundAddr(), client.UpstreamAddr("orders")} {
			resp, body, closed := rawExchange(t, addr, raw)
			if resp.StatusCode != http.StatusBadRequest || !closed {
				t.Errorf("%s to %s: %d %q closed=%v, want 400 and close", name, addr, resp.StatusCode, body, closed)
			}
		}
	}
	// A clean request pipelined before a smuggling one: the first is
	// answered, the second refused and the connection closed; the second
	// never runs.
	if got := rawStream(t, client.OutboundAddr(), "GET / HTTP/1.1\r\nHost: orders\r\n\r\n"+shapes["CL+TE"]); !strings.HasPrefix(got, "HTTP/1.1 200 OK\r\n") ||
		strings.Count(got, "HTTP/1.1 ") != 2 || !strings.Contains(got, "HTTP/1.1 400 Bad Request\r\n") {
		t.Errorf("pipelined clean then CL+TE: %q, want 200 then 400 and close", got)
	}
	if n := reached.Load(); n > 1 {
		t.Errorf("the app saw %d requests, want at most the clean pipelined one", n)
	}
	if n := refusedCount(t, client, "framing"); n != 2*len(shapes)+1 {
		t.Errorf("framing refusals = %d, want %d", n, 2*len(shapes)+1)
	}
	assertMetric(t, orders.proxy, refusedLine("framing", 0))
}

// TestOversizeHeader431: a request header over the limit gets 431 from the
// proxy that received it (counted there), not a 502 charged to an endpoint,
// whether the edge or net/http itself sees it first.
func TestOversizeHeader431(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	var reached atomic.Int64
	app := startApp(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) { reached.Add(1) }))
	orders := startServer(t, ca, "orders", app, port(80, app, meshv1.Protocol_HTTP))
	client := startClient(t, ca, Options{Limits: Limits{MaxHeaderBytes: 8 << 10}})
	if err := client.Update(snapshot("1", orders.svc)); err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{12 << 10, 1 << 20} {
		raw := "GET / HTTP/1.1\r\nHost: orders\r\nX-Big: " + strings.Repeat("a", size) + "\r\n\r\n"
		resp, _, _ := rawExchange(t, client.OutboundAddr(), raw)
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("%d-byte header: %d, want 431", size, resp.StatusCode)
		}
	}
	if resp, _, _ := rawExchange(t, client.OutboundAddr(), "GET / HTTP/1.1\r\nHost: orders\r\nX-Ok: "+strings.Repeat("a", 6<<10)+"\r\n\r\n"); resp.StatusCode != 200 {
		t.Errorf("header under the limit: %d", resp.StatusCode)
	}
	// h2c: the same limit, the same 431, counted.
	var h2 http.Protocols
	h2.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &h2}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest("GET", "http://"+client.OutboundAddr()+"/", nil)
	req.Host = "orders"
	req.Header.Set("X-Big", strings.Repeat("a", 12<<10))
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("h2c 12 KiB header: %s %d, want HTTP/2 431", resp.Proto, resp.StatusCode)
	}
	if n := reached.Load(); n != 1 {
		t.Errorf("app saw %d requests, want 1", n)
	}
	assertMetric(t, client, refusedLine("header_too_large", 3))
	assertMetric(t, orders.proxy, refusedLine("header_too_large", 0))
}

// TestStalledBodyTimesOut: a client that sends its header and then stalls
// its body gets 408 after the body read timeout; the endpoint is not
// charged (no failure on its balancer state, no retry).
func TestStalledBodyTimesOut(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			return
		}
		_, _ = io.WriteString(w, "done")
	}))
	orders := startServer(t, ca, "orders", app, port(80, app, meshv1.Protocol_HTTP))
	client := startClient(t, ca, Options{Limits: Limits{BodyReadTimeout: 300 * time.Millisecond}})
	if err := client.Update(snapshot("1", orders.svc)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	resp, body, _ := rawExchange(t, client.OutboundAddr(), "POST / HTTP/1.1\r\nHost: orders\r\nContent-Length: 10\r\n\r\nabc")
	if resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("stalled body: %d %q, want 408", resp.StatusCode, body)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("408 after %v", d)
	}
	// A body that keeps coming is fine, however long it takes in total.
	conn, err := net.Dial("tcp", client.OutboundAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprint(conn, "POST / HTTP/1.1\r\nHost: orders\r\nContent-Length: 5\r\n\r\n")
	for _, c := range "hello" {
		time.Sleep(100 * time.Millisecond)
		fmt.Fprint(conn, string(c))
	}
	resp, err = http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("slow but steady body: %v %v", resp, err)
	}
	assertMetric(t, client, refusedLine("body_timeout", 1))
	assertMetric(t, client, `trellis_requests_total{reporter="source",destination_service="orders",destination_namespace="default",response_code="408",response_flags="DPE"} 1`)
}

// TestErrorBodiesClipEchoedInput: a proxy error quoting a huge host or path
// is bounded, and says it was cut.
func TestErrorBodiesClipEchoedInput(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	client := startClient(t, ca, Options{})
	if err := client.Update(snapshot("1")); err != nil {
		t.Fatal(err)
	}
	for _, raw := range []string{
		"GET / HTTP/1.1\r\nHost: " + strings.Repeat("h", 40<<10) + "\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: [" + strings.Repeat("h", 40<<10) + "\r\n\r\n",
	} {
		// Refused whole by the parser (a 40 KiB Host is malformed or
		// over the header limit): the body never echoes it at length.
		resp, body, _ := rawExchange(t, client.OutboundAddr(), raw)
		if resp.StatusCode < 400 || len(body) > 2<<10 || strings.Contains(body, strings.Repeat("h", 1<<10)) {
			t.Errorf("%d, %d-byte body %.80q…, want an error that does not echo the input at length", resp.StatusCode, len(body), body)
		}
	}
}
