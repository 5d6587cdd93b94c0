package e2e

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"trellis.dev/trellis/internal/testpki"
)

// The hostile tests: an attacker on the network, a rogue or compromised
// app, each trying what issue 8 found, against real processes on real
// sockets; each attempt must be refused by the proxy that received it, and
// counted there (trellis_proxy_refused_total{reason}).

const hostileServices = `
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: orders}
spec:
  ports:
  - {name: http, port: 80, protocol: http}
  - {name: tcp, port: 82, targetPort: %d, protocol: tcp}
`

// hostileMesh is a control plane whose CA root the test holds (so it can
// mint chain-valid bad certificates), an orders proxy in front of an app
// that reports the mesh headers it saw, and a client proxy.
type hostileMesh struct {
	cp             *controlPlane
	ca             *testpki.CA
	orders, client *sidecar
	reached        chan string // the app's view of each request it served
}

func startHostileMesh(t *testing.T) *hostileMesh {
	t.Helper()
	dir := t.TempDir()
	ca := testpki.NewCA(t)
	keyDER, err := x509.MarshalECPrivateKey(ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(t.TempDir(), "ca.crt"), filepath.Join(t.TempDir(), "ca.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cp := startControl(t, dir, "--ca-cert", certFile, "--ca-key", keyFile)
	echo := listen(t)
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); c.Close() }()
		}
	}()
	_, echoPort, _ := net.SplitHostPort(echo.Addr().String())
	port, _ := strconv.Atoi(echoPort)
	cp.apply(t, fmt.Sprintf(hostileServices, port))
	m := &hostileMesh{cp: cp, ca: ca, reached: make(chan string, 64)}
	app := appServer(t, "orders", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		var seen []string
		for k, vv := range r.Header {
			if strings.HasPrefix(strings.ReplaceAll(strings.ToLower(k), "_", "-"), "x-trellis-") {
				seen = append(seen, k+"="+strings.Join(vv, "|"))
			}
		}
		for k, vv := range r.Trailer {
			seen = append(seen, "trailer "+k+"="+strings.Join(vv, "|"))
		}
		slices.Sort(seen)
		s := strings.Join(seen, "\n")
		select {
		case m.reached <- r.Method + " " + r.URL.Path:
		default:
		}
		_, _ = io.WriteString(w, s)
	})
	m.orders = cp.proxy(t, proxyConfig{service: "orders", app: app})
	m.client = cp.proxy(t, proxyConfig{service: "client", upstreams: []string{"orders"}})
	eventually(t, 15*time.Second, "client to see orders' endpoint", func() bool {
		return m.client.endpointCount(t, "orders") == 1
	})
	return m
}

// refused reads trellis_proxy_refused_total{reason} from a proxy.
func refused(t *testing.T, s *sidecar, reason string) int {
	t.Helper()
	return metricValue(t, s, `trellis_proxy_refused_total{reason="`+reason+`"}`)
}

func metricValue(t *testing.T, s *sidecar, series string) int {
	t.Helper()
	n, ok := metricValueOK(t, s, series)
	if !ok {
		t.Fatalf("%s not in %s's /metrics", series, s.name)
	}
	return n
}

// metricValueOK reads one series; false when the proxy has none.
func metricValueOK(t *testing.T, s *sidecar, series string) (int, bool) {
	t.Helper()
	resp, err := http.Get("http://" + s.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for l := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			n, _ := strconv.Atoi(v)
			return n, true
		}
	}
	return 0, false
}

// metricSum adds up every series of name carrying all of labels
// (`key="value"` each), 0 when there is none.
func metricSum(t *testing.T, s *sidecar, name string, labels ...string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + s.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var sum float64
lines:
	for l := range strings.SplitSeq(string(b), "\n") {
		ls, ok := strings.CutPrefix(l, name+"{")
		if !ok {
			continue
		}
		have, val, _ := strings.Cut(ls, "} ")
		for _, kv := range labels {
			if !slices.Contains(strings.Split(have, ","), kv) {
				continue lines
			}
		}
		f, _ := strconv.ParseFloat(val, 64)
		sum += f
	}
	return sum
}

// waitRefused waits for a proxy to count one more refusal of reason.
func waitRefused(t *testing.T, s *sidecar, reason string, before int) {
	t.Helper()
	eventually(t, 5*time.Second, s.name+" to count "+reason, func() bool { return refused(t, s, reason) > before })
}

// rawHTTP writes raw to addr and reads one response; closed reports that
// the proxy closed the connection after it.
func rawHTTP(t *testing.T, addr, raw string) (status int, body string, closed bool) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("%.60q: %v", raw, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	_ = conn.SetReadDeadline(time.Now().Add(time.Second))
	_, err = br.ReadByte()
	return resp.StatusCode, string(b), err == io.EOF
}

func spiffe(sa string) string { return "spiffe://trellis.local/ns/default/sa/" + sa }

func TestHostileNetworkPeers(t *testing.T) {
	m := startHostileMesh(t)
	inbound := m.orders.inbound

	t.Run("plaintext on STRICT", func(t *testing.T) {
		before := refused(t, m.orders, "plaintext")
		conn, err := net.Dial("tcp", inbound)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprint(conn, "GET / HTTP/1.1\r\nHost: orders\r\n\r\n")
		if b, _ := io.ReadAll(conn); len(b) != 0 {
			t.Fatalf("plaintext on STRICT answered %q", b)
		}
		waitRefused(t, m.orders, "plaintext", before)
	})

	foreign := testpki.NewCA(t)
	twoURIs := func(c *x509.Certificate) {
		u, _ := url.Parse(spiffe("admin"))
		c.URIs = append(c.URIs, u)
	}
	expired := func(c *x509.Certificate) {
		c.NotBefore, c.NotAfter = time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)
	}
	withCert := func(c tls.Certificate) *tls.Config {
		return &tls.Config{Certificates: []tls.Certificate{c}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13} //nolint:gosec // the server is under test
	}
	for _, tc := range []struct {
		name, reason string
		cfg          *tls.Config
	}{
		{"client cert from a foreign CA", "untrusted_certificate", withCert(foreign.TLSCertificate(t, spiffe("client")))},
		{"expired client cert", "untrusted_certificate", withCert(m.ca.TLSCertificate(t, spiffe("client"), expired))},
		{"two URI SANs", "bad_identity", withCert(m.ca.TLSCertificate(t, spiffe("client"), twoURIs))},
		{"malformed SPIFFE ID", "bad_identity", withCert(m.ca.TLSCertificate(t, "spiffe://trellis.local/ns/default/sa/x/../../admin?a=b"))},
		{"no SPIFFE ID", "bad_identity", withCert(m.ca.TLSCertificate(t, ""))},
		{"TLS 1.0/1.1", "tls_version", &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}}, //nolint:gosec // as above
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := refused(t, m.orders, tc.reason)
			for _, alpn := range []string{"h2", "trellis-tcp/1"} {
				c := tc.cfg.Clone()
				c.NextProtos = []string{alpn}
				conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", inbound, c)
				if err == nil {
					_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
					_, _ = io.WriteString(conn, "82\n")
					_, err = conn.Read(make([]byte, 1))
					conn.Close()
				}
				if err == nil {
					t.Fatalf("%s: the inbound port accepted it", alpn)
				}
			}
			eventually(t, 5*time.Second, "two refusals counted", func() bool { return refused(t, m.orders, tc.reason) >= before+2 })
		})
	}

	t.Run("tunnel to an http port from a valid peer", func(t *testing.T) {
		before := refused(t, m.orders, "tunnel_port")
		c := withCert(m.ca.TLSCertificate(t, spiffe("client")))
		c.NextProtos = []string{"trellis-tcp/1"}
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", inbound, c)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprint(conn, "80\n")
		line, _ := bufio.NewReader(conn).ReadString('\n')
		if !strings.HasPrefix(line, "error ") {
			t.Fatalf("tunnel to port 80: %q", line)
		}
		waitRefused(t, m.orders, "tunnel_port", before)
	})
}

func TestHostileApp(t *testing.T) {
	m := startHostileMesh(t)
	out := m.client.outbound
	want := "X-Trellis-Client-Id=" + spiffe("client")

	t.Run("forged identity headers, HTTP/1.1", func(t *testing.T) {
		before := refused(t, m.client, "mesh_header")
		for _, name := range []string{"X-Trellis-Client-Id", "X_Trellis_Client_Id", "x-trellis-client-id"} {
			code, body, _ := rawHTTP(t, out, "GET /h1 HTTP/1.1\r\nHost: orders\r\n"+name+": "+spiffe("admin")+"\r\n\r\n")
			if code != 200 || body != want {
				t.Errorf("%s: %d, app saw %q, want %q", name, code, body, want)
			}
		}
		if got := refused(t, m.client, "mesh_header"); got != before+3 {
			t.Errorf("mesh_header refusals %d, want %d", got, before+3)
		}
	})
	t.Run("forged identity as a request trailer", func(t *testing.T) {
		code, body, _ := rawHTTP(t, out, "POST /t HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: chunked\r\nTrailer: X-Trellis-Client-Id\r\n\r\n"+
			"2\r\nhi\r\n0\r\nX-Trellis-Client-Id: "+spiffe("admin")+"\r\nX_Trellis_Client_Id: "+spiffe("admin")+"\r\n\r\n")
		if code != 200 || body != want {
			t.Errorf("trailer: %d, app saw %q, want %q", code, body, want)
		}
	})
	t.Run("forged identity headers, h2c", func(t *testing.T) {
		var protos http.Protocols
		protos.SetUnencryptedHTTP2(true)
		tr := &http.Transport{Protocols: &protos}
		defer tr.CloseIdleConnections()
		req, _ := http.NewRequest("GET", "http://"+out+"/h2", nil)
		req.Host = "orders"
		req.Header["X-Trellis-Client-Id"] = []string{spiffe("admin")}
		req.Header["X_Trellis_Client_Id"] = []string{spiffe("admin")}
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 || string(b) != want {
			t.Errorf("h2c: %s, app saw %q, want %q", resp.Proto, b, want)
		}
	})
	t.Run("CONNECT to an http port", func(t *testing.T) {
		before := refused(t, m.client, "tunnel_port")
		if code, _, _ := rawHTTP(t, out, "CONNECT orders:80 HTTP/1.1\r\nHost: orders:80\r\n\r\n"); code != http.StatusForbidden {
			t.Fatalf("CONNECT orders:80: %d, want 403", code)
		}
		if got := refused(t, m.client, "tunnel_port"); got != before+1 {
			t.Fatalf("tunnel_port refusals %d, want %d", got, before+1)
		}
	})
	t.Run("smuggling shapes", func(t *testing.T) {
		for len(m.reached) > 0 {
			<-m.reached
		}
		before := refused(t, m.client, "framing")
		shapes := []string{
			"POST /s HTTP/1.1\r\nHost: orders\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
			"POST /s HTTP/1.1\r\nHost: orders\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi",
			"GET /s HTTP/1.1\r\nHost: orders\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n",
			"POST /s HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nhi\r\n0\r\n\r\n",
		}
		for _, raw := range shapes {
			for _, addr := range []string{out, m.client.upstreams["orders"]} {
				if code, body, closed := rawHTTP(t, addr, raw); code != http.StatusBadRequest || !closed {
					t.Errorf("%.70q: %d %q closed=%v, want 400 and close", raw, code, body, closed)
				}
			}
		}
		if got := refused(t, m.client, "framing"); got != before+2*len(shapes) {
			t.Errorf("framing refusals %d, want %d", got, before+2*len(shapes))
		}
		select {
		case r := <-m.reached:
			t.Errorf("a smuggling shape reached the app: %s", r)
		default:
		}
	})
	t.Run("oversize header", func(t *testing.T) {
		before := refused(t, m.client, "header_too_large")
		code, _, _ := rawHTTP(t, out, "GET / HTTP/1.1\r\nHost: orders\r\nX-Big: "+strings.Repeat("a", 1<<20)+"\r\n\r\n")
		if code != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("1 MiB header: %d, want 431", code)
		}
		waitRefused(t, m.client, "header_too_large", before)
		for _, flags := range []string{"UR", "UF"} {
			if n := metricSum(t, m.client, "trellis_requests_total", `reporter="source"`, `destination_service="orders"`, `response_code="502"`, `response_flags="`+flags+`"`); n != 0 {
				t.Fatalf("%v 502 %s charged to orders", n, flags)
			}
		}
	})
}

// TestPermissiveMode: a PERMISSIVE service's proxy serves plaintext callers
// (without identity, counted) next to mTLS; back to STRICT, it refuses them.
func TestPermissiveMode(t *testing.T) {
	m := startHostileMesh(t)
	mode := func(mode string) {
		m.cp.apply(t, fmt.Sprintf(hostileServices, 1)+"  mtls: {mode: "+mode+"}\n")
		eventually(t, 15*time.Second, "orders to run "+mode, func() bool {
			p, _ := m.orders.config(t)["inboundPolicy"].(map[string]any)
			got, _ := p["mtlsMode"].(string)
			return got == mode
		})
	}
	mode("PERMISSIVE")
	code, body, _ := rawHTTP(t, m.orders.inbound, "GET /plain HTTP/1.1\r\nHost: orders\r\nX-Trellis-Client-Id: "+spiffe("admin")+"\r\n\r\n")
	if code != 200 || body != "" {
		t.Fatalf("plaintext on PERMISSIVE: %d, app saw %q, want no mesh headers", code, body)
	}
	if got := metricValue(t, m.orders, "trellis_proxy_plaintext_requests_total"); got != 1 {
		t.Fatalf("plaintext requests counted %d, want 1", got)
	}
	// mTLS traffic is unaffected.
	c := m.client.client()
	if code, body, err := get(c, "http://orders/mtls"); err != nil || code != 200 || body != "X-Trellis-Client-Id="+spiffe("client") {
		t.Fatalf("mTLS on PERMISSIVE: %d %q %v", code, body, err)
	}
	mode("STRICT")
	before := refused(t, m.orders, "plaintext")
	conn, err := net.Dial("tcp", m.orders.inbound)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprint(conn, "GET / HTTP/1.1\r\nHost: orders\r\n\r\n")
	if b, _ := io.ReadAll(conn); len(b) != 0 {
		t.Fatalf("plaintext after STRICT answered %q", b)
	}
	waitRefused(t, m.orders, "plaintext", before)
}
