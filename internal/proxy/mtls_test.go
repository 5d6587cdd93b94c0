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
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/testpki"
)

// inboundOnly runs a proxy fronting app with one HTTP port, whose server
// config verifies the chain in VerifyConnection (as identity.ServerTLS
// does) and whose snapshot has the given mTLS mode.
func inboundOnly(t *testing.T, ca *testCA, app string, mode meshv1.MtlsMode) *Proxy {
	t.Helper()
	bundle := ca.Bundle(ca.td)
	p := startProxy(t, Options{
		Service: "orders", AppAddr: app, InboundAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		ServerTLS: &tls.Config{
			MinVersion:   tls.VersionTLS13,
			ClientAuth:   tls.RequireAnyClientCert,
			Certificates: []tls.Certificate{ca.TLSCertificate(t, spiffeFor("orders"))},
			VerifyConnection: func(cs tls.ConnectionState) error {
				_, _, err := x509svid.Verify(cs.PeerCertificates, bundle)
				return err
			},
		},
	})
	setMode(t, p, app, mode)
	return p
}

func setMode(t *testing.T, p *Proxy, app string, mode meshv1.MtlsMode) {
	t.Helper()
	if err := p.Update(&meshv1.Snapshot{Version: mode.String(), InboundPolicy: &meshv1.InboundPolicy{MtlsMode: mode},
		Inbound: &meshv1.Service{Name: "orders", Namespace: "default", Ports: []*meshv1.Port{port(80, app, meshv1.Protocol_HTTP)}}}); err != nil {
		t.Fatal(err)
	}
}

// TestPlaintextOnStrictRefused: a plaintext client on a STRICT inbound port
// is closed without an answer, counted; so is one that never speaks.
func TestPlaintextOnStrictRefused(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	p := inboundOnly(t, ca, startApp(t, whoami("orders")), meshv1.MtlsMode_STRICT)
	conn, err := net.Dial("tcp", p.InboundAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(conn, "GET / HTTP/1.1\r\nHost: orders\r\n\r\n")
	if b, _ := io.ReadAll(conn); len(b) != 0 { // EOF or reset: closed unanswered
		t.Fatalf("plaintext on STRICT got %q; want the connection closed", b)
	}
	assertMetric(t, p, refusedLine("plaintext", 1))
}

// TestPermissivePlaintext: PERMISSIVE accepts plaintext HTTP/1.1 next to
// mTLS, without identity (a forged identity header is dropped), counted;
// once the service turns STRICT, the open plaintext connection's next
// request is refused and new ones are closed.
func TestPermissivePlaintext(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	app := startApp(t, meshSeer())
	p := inboundOnly(t, ca, app, meshv1.MtlsMode_PERMISSIVE)
	conn, err := net.Dial("tcp", p.InboundAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(conn)
	send := func() (*http.Response, string) {
		fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: orders\r\n%s: %s\r\n\r\n", HeaderClientID, spiffeFor("admin"))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(b)
	}
	if resp, body := send(); resp.StatusCode != 200 || body != "" {
		t.Fatalf("plaintext on PERMISSIVE: %d, app saw mesh headers %q (want none)", resp.StatusCode, body)
	}
	// mTLS keeps working, with its identity.
	cfg := &tls.Config{Certificates: []tls.Certificate{ca.TLSCertificate(t, spiffeFor("frontend"))}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13} //nolint:gosec // the test is about the server
	tr := &http.Transport{TLSClientConfig: cfg}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get((&url.URL{Scheme: "https", Host: p.InboundAddr(), Path: "/"}).String())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := HeaderClientID + "=" + spiffeFor("frontend"); string(b) != want {
		t.Fatalf("mTLS on PERMISSIVE: app saw %q, want %q", b, want)
	}
	assertMetric(t, p, "trellis_proxy_plaintext_requests_total 1")

	setMode(t, p, app, meshv1.MtlsMode_STRICT)
	if resp, _ := send(); resp.StatusCode != http.StatusForbidden || resp.Header.Get(headerError) != "NI" {
		t.Fatalf("plaintext after STRICT: %d %s, want 403 NI", resp.StatusCode, resp.Header.Get(headerError))
	}
	c2, err := net.Dial("tcp", p.InboundAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	_ = c2.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(c2, "GET / HTTP/1.1\r\nHost: orders\r\n\r\n")
	if b, _ := io.ReadAll(c2); len(b) != 0 {
		t.Fatalf("new plaintext connection after STRICT got %q", b)
	}
	assertMetric(t, p, refusedLine("plaintext", 2))
	assertMetric(t, p, "trellis_proxy_plaintext_requests_total 1")
}

// TestInboundRefusesBadPeers: each client certificate or TLS version the
// inbound port must refuse fails the handshake, counted by its reason.
func TestInboundRefusesBadPeers(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	p := inboundOnly(t, ca, startApp(t, whoami("orders")), meshv1.MtlsMode_STRICT)
	foreign := newTestCA(t, "trellis.local")
	twoURIs := func(c *x509.Certificate) {
		u, _ := url.Parse(spiffeFor("other"))
		c.URIs = append(c.URIs, u)
	}
	expired := func(c *x509.Certificate) {
		c.NotBefore, c.NotAfter = time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)
	}
	cert := func(c tls.Certificate) *tls.Config {
		return &tls.Config{Certificates: []tls.Certificate{c}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13} //nolint:gosec // the test is about the server
	}
	key := testpki.NewKey(t)
	malformed := ca.Issue(t, testpki.LeafTemplate(t, []string{"spiffe://trellis.local/ns/../sa/x?q=1"}), &key.PublicKey)
	for _, tc := range []struct {
		name, reason string
		cfg          *tls.Config
	}{
		{"foreign CA", "untrusted_certificate", cert(foreign.TLSCertificate(t, spiffeFor("frontend")))},
		{"expired", "untrusted_certificate", cert(ca.TLSCertificate(t, spiffeFor("frontend"), expired))},
		{"two URI SANs", "bad_identity", cert(ca.TLSCertificate(t, spiffeFor("frontend"), twoURIs))},
		{"malformed SPIFFE ID", "bad_identity", cert(tls.Certificate{Certificate: [][]byte{malformed.Raw}, PrivateKey: key, Leaf: malformed})},
		{"no certificate", "tls_handshake", &tls.Config{InsecureSkipVerify: true}},                                                    //nolint:gosec // as above
		{"TLS 1.1", "tls_version", &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}}, //nolint:gosec // as above
		{"TLS 1.2", "tls_version", &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12}},                               //nolint:gosec // as above
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := refusedCount(t, p, tc.reason)
			c := tc.cfg.Clone()
			c.NextProtos = []string{"h2"}
			conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", p.InboundAddr(), c)
			if err == nil {
				// TLS 1.3: the client learns of a refused certificate on its first read.
				_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
				_, err = conn.Read(make([]byte, 1))
				conn.Close()
			}
			if err == nil {
				t.Fatal("handshake accepted")
			}
			eventuallyCount(t, p, tc.reason, before+1)
		})
	}
}

// eventuallyCount waits (briefly) for the server side of a failed
// handshake to be counted: the client may see the failure first.
func eventuallyCount(t *testing.T, p *Proxy, reason string, want int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		got := refusedCount(t, p, reason)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s refusals = %d, want %d", reason, got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
