package identity

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ErrNotReady: the Source has no certificate yet.
var ErrNotReady = errors.New("identity: no certificate yet")

// Source holds the workload's current X.509 SVID and trust bundle. It
// implements x509svid.Source and x509bundle.Source, and TLS configs built on
// it read it on every handshake, so Set rotates the certificate or the roots
// for the next connection without rebuilding any tls.Config. Safe for
// concurrent use; readers never block.
type Source struct {
	td  spiffeid.TrustDomain
	cur atomic.Pointer[sourceState]
}

// sourceState is immutable once published.
type sourceState struct {
	svid   *x509svid.SVID // nil until the first Set
	bundle *x509bundle.Bundle
	pool   *x509.CertPool
	// rootsDER is the bundle in its order; bundleFP its BundleFingerprint;
	// certRoot the root svid chains to (nil without svid).
	rootsDER [][]byte
	bundleFP []byte
	certRoot *x509.Certificate
}

// newState is a state for svid (may be nil) under bundle.
func newState(svid *x509svid.SVID, b *x509bundle.Bundle, pool *x509.CertPool, bundle [][]byte) *sourceState {
	st := &sourceState{svid: svid, bundle: b, pool: pool, bundleFP: BundleFingerprint(bundle)}
	st.rootsDER = make([][]byte, len(bundle))
	for i, r := range bundle {
		st.rootsDER[i] = append([]byte(nil), r...)
	}
	if svid != nil {
		st.certRoot = rootOf(svid.Certificates, st)
	}
	return st
}

var (
	_ x509svid.Source   = (*Source)(nil)
	_ x509bundle.Source = (*Source)(nil)
)

// NewSource returns an empty Source for trust domain td.
func NewSource(td spiffeid.TrustDomain) *Source {
	return &Source{td: td}
}

// TrustDomain is the trust domain the Source was made for.
func (s *Source) TrustDomain() spiffeid.TrustDomain { return s.td }

// Set installs a new certificate chain (DER, leaf first), its private key and
// the trust bundle (DER roots). It checks that the chain parses, the key
// matches the leaf, the leaf has exactly one SPIFFE URI SAN in the Source's
// trust domain, and the chain verifies against the bundle now. On any error
// the previous state stays in place.
func (s *Source) Set(chain [][]byte, key crypto.Signer, bundle [][]byte) error {
	certs, err := parseDERs(chain)
	if err != nil {
		return fmt.Errorf("identity: set: chain: %w", err)
	}
	if len(certs) == 0 {
		return errors.New("identity: set: empty certificate chain")
	}
	if key == nil {
		return errors.New("identity: set: no private key")
	}
	b, pool, err := s.parseBundle(bundle)
	if err != nil {
		return fmt.Errorf("identity: set: %w", err)
	}
	id, err := s.verifyChain(certs, b)
	if err != nil {
		return fmt.Errorf("identity: set: %w", err)
	}
	leaf := certs[0]
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(leaf.PublicKey) {
		return errors.New("identity: set: private key does not match the leaf certificate")
	}
	s.cur.Store(newState(&x509svid.SVID{ID: id, Certificates: certs, PrivateKey: key}, b, pool, bundle))
	return nil
}

// SetBundle replaces the trust bundle alone, as during root rotation (add the
// new root, later drop the old one). The current certificate, if any, must
// still verify against the new bundle; otherwise nothing changes.
func (s *Source) SetBundle(bundle [][]byte) error {
	b, pool, err := s.parseBundle(bundle)
	if err != nil {
		return fmt.Errorf("identity: set bundle: %w", err)
	}
	old := s.cur.Load()
	var svid *x509svid.SVID
	if old != nil && old.svid != nil {
		if _, err := s.verifyChain(old.svid.Certificates, b); err != nil {
			return fmt.Errorf("identity: set bundle: current certificate would not verify: %w", err)
		}
		svid = old.svid
	}
	next := newState(svid, b, pool, bundle)
	// A concurrent Set wins over this call; proxies apply updates from one
	// goroutine, so a lost race here means a newer state already landed.
	if !s.cur.CompareAndSwap(old, next) {
		return errors.New("identity: set bundle: state changed concurrently; retry")
	}
	return nil
}

func (s *Source) parseBundle(bundle [][]byte) (*x509bundle.Bundle, *x509.CertPool, error) {
	roots, err := parseDERs(bundle)
	if err != nil {
		return nil, nil, fmt.Errorf("bundle: %w", err)
	}
	if len(roots) == 0 {
		return nil, nil, errors.New("bundle: no roots")
	}
	pool := x509.NewCertPool()
	for i, r := range roots {
		if !r.IsCA {
			return nil, nil, fmt.Errorf("bundle: root %d (%s) is not a CA certificate", i, r.Subject)
		}
		pool.AddCert(r)
	}
	return x509bundle.FromX509Authorities(s.td, roots), pool, nil
}

func (s *Source) verifyChain(certs []*x509.Certificate, b *x509bundle.Bundle) (spiffeid.ID, error) {
	id, err := x509svid.IDFromCert(certs[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("leaf: %w", err)
	}
	if !id.MemberOf(s.td) {
		return spiffeid.ID{}, fmt.Errorf("leaf ID %s is not in trust domain %s", id, s.td)
	}
	if certs[0].KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return spiffeid.ID{}, errors.New("leaf lacks the digitalSignature key usage")
	}
	if _, _, err := x509svid.Verify(certs, b); err != nil {
		return spiffeid.ID{}, err
	}
	return id, nil
}

func parseDERs(ders [][]byte) ([]*x509.Certificate, error) {
	certs := make([]*x509.Certificate, 0, len(ders))
	for i, d := range ders {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", i, err)
		}
		certs = append(certs, c)
	}
	return certs, nil
}

// GetX509SVID returns the current SVID, or ErrNotReady before the first Set.
// The returned value is shared and must not be modified.
func (s *Source) GetX509SVID() (*x509svid.SVID, error) {
	st := s.cur.Load()
	if st == nil || st.svid == nil {
		return nil, ErrNotReady
	}
	return st.svid, nil
}

// GetX509BundleForTrustDomain returns the current bundle for the Source's own
// trust domain; any other trust domain is an error (no federation yet).
func (s *Source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != s.td {
		return nil, fmt.Errorf("identity: no bundle for trust domain %q (this workload trusts only %q)", td, s.td)
	}
	st := s.cur.Load()
	if st == nil {
		return nil, ErrNotReady
	}
	return st.bundle, nil
}

// ID is the current SVID's SPIFFE ID, zero before the first Set.
func (s *Source) ID() spiffeid.ID {
	if st := s.cur.Load(); st != nil && st.svid != nil {
		return st.svid.ID
	}
	return spiffeid.ID{}
}

// NotAfter is the current leaf's expiry, zero before the first Set.
func (s *Source) NotAfter() time.Time {
	if st := s.cur.Load(); st != nil && st.svid != nil {
		return st.svid.Certificates[0].NotAfter
	}
	return time.Time{}
}

// NotBefore is the current leaf's start of validity, zero before the first Set.
func (s *Source) NotBefore() time.Time {
	if st := s.cur.Load(); st != nil && st.svid != nil {
		return st.svid.Certificates[0].NotBefore
	}
	return time.Time{}
}

// Ready reports whether a certificate has been installed.
func (s *Source) Ready() bool {
	st := s.cur.Load()
	return st != nil && st.svid != nil
}

// RootPool is the current bundle as a pool (nil before the first Set), for
// TLS clients that verify with the standard library, such as a proxy talking
// to the control plane.
func (s *Source) RootPool() *x509.CertPool {
	if st := s.cur.Load(); st != nil {
		return st.pool
	}
	return nil
}
