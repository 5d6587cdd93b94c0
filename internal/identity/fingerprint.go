package identity

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Fingerprint is the SHA-256 of a certificate's DER, the form in which
// proxies report the root their certificate chains to
// (WatchRequest.cert_issuer_fingerprint) and the CA names roots.
func Fingerprint(der []byte) []byte {
	sum := sha256.Sum256(der)
	return sum[:]
}

// BundleFingerprint is the SHA-256 of a trust bundle: each root's DER in
// bundle order, prefixed with its length (4 bytes, big-endian), so that
// two bundles with the same roots in another order differ (the first root
// is the one the CA issues under) and no two root lists collide by
// concatenation.
func BundleFingerprint(roots [][]byte) []byte {
	h := sha256.New()
	var n [4]byte
	for _, r := range roots {
		binary.BigEndian.PutUint32(n[:], uint32(len(r)))
		h.Write(n[:])
		h.Write(r)
	}
	return h.Sum(nil)
}

// rootOf is the bundle root certs (leaf first) chains to, or nil.
func rootOf(certs []*x509.Certificate, s *sourceState) *x509.Certificate {
	_, chains, err := x509svid.Verify(certs, s.bundle)
	if err != nil || len(chains) == 0 || len(chains[0]) == 0 {
		return nil
	}
	return chains[0][len(chains[0])-1]
}

// CertRootFingerprint is Fingerprint of the bundle root the current
// certificate chains to; nil before the first certificate.
func (s *Source) CertRootFingerprint() []byte {
	if st := s.cur.Load(); st != nil && st.certRoot != nil {
		return Fingerprint(st.certRoot.Raw)
	}
	return nil
}

// BundleFingerprint is BundleFingerprint of the installed bundle; nil
// before the first one.
func (s *Source) BundleFingerprint() []byte {
	if st := s.cur.Load(); st != nil {
		return st.bundleFP
	}
	return nil
}

// IssuerMoved reports whether the current certificate chains to a root
// other than the bundle's first, the one the CA issues under now: the CA
// has rotated and this workload should re-certify.
func (s *Source) IssuerMoved() bool {
	st := s.cur.Load()
	if st == nil || st.svid == nil || st.certRoot == nil || len(st.rootsDER) == 0 {
		return false
	}
	return string(st.certRoot.Raw) != string(st.rootsDER[0])
}
