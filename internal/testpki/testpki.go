// Package testpki is throwaway PKI for tests: a self-signed ECDSA P-256 root
// that issues SPIFFE leaf certificates, plus a loopback TLS server and
// client for handshake tests. Production code must not import it.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// CA is a root certificate and its key.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// Option edits a certificate template before it is signed: for a root in
// NewCA, for a leaf in Leaf and friends (odd validity, key usages, SANs).
type Option func(*x509.Certificate)

// NewCA returns a root "testpki root", valid from an hour ago for a day.
func NewCA(t testing.TB, opts ...Option) *CA {
	t.Helper()
	key := NewKey(t)
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "testpki root"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	for _, o := range opts {
		o(tmpl)
	}
	self := &CA{Key: key}
	self.Cert = self.sign(t, tmpl, tmpl, &key.PublicKey)
	return self
}

// NewKey returns a fresh P-256 key.
func NewKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// Issue signs tmpl for pub as is, except that a missing serial number gets a
// random one and a zero NotBefore/NotAfter becomes a minute ago/in an hour.
func (ca *CA) Issue(t testing.TB, tmpl *x509.Certificate, pub any) *x509.Certificate {
	t.Helper()
	return ca.sign(t, tmpl, ca.Cert, pub)
}

func (ca *CA) sign(t testing.TB, tmpl, parent *x509.Certificate, pub any) *x509.Certificate {
	t.Helper()
	if tmpl.SerialNumber == nil {
		// Random, so certificates from different CAs never share a serial.
		n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
		if err != nil {
			t.Fatal(err)
		}
		tmpl.SerialNumber = n
	}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = time.Now().Add(-time.Minute)
	}
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = time.Now().Add(time.Hour)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// LeafTemplate is an end-entity template for server and client auth naming
// uris (none is allowed, as are several: tests need both), with opts applied.
func LeafTemplate(t testing.TB, uris []string, opts ...Option) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	for _, o := range opts {
		o(tmpl)
	}
	return tmpl
}

// Leaf issues a certificate for a new key naming spiffeID ("" for no URI
// SAN), valid from a minute ago for an hour unless opts say otherwise.
func (ca *CA) Leaf(t testing.TB, spiffeID string, opts ...Option) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	var uris []string
	if spiffeID != "" {
		uris = []string{spiffeID}
	}
	key := NewKey(t)
	return ca.Issue(t, LeafTemplate(t, uris, opts...), &key.PublicKey), key
}

// TLSCertificate is Leaf as a tls.Certificate (the chain is the leaf only).
func (ca *CA) TLSCertificate(t testing.TB, spiffeID string, opts ...Option) tls.Certificate {
	t.Helper()
	leaf, key := ca.Leaf(t, spiffeID, opts...)
	return tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
}

// SVID is Leaf as an X.509 SVID; spiffeID must be a valid SPIFFE ID.
func (ca *CA) SVID(t testing.TB, spiffeID string, opts ...Option) *x509svid.SVID {
	t.Helper()
	id, err := spiffeid.FromString(spiffeID)
	if err != nil {
		t.Fatal(err)
	}
	leaf, key := ca.Leaf(t, spiffeID, opts...)
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{leaf}, PrivateKey: key}
}

// Pool is a pool holding only the root.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Bundle is a trust bundle for td holding only the root.
func (ca *CA) Bundle(td spiffeid.TrustDomain) *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(td, []*x509.Certificate{ca.Cert})
}
