package e2e

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"trellis.dev/trellis/internal/testpki"
)

// The HTTP/1.1 hop against a hostile client, end to end: the real binary's
// client proxy (outbound port, an --upstream port) and the orders proxy's
// inbound port (raw TLS with a certificate the mesh trusts) get malformed
// and ambiguous HTTP/1.1 on raw sockets. What the client gets back is
// checked, and — the property that matters — what the app behind the pair
// saw: exactly one whole request, or none; never one smuggled inside
// another's body. internal/proxy/smuggling_test.go has the full table; this
// is its core against real processes.

// smApp is the orders app: it records every request it read to the end.
type smApp struct {
	mu   sync.Mutex
	seen []string // "METHOD path[ body]", " (broken)" when the body broke off; mesh and upgrade headers after "|"
}

func (a *smApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(r.Body)
	line := r.Method + " " + r.URL.Path
	switch {
	case err != nil:
		line += " (broken)"
	case len(b) > 0:
		line += " " + string(b)
	}
	var mesh []string
	for k, vv := range r.Header {
		if strings.HasPrefix(strings.ReplaceAll(strings.ToLower(k), "_", "-"), "x-trellis-") {
			mesh = append(mesh, k+"="+strings.Join(vv, ","))
		}
	}
	for k := range r.Trailer {
		mesh = append(mesh, "trailer "+k)
	}
	// No row upgrades: an h2c upgrade must reach the app as a plain
	// request, without its hop-by-hop fields.
	for _, k := range []string{"Upgrade", "Http2-Settings"} {
		if v := r.Header.Get(k); v != "" {
			mesh = append(mesh, k+"="+v)
		}
	}
	a.mu.Lock()
	a.seen = append(a.seen, line+"|"+strings.Join(mesh, ";"))
	a.mu.Unlock()
	_, _ = io.WriteString(w, "ok")
}

// take returns what the app saw since the last take, probes left out.
func (a *smApp) take() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, s := range a.seen {
		if !strings.HasPrefix(s, "GET /probe|") {
			out = append(out, s)
		}
	}
	a.seen = nil
	return out
}

// smMesh: a control plane with a CA the test holds (to mint a peer
// certificate), REGISTRY_ONLY egress, orders behind its proxy, and a client
// proxy with short timeouts and an 8 KiB header limit.
type smMesh struct {
	cp             *controlPlane
	app            *smApp
	orders, client *sidecar
	peerTLS        *tls.Config
}

func startSmuggleMesh(t *testing.T) *smMesh {
	t.Helper()
	ca := testpki.NewCA(t)
	keyDER, err := x509.MarshalECPrivateKey(ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	m := &smMesh{app: &smApp{}}
	m.cp = startControl(t, "", "--ca-cert", certFile, "--ca-key", keyFile)
	m.cp.apply(t, `apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: orders}
spec:
  ports:
  - {name: http, port: 80, protocol: http}
---
apiVersion: trellis.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh, namespace: trellis-system}
spec:
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
`)
	app := appServer(t, "orders", m.app.ServeHTTP)
	m.orders = m.cp.proxy(t, proxyConfig{service: "orders", app: app,
		extra: []string{"--read-header-timeout", "1s", "--body-read-timeout", "400ms"}})
	m.client = m.cp.proxy(t, proxyConfig{service: "client", upstreams: []string{"orders"},
		extra: []string{"--read-header-timeout", "600ms", "--body-read-timeout", "400ms", "--max-header-bytes", "8192"}})
	eventually(t, 15*time.Second, "client to see orders' endpoint", func() bool {
		return m.client.endpointCount(t, "orders") == 1
	})
	m.peerTLS = &tls.Config{Certificates: []tls.Certificate{ca.TLSCertificate(t, spiffe("client"))}, RootCAs: ca.Pool(),
		ServerName: "orders", NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS13,
		InsecureSkipVerify: true} //nolint:gosec // the server under test is the mesh's own; its name is not what is tested
	return m
}

// Listener sets a row applies to.
const (
	smOut  = 1 << iota // the client proxy's outbound port
	smUp               // its --upstream port for orders
	smIn               // orders' inbound port, raw TLS, a valid mesh cert
	smApps = smOut | smUp
	smAll  = smApps | smIn
)

type smListener struct {
	name  string
	bit   int
	dial  func(t *testing.T) net.Conn
	proxy *sidecar // where its refusals are counted
}

func (m *smMesh) listeners() []smListener {
	tcp := func(addr string) func(*testing.T) net.Conn {
		return func(t *testing.T) net.Conn {
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			return c
		}
	}
	return []smListener{
		{"outbound", smOut, tcp(m.client.outbound), m.client},
		{"upstream", smUp, tcp(m.client.upstreams["orders"]), m.client},
		{"inbound", smIn, func(t *testing.T) net.Conn {
			c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", m.orders.inbound, m.peerTLS)
			if err != nil {
				t.Fatal(err)
			}
			return c
		}, m.orders},
	}
}

// smRow is one shape and what must come of it.
type smRow struct {
	name string
	on   int // 0: smAll
	raw  string
	want []int // statuses in order
	open bool  // the connection stays usable (a probe after gets 200)
	// reach: what the app saw, in order ("METHOD path[ body]").
	reach []string
	// reason: the refusal counted (exactly one, none other).
	reason string
	// known: a defect of the HTTP/1.1 engine on the listeners in
	// knownOn: the row states what is right; there it is run (the app's
	// invariants must hold), skipped with this text, and fails once the
	// defect is gone.
	known   string
	knownOn int
}

const (
	smHost     = "Host: orders\r\n"
	smSmuggled = "GET /smuggled HTTP/1.1\r\n" + smHost + "\r\n"
)

func smCLTE(te string, teFirst bool) string {
	body := "0\r\n\r\n" + smSmuggled
	cl := "Content-Length: " + strconv.Itoa(len(body)) + "\r\n"
	if teFirst {
		return "POST /s HTTP/1.1\r\n" + smHost + te + cl + "\r\n" + body
	}
	return "POST /s HTTP/1.1\r\n" + smHost + cl + te + "\r\n" + body
}

func smPost(hdr, body string) string { return "POST /s HTTP/1.1\r\n" + smHost + hdr + "\r\n" + body }
func smGet(line string) string       { return line + "\r\n" + smHost + "\r\n" }

func smRows() []smRow {
	bad, ok := []int{400}, []int{200}
	served := []string{"POST /s hello"}
	forged := spiffe("admin")
	return []smRow{
		// Framing (RFC 9112 §6, §7; smuggling §11.2): refused by the
		// parser before any chain, on every listener.
		{name: "CL then TE (§6.1)", raw: smCLTE("Transfer-Encoding: chunked\r\n", false), want: bad, reason: "framing"},
		{name: "TE then CL (§6.1)", raw: smCLTE("Transfer-Encoding: chunked\r\n", true), want: bad, reason: "framing"},
		{name: "CL with TE 'Chunked' (§6.1, §7: case-insensitive)", raw: smCLTE("Transfer-Encoding: Chunked\r\n", false), want: bad, reason: "framing"},
		{name: "CL with TE tab before value (§6.1, §5.5)", raw: smCLTE("Transfer-Encoding:\tchunked\r\n", false), want: bad, reason: "framing"},
		{name: "CL with TE 'chunked, identity' (§6.1: unknown coding, 501)", raw: smCLTE("Transfer-Encoding: chunked, identity\r\n", false), want: []int{501}, reason: "framing"},
		{name: "CL with TE 'xchunked' (§6.1: unknown coding, 501)", raw: smCLTE("Transfer-Encoding: xchunked\r\n", false), want: []int{501}, reason: "framing"},
		{name: "CL with 'Transfer-Encoding : chunked' (§5.1: space before colon)", raw: smCLTE("Transfer-Encoding : chunked\r\n", false), want: bad, reason: "malformed_request"},
		{name: "two different CLs (§6.3)", raw: smPost("Content-Length: 5\r\nContent-Length: 3\r\n", "hello"), want: bad, reason: "framing"},
		{name: "CL '+5' (RFC 9110 §8.6: 1*DIGIT)", raw: smPost("Content-Length: +5\r\n", "hello"), want: bad, reason: "framing"},
		{name: "CL '0x5' (RFC 9110 §8.6: 1*DIGIT)", raw: smPost("Content-Length: 0x5\r\n", "hello"), want: bad, reason: "framing"},
		{name: "TE on HTTP/1.0 (§6.1)", raw: "POST /s HTTP/1.0\r\n" + smHost + "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", want: bad, reason: "framing"},
		{name: "obs-fold (§5.2)", raw: "GET /f HTTP/1.1\r\n" + smHost + "X-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n", want: bad, reason: "framing"},
		{name: "bare LF line endings (§2.2: MAY accept; refused)", raw: "GET /lf HTTP/1.1\nHost: orders\n\n", want: bad, reason: "framing"},
		{name: "space before colon (§5.1)", raw: "GET /c HTTP/1.1\r\nHost : orders\r\n\r\n", want: bad, reason: "malformed_request"},
		{name: "NUL in a value (RFC 9110 §5.5)", raw: "GET /n HTTP/1.1\r\n" + smHost + "X-A: a\x00b\r\n\r\n", want: bad, reason: "malformed_request"},
		{name: "chunk size '0x10' (§7.1: 1*HEXDIG)", raw: smPost("Transfer-Encoding: chunked\r\n", "0x10\r\nhellohellohello!\r\n0\r\n\r\n"), want: bad, reason: "framing"},
		{name: "chunk size of 17 hex digits (§7.1)", raw: smPost("Transfer-Encoding: chunked\r\n", "10000000000000005\r\nhello\r\n0\r\n\r\n"), want: bad, reason: "framing"},
		{name: "chunk data longer than its size, hiding a request (§7.1)", raw: smPost("Transfer-Encoding: chunked\r\n", "2\r\nhello\r\n0\r\n\r\n"+smSmuggled), want: bad, reason: "framing"},
		{name: "chunked with extension and trailer (§7.1.1, §7.1.2)", raw: smPost("Transfer-Encoding: chunked\r\n", "5;a=b\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"), want: ok, open: true, reach: served},
		// Request line and target (RFC 9112 §3).
		{name: "two spaces after the method (§3)", raw: smGet("GET  /x HTTP/1.1"), want: bad, reason: "malformed_request"},
		{name: "HTTP/1.2 served as 1.1 (RFC 9110 §2.5)", raw: smGet("GET /v HTTP/1.2"), want: ok, open: true, reach: []string{"GET /v"}},
		{name: "HTTP/2.0 over HTTP/1 (505, RFC 9110 §15.6.6)", raw: smGet("GET /v HTTP/2.0"), want: []int{505}, reason: "malformed_request"},
		{name: "lower-case method passed as is (RFC 9110 §9.1: case-sensitive)", raw: smGet("get /m HTTP/1.1"), want: ok, open: true, reach: []string{"get /m"}},
		{name: "absolute-form wins over Host (§3.2.2)", on: smApps, raw: "GET http://orders/abs HTTP/1.1\r\nHost: evil.example\r\n\r\n", want: ok, open: true, reach: []string{"GET /abs"}},
		{name: "absolute-form agreeing with Host (§3.2.2)", on: smApps, raw: "GET http://orders/abs HTTP/1.1\r\n" + smHost + "\r\n", want: ok, open: true, reach: []string{"GET /abs"}},
		{name: "two Hosts (§3.2)", raw: "GET /h HTTP/1.1\r\n" + smHost + "Host: other\r\n\r\n", want: bad, reason: "malformed_request"},
		{name: "request line of 12 KiB, over the 8 KiB header limit (431, RFC 6585 §5)", on: smApps, raw: smGet("GET /" + strings.Repeat("a", 12<<10) + " HTTP/1.1"), want: []int{431}, reason: "header_too_large"},
		{name: "request line of 100 KiB (414, RFC 9110 §15.5.15)", on: smApps, raw: smGet("GET /" + strings.Repeat("a", 100<<10) + " HTTP/1.1"), want: []int{414}, reason: "header_too_large"},
		{name: "3000 small headers (431, RFC 6585 §5)", on: smApps, raw: "GET /b HTTP/1.1\r\n" + smHost + strings.Repeat("X-N: 1\r\n", 3000) + "\r\n", want: []int{431}, reason: "header_too_large"},
		{name: "pipelined GETs answered in order (§9.3.2)", raw: smGet("GET /1 HTTP/1.1") + smGet("GET /2 HTTP/1.1"), want: []int{200, 200}, open: true, reach: []string{"GET /1", "GET /2"}},
		// Upgrade: h2c (RFC 7540 §3.2, dropped by RFC 9113 §3.1) is
		// ignored, as net/http's server does: never a tunnel past the chain.
		{name: "Upgrade: h2c served as HTTP/1.1", raw: "GET /u HTTP/1.1\r\n" + smHost + "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
			want: ok, open: true, reach: []string{"GET /u"}},
		// Forged identity (the app sees only the proxy-set one).
		{name: "forged X-Trellis-Client-Id", raw: "GET /id HTTP/1.1\r\n" + smHost + "X-Trellis-Client-Id: " + forged + "\r\n\r\n", want: ok, open: true, reach: []string{"GET /id"}, reason: "mesh_header"},
		{name: "forged x_trellis_client_id", raw: "GET /id HTTP/1.1\r\n" + smHost + "x_trellis_client_id: " + forged + "\r\n\r\n", want: ok, open: true, reach: []string{"GET /id"}, reason: "mesh_header"},
		{name: "forged identity with a space before the colon (§5.1)", raw: "GET /id HTTP/1.1\r\n" + smHost + "X-Trellis-Client-Id : " + forged + "\r\n\r\n", want: bad, reason: "malformed_request"},
		{name: "forged identity as a trailer (§6.5)", on: smApps, raw: smForgedTrailer(forged), want: ok, open: true, reach: served, reason: "mesh_header"},
		// The inbound port drops request trailers towards the app uncounted.
		{name: "forged identity as a trailer (§6.5, dropped)", on: smIn, raw: smForgedTrailer(forged), want: ok, open: true, reach: served},
		// Tunnels: REGISTRY_ONLY refuses a host outside the registry, 403.
		{name: "CONNECT outside the mesh", on: smOut, raw: "CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n", want: []int{403}, open: true},
		{name: "CONNECT to an http port", on: smOut, raw: "CONNECT orders:80 HTTP/1.1\r\nHost: orders:80\r\n\r\n", want: []int{403}, open: true, reason: "tunnel_port"},
		{name: "CONNECT on an upstream port", on: smUp, raw: "CONNECT orders:80 HTTP/1.1\r\nHost: orders:80\r\n\r\n", want: []int{405}, open: true},
	}
}

func smForgedTrailer(forged string) string {
	return smPost("Transfer-Encoding: chunked\r\nTrailer: X-Trellis-Client-Id\r\n", "5\r\nhello\r\n0\r\nX-Trellis-Client-Id: "+forged+"\r\n\r\n")
}

// smOutcome is what one raw exchange showed.
type smOutcome struct {
	statuses       []int
	closed, synced bool
}

// smExchange writes raw at once, reads up to n responses, then sees the
// connection closed or proves it still in sync with a probe.
func smExchange(t *testing.T, conn net.Conn, raw string, n int) smOutcome {
	t.Helper()
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatalf("write: %v", err)
	}
	var o smOutcome
	br := bufio.NewReader(conn)
	for range n {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			o.closed = true
			return o
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		o.statuses = append(o.statuses, resp.StatusCode)
		if resp.Close {
			break
		}
	}
	_ = conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	var ne net.Error
	if _, err := br.Peek(1); err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
		o.closed = true
		return o
	}
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, smGet("GET /probe HTTP/1.1")); err != nil {
		o.closed = true
		return o
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		o.closed = true
		return o
	}
	resp.Body.Close()
	o.synced = resp.StatusCode == 200
	return o
}

// smRefusals reads every trellis_proxy_refused_total series of s.
func smRefusals(t *testing.T, s *sidecar) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, r := range []string{"framing", "header_too_large", "malformed_request", "mesh_header", "tunnel_port", "body_timeout", "plaintext", "tls_handshake"} {
		out[r], _ = metricValueOK(t, s, `trellis_proxy_refused_total{reason="`+r+`"}`)
	}
	return out
}

func (m *smMesh) check(t *testing.T, l smListener, r smRow) {
	t.Helper()
	m.app.take()
	before := smRefusals(t, l.proxy)
	o := smExchange(t, l.dial(t), r.raw, max(len(r.want), 1))
	var miss []string
	if fmt.Sprint(o.statuses) != fmt.Sprint(r.want) {
		miss = append(miss, fmt.Sprintf("statuses %v, want %v", o.statuses, r.want))
	}
	switch {
	case r.open && (o.closed || !o.synced):
		miss = append(miss, fmt.Sprintf("closed=%v synced=%v, want the connection open and in sync", o.closed, o.synced))
	case !r.open && !o.closed:
		miss = append(miss, "connection left open after a refusal")
	}
	if got := m.appSaw(t); strings.Join(got, "\n") != strings.Join(r.reach, "\n") {
		miss = append(miss, fmt.Sprintf("the app saw %q, want %q", got, r.reach))
	}
	after := smRefusals(t, l.proxy)
	for reason, n := range after {
		d := n - before[reason]
		switch {
		case reason == r.reason && d != 1:
			miss = append(miss, fmt.Sprintf("%d refusals of %q, want 1", d, reason))
		case reason != r.reason && d != 0:
			miss = append(miss, fmt.Sprintf("%d refusals of %q, want none", d, reason))
		}
	}
	known := r.known != "" && r.knownOn&l.bit != 0
	switch {
	case known && len(miss) == 0:
		t.Errorf("known defect no longer shows (%s): drop the row's known", r.known)
	case known:
		t.Skipf("known: %s; %s", r.known, strings.Join(miss, "; "))
	case len(miss) > 0:
		t.Error(strings.Join(miss, "; "))
	}
}

// appSaw is what the app saw since the last take, checking the
// invariants: only the identity the client's proxy vouched for, and never
// the smuggled request.
func (m *smMesh) appSaw(t *testing.T) []string {
	t.Helper()
	want := "|X-Trellis-Client-Id=" + spiffe("client")
	var got []string
	for _, s := range m.app.take() {
		line, mesh, _ := strings.Cut(s, "|")
		if "|"+mesh != want {
			t.Errorf("the app got %q with mesh headers %q, want only %q", line, mesh, want[1:])
		}
		if strings.Contains(line, "/smuggled") {
			t.Errorf("a smuggled request reached the app: %q", line)
		}
		got = append(got, line)
	}
	return got
}

func TestSmugglingEndToEnd(t *testing.T) {
	m := startSmuggleMesh(t)
	ls := m.listeners()
	for _, r := range smRows() {
		for _, l := range ls {
			on := r.on
			if on == 0 {
				on = smAll
			}
			if on&l.bit == 0 {
				continue
			}
			t.Run(l.name+"/"+r.name, func(t *testing.T) {
				m.check(t, l, r)
			})
		}
	}
	t.Run("slowloris head cut at the read header timeout", func(t *testing.T) {
		for _, l := range ls {
			limit := 600 * time.Millisecond // the client proxy's
			if l.bit == smIn {
				limit = time.Second // orders'
			}
			m.slowloris(t, l, limit)
		}
	})
	t.Run("stalled body 408", func(t *testing.T) {
		for _, l := range ls {
			m.app.take()
			before := smRefusals(t, l.proxy)
			o := smExchange(t, l.dial(t), smPost("Content-Length: 10\r\n", "abc"), 1)
			if len(o.statuses) != 1 || o.statuses[0] != http.StatusRequestTimeout || !o.closed {
				t.Errorf("%s: %v closed=%v, want 408 and the connection closed", l.name, o.statuses, o.closed)
			}
			// The app's read fails when the proxy gives up on the body,
			// which may come just after the client's 408: wait for it.
			var got []string
			eventually(t, 2*time.Second, "the app to see the broken body", func() bool {
				got = append(got, m.app.take()...)
				return len(got) > 0
			})
			if len(got) != 1 || !strings.HasPrefix(got[0], "POST /s (broken)|") {
				t.Errorf("%s: the app saw %q, want one broken body", l.name, got)
			}
			for reason, n := range smRefusals(t, l.proxy) {
				want := 0
				if reason == "body_timeout" {
					want = 1
				}
				if d := n - before[reason]; d != want {
					t.Errorf("%s: %d refusals of %q, want %d", l.name, d, reason, want)
				}
			}
		}
	})
	// Nothing of it was charged to orders' endpoint.
	for _, code := range []string{"500", "502", "503", "504"} {
		if n := metricSum(t, m.client, "trellis_requests_total", `reporter="source"`, `destination_service="orders"`, `response_code="`+code+`"`); n != 0 {
			t.Errorf("%v %s responses charged to orders", n, code)
		}
	}
	if n := metricSum(t, m.client, "trellis_proxy_outlier_ejections_total"); n != 0 {
		t.Errorf("%v outlier ejections", n)
	}
}

// slowloris sends a head a byte per 100 ms and checks the proxy cut it
// near limit without a word (the engine closes when the read header
// timeout passes mid-head).
func (m *smMesh) slowloris(t *testing.T, l smListener, limit time.Duration) {
	t.Helper()
	m.app.take()
	conn := l.dial(t)
	defer conn.Close()
	head := "GET /slow HTTP/1.1\r\n" + smHost + "X-Slow: " + strings.Repeat("a", 100)
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range len(head) {
			if _, err := conn.Write([]byte{head[i]}); err != nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	_ = conn.SetReadDeadline(start.Add(limit + 3*time.Second))
	b, err := io.ReadAll(conn)
	took := time.Since(start)
	conn.Close()
	<-done
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("%s: still open after %v", l.name, took)
	}
	if took < limit-100*time.Millisecond || took > limit+2*time.Second {
		t.Errorf("%s: cut after %v, want about %v", l.name, took, limit)
	}
	if len(b) > 0 {
		t.Errorf("%s: answered %.60q, want the connection closed unanswered", l.name, b)
	}
	if got := m.app.take(); len(got) > 0 {
		t.Errorf("%s: the app saw %q", l.name, got)
	}
}
