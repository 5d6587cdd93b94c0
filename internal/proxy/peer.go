package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"trellis.dev/trellis/internal/http1"
	"trellis.dev/trellis/internal/telemetry"
)

// peer holds the pooled mTLS transports to one endpoint (a peer proxy's
// inbound listener). Every connection verifies the peer's SPIFFE ID.
type peer struct {
	addr, identity string
	h2             *http.Transport // multiplexed HTTP/2
	h1             hopTransport    // HTTP/1.1 keep-alive, and upgrades
	tcpTLS         *tls.Config     // opaque TCP tunnels
}

// dialNoting is a transport that tells the caller how long a connection
// it had to make took (internal/http1's), so the balancer's latency sample
// can leave the dial out (sendAttempt).
type dialNoting interface {
	RoundTripNoting(*http.Request, http1.DialNoter) (*http.Response, error)
}

// hopTransport is an HTTP/1.1 transport: internal/http1's between proxies
// and to the app, net/http's to the outside (egress_upstream.go).
type hopTransport interface {
	http.RoundTripper
	CloseIdleConnections()
}

func (p *Proxy) newPeer(addr, identity string) *peer {
	base := p.opts.ClientTLS(identity)
	if base == nil {
		base = &tls.Config{}
	}
	mk := func(protos ...string) *tls.Config {
		c := base.Clone()
		c.NextProtos = protos
		c.VerifyConnection = verifyPeerID(identity, base.VerifyConnection, p.refusals)
		if v := base.VerifyPeerCertificate; v != nil {
			c.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
				if err := v(raw, chains); err != nil {
					return fmt.Errorf("%w: %w", errPeerRefused, err)
				}
				return nil
			}
		}
		if c.ClientSessionCache == nil {
			c.ClientSessionCache = tls.NewLRUClientSessionCache(16)
		}
		return c
	}
	dialer := &net.Dialer{Timeout: handshakeTimeout, KeepAlive: 30 * time.Second}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dialer.DialContext(ctx, network, addr)
		if err != nil {
			return nil, &DialError{Addr: addr, Err: err}
		}
		return c, nil
	}
	var h2p http.Protocols
	h2p.SetHTTP2(true)
	h1TLS := mk("http/1.1")
	return &peer{
		addr:     addr,
		identity: identity,
		h2: &http.Transport{
			DialContext:         dial,
			TLSClientConfig:     mk("h2"),
			TLSHandshakeTimeout: handshakeTimeout,
			Protocols:           &h2p,
			DisableCompression:  true,
			IdleConnTimeout:     90 * time.Second,
			MaxIdleConnsPerHost: 8,
			HTTP2: &http.HTTP2Config{
				SendPingTimeout: 30 * time.Second,
				PingTimeout:     15 * time.Second,
			},
		},
		h1: &http1.Transport{
			Dial: func(ctx context.Context, addr string) (net.Conn, error) {
				c, err := dial(ctx, "tcp", addr)
				if err != nil {
					return nil, err
				}
				return handshake(ctx, c, h1TLS)
			},
			IdleTimeout:    90 * time.Second,
			MaxIdlePerHost: 1024,
			// What the peer's inbound port accepts (engine.go).
			MaxResponseHeaderBytes: 2 * inboundHeaderFactor * DefaultMaxHeaderBytes,
		},
		tcpTLS: mk(ALPNTCP),
	}
}

// handshake runs the client side of TLS on c within handshakeTimeout; its
// errors are crypto/tls's (and the identity check's), as connectFailed
// expects.
func handshake(ctx context.Context, c net.Conn, cfg *tls.Config) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	tc := tls.Client(c, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}

func (pr *peer) closeIdle() {
	pr.h1.CloseIdleConnections()
	pr.h2.CloseIdleConnections()
}

// DialError is a failure to connect to a peer proxy: the request never left
// this proxy, so it is safe to send again to another endpoint.
type DialError struct {
	Addr string
	Err  error
}

func (e *DialError) Error() string { return "proxy: dial " + e.Addr + ": " + e.Err.Error() }
func (e *DialError) Unwrap() error { return e.Err }

var errPeerIdentity = errors.New("proxy: peer identity mismatch")

// errPeerRefused marks a peer certificate the caller's own checks (chain,
// SPIFFE ID) refused: like a failed dial, nothing was sent.
var errPeerRefused = errors.New("proxy: peer certificate refused")

// verifyPeerID enforces secure naming: the peer's leaf must carry want as a
// URI SAN, whatever else the caller's tls.Config checks.
// Refusals are counted (peer_identity).
func verifyPeerID(want string, next func(tls.ConnectionState) error, ref *telemetry.Refusals) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if next != nil {
			if err := next(cs); err != nil {
				ref.Refused(telemetry.RefusedPeerIdentity)
				return err
			}
		}
		if got := peerID(cs.PeerCertificates); got != want {
			ref.Refused(telemetry.RefusedPeerIdentity)
			return fmt.Errorf("%w: want %s, got %q", errPeerIdentity, want, got)
		}
		return nil
	}
}

// peerID returns the SPIFFE ID of a certificate chain's leaf, or "".
func peerID(chain []*x509.Certificate) string {
	if len(chain) == 0 {
		return ""
	}
	for _, u := range chain[0].URIs {
		if u.Scheme == "spiffe" {
			return u.String()
		}
	}
	return ""
}

var errNoSPIFFEID = errors.New("proxy: inbound: client certificate must carry exactly one SPIFFE ID URI SAN")

// oneSPIFFEID reports whether the chain's leaf has exactly one URI SAN and
// it is a valid SPIFFE ID (spiffe://<trust domain>/<path>).
func oneSPIFFEID(chain []*x509.Certificate) bool {
	if len(chain) == 0 || len(chain[0].URIs) != 1 {
		return false
	}
	_, err := spiffeid.FromURI(chain[0].URIs[0])
	return err == nil
}
