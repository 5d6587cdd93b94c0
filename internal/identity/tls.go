package identity

import (
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ErrNoPeerCert: the connection carries no peer certificate.
var ErrNoPeerCert = errors.New("identity: peer presented no certificate")

// ServerTLS is the inbound side of proxy-to-proxy mTLS: it presents the
// Source's current SVID, requires a client certificate, verifies it against
// the Source's current bundle and passes its SPIFFE ID to authorize
// (for example tlsconfig.AuthorizeMemberOf(td)).
func ServerTLS(s *Source, authorize tlsconfig.Authorizer) *tls.Config {
	return &tls.Config{
		// Both ends are Trellis proxies, so there is no older peer to serve,
		// and TLS 1.3 saves a round trip per new connection.
		MinVersion:       tls.VersionTLS13,
		ClientAuth:       tls.RequireAnyClientCert,
		GetCertificate:   tlsconfig.GetCertificate(s),
		VerifyConnection: verifyPeer(s, authorize),
	}
}

// ClientTLS is the outbound side of proxy-to-proxy mTLS: it presents the
// Source's current SVID and accepts the server only if its chain verifies
// against the Source's bundle and authorize accepts its SPIFFE ID (for example
// tlsconfig.AuthorizeID(expected), which is secure naming: the endpoint must
// be the identity the control plane said serves the destination).
func ClientTLS(s *Source, authorize tlsconfig.Authorizer) *tls.Config {
	return &tls.Config{
		MinVersion:           tls.VersionTLS13,
		GetClientCertificate: tlsconfig.GetClientCertificate(s),
		ClientSessionCache:   sessionCache{s: s, inner: tls.NewLRUClientSessionCache(16)},
		// SPIFFE peers are named by URI SAN, not host name, so the standard
		// host name check is off and VerifyConnection does the verification.
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection
		VerifyConnection:   verifyPeer(s, authorize),
	}
}

// sessionCache keeps TLS resumption tickets per client certificate. A
// resumed session presents the certificate of the handshake that made it,
// so a ticket made before the Source's certificate changed (a renewal, a
// CA rotation) is never offered: once a rotation drops the old root, the
// peer refuses such a session, and the request on it fails.
type sessionCache struct {
	s     *Source
	inner tls.ClientSessionCache
}

func (c sessionCache) key(k string) string {
	st := c.s.cur.Load()
	if st == nil || st.svid == nil || len(st.svid.Certificates) == 0 {
		return k
	}
	return k + "|" + st.svid.Certificates[0].SerialNumber.Text(16)
}

func (c sessionCache) Get(k string) (*tls.ClientSessionState, bool) { return c.inner.Get(c.key(k)) }
func (c sessionCache) Put(k string, cs *tls.ClientSessionState)     { c.inner.Put(c.key(k), cs) }

// verifyPeer uses VerifyConnection rather than go-spiffe's
// VerifyPeerCertificate hook because crypto/tls skips VerifyPeerCertificate on
// resumed sessions: this way a resumed connection is re-checked against the
// current bundle and authorizer too.
func verifyPeer(s *Source, authorize tlsconfig.Authorizer) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return ErrNoPeerCert
		}
		id, chains, err := x509svid.Verify(cs.PeerCertificates, s)
		if err != nil {
			return fmt.Errorf("identity: verify peer: %w", err)
		}
		if err := authorize(id, chains); err != nil {
			return fmt.Errorf("identity: peer %s not authorized: %w", id, err)
		}
		return nil
	}
}

// PeerID returns the SPIFFE ID of the peer's leaf certificate. Call it on a
// connection whose handshake completed with ServerTLS or ClientTLS, where the
// chain has already been verified.
func PeerID(cs tls.ConnectionState) (spiffeid.ID, error) {
	if len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, ErrNoPeerCert
	}
	id, err := x509svid.IDFromCert(cs.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("identity: peer ID: %w", err)
	}
	return id, nil
}

// Renewal happens between RenewMin and RenewMax of a certificate's
// lifetime: about half, as Istio and SPIRE do. Half leaves 12 h of a 24 h
// certificate to retry through a control-plane outage, and a window rather
// than a point spreads the renewals of proxies that started together (a
// rollout, a CA rotation) over a tenth of the lifetime instead of one
// instant.
const (
	RenewMin = 0.45
	RenewMax = 0.55
)

// RenewAt is when to renew a certificate valid from notBefore to notAfter:
// at RenewMin + jitter × (RenewMax − RenewMin) of its lifetime, jitter in
// [0, 1) drawn once per certificate (math/rand/v2's Float64). Values out of
// range are clamped, so a bad source cannot push renewal past expiry.
func RenewAt(notBefore, notAfter time.Time, jitter float64) time.Time {
	if !notAfter.After(notBefore) {
		return notBefore
	}
	jitter = min(max(jitter, 0), 1)
	frac := RenewMin + jitter*(RenewMax-RenewMin)
	return notBefore.Add(time.Duration(float64(notAfter.Sub(notBefore)) * frac))
}
