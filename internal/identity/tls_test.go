package identity

import (
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"trellis.dev/trellis/internal/testpki"
)

type serverResult struct {
	peer spiffeid.ID
	err  error
}

// serve accepts TLS connections on a loopback port with cfg and reports, per
// connection, the client's SPIFFE ID or the handshake error.
func serve(t *testing.T, cfg *tls.Config) (string, <-chan testpki.Handshake) {
	t.Helper()
	return testpki.Serve(t, cfg, func(cs tls.ConnectionState) error {
		_, err := PeerID(cs)
		return err
	})
}

// dial handshakes and reads the server's "ok" (see testpki.Dial).
func dial(t *testing.T, addr string, cfg *tls.Config) (tls.ConnectionState, error) {
	t.Helper()
	return testpki.Dial(t, addr, cfg)
}

func recv(t *testing.T, ch <-chan testpki.Handshake) serverResult {
	t.Helper()
	select {
	case r := <-ch:
		if r.Err != nil {
			return serverResult{err: r.Err}
		}
		id, err := PeerID(r.State)
		return serverResult{peer: id, err: err}
	case <-time.After(5 * time.Second):
		t.Fatal("server reported nothing")
		return serverResult{}
	}
}

type mesh struct {
	ca                 *testCA
	server, client     *Source
	serverID, clientID spiffeid.ID
}

func newMesh(t *testing.T) *mesh {
	t.Helper()
	m := &mesh{ca: newTestCA(t), server: NewSource(td), client: NewSource(td)}
	m.serverID = mustID(t, "default", "orders")
	m.clientID = mustID(t, "default", "web")
	for _, x := range []struct {
		s  *Source
		id spiffeid.ID
	}{{m.server, m.serverID}, {m.client, m.clientID}} {
		chain, key := m.ca.workload(t, x.id)
		if err := x.s.Set(chain, key, m.ca.bundle()); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

// moveTo gives server and client certificates from ca and ca alone as
// their bundle (a rotation's end).
func (m *mesh) moveTo(t *testing.T, ca *testCA) {
	t.Helper()
	for _, x := range []struct {
		s  *Source
		id spiffeid.ID
	}{{m.server, m.serverID}, {m.client, m.clientID}} {
		chain, key := ca.workload(t, x.id)
		if err := x.s.Set(chain, key, ca.bundle()); err != nil {
			t.Fatal(err)
		}
	}
}

func TestMTLSHandshake(t *testing.T) {
	m := newMesh(t)
	addr, results := serve(t, ServerTLS(m.server, tlsconfig.AuthorizeMemberOf(td)))
	cs, err := dial(t, addr, ClientTLS(m.client, tlsconfig.AuthorizeID(m.serverID)))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := PeerID(cs); err != nil || got != m.serverID {
		t.Fatalf("client sees server %s (%v), want %s", got, err, m.serverID)
	}
	if cs.Version != tls.VersionTLS13 {
		t.Fatalf("version %x, want TLS 1.3", cs.Version)
	}
	r := recv(t, results)
	if r.err != nil || r.peer != m.clientID {
		t.Fatalf("server sees client %s (%v), want %s", r.peer, r.err, m.clientID)
	}
}

func TestMTLSRejects(t *testing.T) {
	m := newMesh(t)
	rogue := newTestCA(t) // same trust domain name, different keys
	rogueSrc := NewSource(td)
	chain, key := rogue.workload(t, m.clientID)
	if err := rogueSrc.Set(chain, key, rogue.bundle()); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name      string
		serverCfg *tls.Config
		client    func(addr string) error
		serverErr string // substring of the server's handshake error; "" if the client side fails first
		clientErr string
	}{
		{
			name:      "client cert from another CA",
			serverCfg: ServerTLS(m.server, tlsconfig.AuthorizeMemberOf(td)),
			client: func(addr string) error {
				// The rogue client trusts the real CA so it gets as far as
				// presenting its certificate.
				cfg := ClientTLS(rogueSrc, tlsconfig.AuthorizeAny())
				cfg.VerifyConnection = nil
				_, err := dial(t, addr, cfg)
				return err
			},
			serverErr: "certificate signed by unknown authority",
		},
		{
			name:      "client without certificate",
			serverCfg: ServerTLS(m.server, tlsconfig.AuthorizeMemberOf(td)),
			client: func(addr string) error {
				_, err := dial(t, addr, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
				return err
			},
			serverErr: "certificate",
		},
		{
			name:      "plaintext client",
			serverCfg: ServerTLS(m.server, tlsconfig.AuthorizeMemberOf(td)),
			client: func(addr string) error {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					return err
				}
				defer c.Close()
				io.WriteString(c, "GET / HTTP/1.1\r\nHost: orders\r\n\r\n")
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				b, _ := io.ReadAll(c)
				if strings.Contains(string(b), "ok") {
					return nil
				}
				return io.EOF
			},
			serverErr: "first record does not look like a TLS handshake",
		},
		{
			name:      "server not authorized by client (secure naming)",
			serverCfg: ServerTLS(m.server, tlsconfig.AuthorizeMemberOf(td)),
			client: func(addr string) error {
				_, err := dial(t, addr, ClientTLS(m.client, tlsconfig.AuthorizeID(mustID(t, "default", "payments"))))
				return err
			},
			clientErr: "not authorized",
		},
		{
			name:      "client not authorized by server",
			serverCfg: ServerTLS(m.server, tlsconfig.AuthorizeID(mustID(t, "default", "admin"))),
			client: func(addr string) error {
				_, err := dial(t, addr, ClientTLS(m.client, tlsconfig.AuthorizeID(m.serverID)))
				return err
			},
			serverErr: "not authorized",
		},
		{
			name:      "server from another CA",
			serverCfg: ServerTLS(rogueSrc, tlsconfig.AuthorizeAny()),
			client: func(addr string) error {
				_, err := dial(t, addr, ClientTLS(m.client, tlsconfig.AuthorizeAny()))
				return err
			},
			clientErr: "certificate signed by unknown authority",
		},
		{
			name:      "server without certificate yet",
			serverCfg: ServerTLS(NewSource(td), tlsconfig.AuthorizeAny()),
			client: func(addr string) error {
				_, err := dial(t, addr, ClientTLS(m.client, tlsconfig.AuthorizeAny()))
				return err
			},
			serverErr: "no certificate yet",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, results := serve(t, tt.serverCfg)
			cerr := tt.client(addr)
			if cerr == nil {
				t.Fatal("client connected; want rejection")
			}
			if tt.clientErr != "" && !strings.Contains(cerr.Error(), tt.clientErr) {
				t.Fatalf("client err = %v, want containing %q", cerr, tt.clientErr)
			}
			r := recv(t, results)
			if r.err == nil {
				t.Fatalf("server accepted peer %s", r.peer)
			}
			if tt.serverErr != "" && !strings.Contains(r.err.Error(), tt.serverErr) {
				t.Fatalf("server err = %v, want containing %q", r.err, tt.serverErr)
			}
		})
	}
}

// After Set, the next handshake on the same tls.Config presents the new
// certificate: rotation needs no listener restart.
func TestMTLSRotation(t *testing.T) {
	m := newMesh(t)
	addr, results := serve(t, ServerTLS(m.server, tlsconfig.AuthorizeMemberOf(td)))
	clientCfg := ClientTLS(m.client, tlsconfig.AuthorizeID(m.serverID))

	cs, err := dial(t, addr, clientCfg)
	if err != nil {
		t.Fatal(err)
	}
	recv(t, results)
	first := cs.PeerCertificates[0].SerialNumber

	// Rotate onto a new root too: both sides get the new bundle.
	next := newTestCA(t)
	m.moveTo(t, next)
	cs, err = dial(t, addr, clientCfg)
	if err != nil {
		t.Fatal(err)
	}
	if cs.PeerCertificates[0].SerialNumber.Cmp(first) == 0 {
		t.Fatal("server still presents the old certificate after Set")
	}
	if err := cs.PeerCertificates[0].CheckSignatureFrom(next.Cert); err != nil {
		t.Fatalf("presented certificate is not from the new CA: %v", err)
	}
	if r := recv(t, results); r.err != nil || r.peer != m.clientID {
		t.Fatalf("server after rotation: %s %v", r.peer, r.err)
	}
	// A client still on the old root is now refused.
	stale := NewSource(td)
	chain, key := m.ca.workload(t, m.clientID)
	if err := stale.Set(chain, key, m.ca.bundle()); err != nil {
		t.Fatal(err)
	}
	if _, err := dial(t, addr, ClientTLS(stale, tlsconfig.AuthorizeAny())); err == nil {
		t.Fatal("client with a certificate from the retired root was accepted")
	}
	if r := recv(t, results); r.err == nil {
		t.Fatal("server accepted a certificate from the retired root")
	}
}

func TestPeerIDNoCert(t *testing.T) {
	if _, err := PeerID(tls.ConnectionState{}); err != ErrNoPeerCert {
		t.Fatalf("err = %v, want ErrNoPeerCert", err)
	}
}

func TestRenewAt(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		nb, na time.Time
		jitter float64
		want   time.Time
	}{
		{"24h low", t0, t0.Add(24 * time.Hour), 0, t0.Add(24 * time.Hour * 45 / 100)},
		{"24h mid", t0, t0.Add(24 * time.Hour), 0.5, t0.Add(12 * time.Hour)},
		{"24h high", t0, t0.Add(24 * time.Hour), 1, t0.Add(24 * time.Hour * 55 / 100)},
		{"20s mid", t0, t0.Add(20 * time.Second), 0.5, t0.Add(10 * time.Second)},
		{"backdated", t0.Add(-time.Minute), t0.Add(99 * time.Minute), 0.5, t0.Add(49 * time.Minute)},
		{"jitter clamped below", t0, t0.Add(100 * time.Second), -3, t0.Add(45 * time.Second)},
		{"jitter clamped above", t0, t0.Add(100 * time.Second), 7, t0.Add(55 * time.Second)},
		{"zero length", t0, t0, 0.5, t0},
		{"inverted", t0, t0.Add(-time.Hour), 0.5, t0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := RenewAt(tt.nb, tt.na, tt.jitter); !got.Equal(tt.want) {
				t.Fatalf("RenewAt = %s, want %s", got, tt.want)
			}
		})
	}
}

// TestResumptionFollowsTheCertificate: a client that resumed sessions
// would, after a CA rotation, offer a session made under its old
// certificate, which the server refuses once the old root is gone. The
// cache is per certificate: after Set the client does a full handshake
// with its new certificate, and with the same one it resumes.
func TestResumptionFollowsTheCertificate(t *testing.T) {
	m := newMesh(t)
	next := newTestCA(t)
	both := append(append([][]byte{}, m.ca.bundle()...), next.bundle()...)
	if err := m.server.SetBundle(both); err != nil { // propagating: [old, new]
		t.Fatal(err)
	}
	addr, results := serve(t, ServerTLS(m.server, tlsconfig.AuthorizeMemberOf(td)))
	clientCfg := ClientTLS(m.client, tlsconfig.AuthorizeID(m.serverID))
	for range 2 { // the second resumes
		if _, err := dial(t, addr, clientCfg); err != nil {
			t.Fatal(err)
		}
		if r := recv(t, results); r.err != nil {
			t.Fatal(r.err)
		}
	}
	cs, err := dial(t, addr, clientCfg)
	if err != nil {
		t.Fatal(err)
	}
	recv(t, results)
	if !cs.DidResume {
		t.Fatal("a session under the same certificate was not resumed")
	}
	// Reissuing: both sides move to certificates from the new root; then
	// the old root leaves the server's bundle.
	m.moveTo(t, next)
	cs, err = dial(t, addr, clientCfg)
	if err != nil {
		t.Fatalf("after the rotation: %v", err)
	}
	if r := recv(t, results); r.err != nil {
		t.Fatalf("server refused the client after the rotation: %v", r.err)
	}
	if cs.DidResume {
		t.Error("resumed a session made under the old certificate")
	}
}
