package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Sign issues a workload certificate for id to the key in csrDER (DER
// PKCS#10). The CSR only proves possession of the key: the certificate names
// id and nothing else, whatever the CSR asks for, because the caller has
// already decided (from the bootstrap token) who the workload is. It returns
// the chain (leaf first, then any intermediates; not the root) and the leaf's
// expiry.
func (c *CA) Sign(csrDER []byte, id spiffeid.ID) (chain [][]byte, notAfter time.Time, err error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("ca: sign: %w: %v", ErrBadCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, time.Time{}, fmt.Errorf("ca: sign: %w: signature: %v", ErrBadCSR, err)
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, time.Time{}, fmt.Errorf("ca: sign: %w: %v", ErrBadCSR, err)
	}
	chain, notAfter, err = c.issue(csr.PublicKey, id, nil, nil)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("ca: sign: %w", err)
	}
	c.log.Debug("issued workload certificate", "id", id.String(), "not_after", notAfter)
	return chain, notAfter, nil
}

// checkPublicKey accepts the keys a TLS peer can be expected to handle at a
// strength worth issuing for.
func checkPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("ECDSA curve %s not accepted; use P-256 or P-384", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("RSA key of %d bits is too small; use at least 2048", k.N.BitLen())
		}
	default:
		return fmt.Errorf("unsupported public key type %T", pub)
	}
	return nil
}

// issue signs a leaf for pub naming id (URI SAN) plus the given DNS names and
// IPs (control-plane server certificates only), under the current issuer.
func (c *CA) issue(pub crypto.PublicKey, id spiffeid.ID, dnsNames []string, ips []net.IP) ([][]byte, time.Time, error) {
	return c.issueWith(c.cur.Load(), pub, id, dnsNames, ips)
}

func (c *CA) issueWith(is *issuer, pub crypto.PublicKey, id spiffeid.ID, dnsNames []string, ips []net.IP) ([][]byte, time.Time, error) {
	if id.IsZero() || !id.MemberOf(c.td) || id.Path() == "" {
		return nil, time.Time{}, fmt.Errorf("%w: %q (trust domain %s)", ErrForeignID, id.String(), c.td)
	}
	now := c.now()
	if !now.Before(is.maxNotAfter) {
		return nil, time.Time{}, fmt.Errorf("%w at %s; renew or replace the CA certificate", ErrExpired, is.maxNotAfter.UTC().Format(time.RFC3339))
	}
	notAfter := now.Add(c.ttl)
	if notAfter.After(is.maxNotAfter) {
		notAfter = is.maxNotAfter
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, time.Time{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		// No subject: a SPIFFE leaf is named by its URI SAN, which
		// CreateCertificate then marks critical as RFC 5280 requires.
		URIs:                  []*url.URL{id.URL()},
		DNSNames:              dnsNames,
		IPAddresses:           ips,
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, is.cert, pub, is.signer)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("create certificate: %w", err)
	}
	chain := make([][]byte, 0, 1+len(is.chainTail))
	chain = append(chain, der)
	chain = append(chain, is.chainTail...)
	return chain, notAfter, nil
}

var serialLimit = new(big.Int).Lsh(big.NewInt(1), 128)

// randomSerial returns a random positive serial of up to 128 bits; random
// serials make issued certificates unpredictable (RFC 5280 wants them unique
// per CA, and several replicas share the CA).
func randomSerial() (*big.Int, error) {
	for {
		n, err := rand.Int(rand.Reader, serialLimit)
		if err != nil {
			return nil, fmt.Errorf("serial: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}
