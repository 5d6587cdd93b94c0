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

	"trellis.dev/trellis/internal/http1"
	"trellis.dev/trellis/internal/telemetry"
)

// The inbound port's admission: each accepted connection is told apart by
// its first byte — a TLS handshake record (0x16) or plaintext — and, for
// TLS, handshaken here rather than inside net/http, so every failed
// handshake is counted with its reason. Plaintext is admitted only while
// the service's mTLS mode is PERMISSIVE. Admitted connections go to the
// inbound http.Server through a chanListener.

const tlsRecordHandshake = 0x16

// errCounted marks a handshake refusal already counted by a TLS callback.
var errCounted = errors.New("proxy: inbound: refused")

// inboundLn feeds admitted connections to the inbound server; Close
// stops the raw listener too.
type inboundLn struct {
	*chanListener
	raw net.Listener
}

func (l inboundLn) Close() error {
	_ = l.raw.Close()
	return l.chanListener.Close()
}

// acceptInbound accepts raw connections and admits each on its own
// goroutine, so a client that sends nothing holds up no one else.
func (p *Proxy) acceptInbound(ln inboundLn, cfg *tls.Config, h1 *http1.Server) {
	defer ln.chanListener.Close()
	for {
		conn, err := ln.raw.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		go func() {
			if c := p.admitInbound(conn, cfg); c == nil || !p.routeInbound(c, h1, ln.chanListener) {
				conn.Close()
			}
		}()
	}
}

// admitInbound returns the connection to serve (a handshaken *tls.Conn, or
// a framed plaintext one), or nil when it is refused.
func (p *Proxy) admitInbound(conn net.Conn, cfg *tls.Config) net.Conn {
	_ = conn.SetDeadline(time.Now().Add(p.limits.ReadHeaderTimeout))
	pc := &peekedConn{Conn: conn}
	if _, err := conn.Read(pc.first[:]); err != nil {
		p.refusals.Refused(telemetry.RefusedTLSHandshake)
		return nil
	}
	if pc.first[0] != tlsRecordHandshake {
		if !p.cfg.Load().inbound.permissive {
			p.refusals.Refused(telemetry.RefusedPlaintext)
			return nil
		}
		_ = conn.SetDeadline(time.Time{})
		return pc
	}
	tc := tls.Server(pc, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), p.limits.ReadHeaderTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		p.countHandshake(err)
		if ok, n := p.refusalLog.Allow("inbound_handshake"); ok {
			p.log.Info("inbound handshake refused", "remote", conn.RemoteAddr().String(), "err", err, "suppressed", n)
		}
		return nil
	}
	_ = conn.SetDeadline(time.Time{})
	return tc
}

// countHandshake counts a failed handshake the callbacks did not count.
func (p *Proxy) countHandshake(err error) {
	var cv *tls.CertificateVerificationError
	switch {
	case errors.Is(err, errCounted):
	case errors.As(err, &cv):
		p.refusals.Refused(telemetry.RefusedUntrustedCert)
	default:
		p.refusals.Refused(telemetry.RefusedTLSHandshake)
	}
}

// peekedConn replays the first byte read from Conn.
type peekedConn struct {
	net.Conn
	first  [1]byte
	replay bool // first has been returned
}

func (c *peekedConn) Read(b []byte) (int, error) {
	if !c.replay && len(b) > 0 {
		c.replay = true
		b[0] = c.first[0]
		return 1, nil
	}
	return c.Conn.Read(b)
}

// refuseOldTLS wraps a GetConfigForClient (nil: none): a client offering
// no version at or above the config's minimum is refused and counted as
// tls_version, not as a generic handshake failure.
func (p *Proxy) refuseOldTLS(min uint16, next func(*tls.ClientHelloInfo) (*tls.Config, error)) func(*tls.ClientHelloInfo) (*tls.Config, error) {
	if min == 0 {
		min = tls.VersionTLS12 // crypto/tls's server default
	}
	return func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
		ok := false
		for _, v := range hi.SupportedVersions {
			ok = ok || v >= min
		}
		if !ok {
			p.refusals.Refused(telemetry.RefusedTLSVersion)
			return nil, fmt.Errorf("%w: client offers no TLS version at or above %s", errCounted, tls.VersionName(min))
		}
		if next == nil {
			return nil, nil
		}
		return next(hi)
	}
}

// verifyInboundPeer wraps the inbound config's own check (next: chain and
// trust domain) with the proxy's: the leaf names exactly one well-formed
// SPIFFE ID, whatever next checks. Each refusal is counted by its reason.
func (p *Proxy) verifyInboundPeer(next func(tls.ConnectionState) error) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if !oneSPIFFEID(cs.PeerCertificates) {
			p.refusals.Refused(telemetry.RefusedBadIdentity)
			return fmt.Errorf("%w: %w", errCounted, errNoSPIFFEID)
		}
		if next != nil {
			if err := next(cs); err != nil {
				p.refusals.Refused(telemetry.RefusedUntrustedCert)
				return fmt.Errorf("%w: %w", errCounted, err)
			}
		}
		return nil
	}
}

// countPeerCertificate counts the refusals of a config's own
// VerifyPeerCertificate (which crypto/tls runs before VerifyConnection):
// bad_identity when the leaf lacks exactly one SPIFFE ID, else
// untrusted_certificate.
func (p *Proxy) countPeerCertificate(next func([][]byte, [][]*x509.Certificate) error) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, chains [][]*x509.Certificate) error {
		err := next(raw, chains)
		if err == nil {
			return nil
		}
		var leaf []*x509.Certificate
		if len(raw) > 0 {
			if c, perr := x509.ParseCertificate(raw[0]); perr == nil {
				leaf = []*x509.Certificate{c}
			}
		}
		if oneSPIFFEID(leaf) {
			p.refusals.Refused(telemetry.RefusedUntrustedCert)
		} else {
			p.refusals.Refused(telemetry.RefusedBadIdentity)
		}
		return fmt.Errorf("%w: %w", errCounted, err)
	}
}

// authnFilter admits peers with a verified SPIFFE ID and, while the
// service is PERMISSIVE, plaintext requests (counted, without identity).
// A plaintext connection admitted while PERMISSIVE is refused here request
// by request once the service turns STRICT.
func (p *Proxy) authnFilter(next Handler) Handler {
	return HandlerFunc(func(ex *Exchange) *Response {
		switch {
		case ex.PeerID != "":
		case ex.Plaintext && ex.cfg.inbound.permissive:
			p.refusals.Plaintext()
		case ex.Plaintext:
			p.refusals.Refused(telemetry.RefusedPlaintext)
			return ex.fail(http.StatusForbidden, FlagNI, "plaintext is not accepted: "+ex.cfg.inbound.key+" is STRICT (mTLS only)")
		default:
			return ex.fail(http.StatusForbidden, FlagNI, "no verified client identity")
		}
		return next.Serve(ex)
	})
}
