package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"trellis.dev/trellis/internal/store"
)

// loadOrCreateRoot reads the root from the store, or creates and stores one.
// The write expects the key to be absent, so when replicas race, one wins
// and the others read back the winner's root. With a seal key the root's
// private key is stored sealed, and a root found unsealed is sealed in
// place.
func loadOrCreateRoot(ctx context.Context, st Storage, td spiffeid.TrustDomain, now time.Time, seal *SealKey, log *slog.Logger) (*material, error) {
	kv, err := st.Get(ctx, RootKey)
	switch {
	case err == nil:
		return loadStoredRoot(ctx, st, kv, td, now, seal, log)
	case !errors.Is(err, store.ErrNotFound):
		return nil, fmt.Errorf("ca: read root from store: %w", err)
	}

	m, value, err := createRoot(RootKey, td, now, seal)
	if err != nil {
		return nil, err
	}
	if _, err := st.Txn(ctx, store.Put(RootKey, value, store.Absent)); err != nil {
		if !errors.Is(err, store.ErrConflict) {
			return nil, fmt.Errorf("ca: save root to store: %w", err)
		}
		kv, err := st.Get(ctx, RootKey)
		if err != nil {
			return nil, fmt.Errorf("ca: read root from store after losing the race to create it: %w", err)
		}
		return loadStoredRoot(ctx, st, kv, td, now, seal, log)
	}
	log.Info("created root CA", "trust_domain", td.String(), "not_after", m.cert.NotAfter, "store_key", RootKey, "sealed", seal != nil)
	return m, nil
}

func loadStoredRoot(ctx context.Context, st Storage, kv store.KV, td spiffeid.TrustDomain, now time.Time, seal *SealKey, log *slog.Logger) (*material, error) {
	plain, sealed, err := openRecord(kv.Value, RootKey, seal)
	if err != nil {
		return nil, fmt.Errorf("ca: root in store (%s): %w", RootKey, err)
	}
	certs, signer, err := parsePEMBundle(plain)
	if err != nil {
		return nil, fmt.Errorf("ca: root in store (%s): %w", RootKey, err)
	}
	if signer == nil || len(certs) != 1 {
		return nil, fmt.Errorf("ca: root in store (%s): want one certificate and its key, got %d certificate(s), key present: %t", RootKey, len(certs), signer != nil)
	}
	m, err := checkSigning(certs, signer, nil, now)
	if err != nil {
		return nil, fmt.Errorf("ca: root in store (%s): %w", RootKey, err)
	}
	if doms := m.cert.PermittedURIDomains; len(doms) > 0 && !slices.Contains(doms, td.Name()) {
		return nil, fmt.Errorf("ca: root in store (%s) was created for trust domain %v, not %q; "+
			"start with the original trust domain, or delete %s to create a new root (every workload must then be re-issued)",
			RootKey, doms, td, RootKey)
	}
	if seal != nil && !sealed {
		if err := sealStored(ctx, st, kv, m, seal); err != nil {
			return nil, err
		}
		log.Info("sealed the root CA's key in the store", "store_key", RootKey, "seal_key_id", seal.ID())
	}
	log.Info("loaded root CA from store", "trust_domain", td.String(), "not_after", m.cert.NotAfter, "sealed", sealed || seal != nil)
	return m, nil
}

// sealStored rewrites an unsealed record (kv, holding m) sealed, if it is
// still the record read (a replica that sealed it first wins; the same
// certificate and key either way).
func sealStored(ctx context.Context, st Storage, kv store.KV, m *material, seal *SealKey) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(m.signer)
	if err != nil {
		return fmt.Errorf("ca: seal %s: %w", kv.Key, err)
	}
	value, err := record(kv.Key, m.cert.Raw, keyDER, seal)
	if err != nil {
		return err
	}
	if _, err := st.Txn(ctx, store.Put(kv.Key, value, kv.ModRevision)); err != nil && !errors.Is(err, store.ErrConflict) {
		return fmt.Errorf("ca: seal %s in store: %w", kv.Key, err)
	}
	return nil
}

// record is the store value of a CA certificate under storeKey: the
// certificate, then its PKCS#8 key, sealed when there is a seal key.
func record(storeKey string, certDER, keyDER []byte, seal *SealKey) ([]byte, error) {
	value := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER})
	if seal == nil {
		return append(value, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})...), nil
	}
	sealed, err := seal.seal(keyDER, storeKey, certDER)
	if err != nil {
		return nil, err
	}
	return append(value, sealed...), nil
}

// openRecord returns a stored record as plain PEM, its sealed key (bound to
// the record's first certificate) opened, and whether it was sealed.
func openRecord(value []byte, storeKey string, seal *SealKey) (plain []byte, sealed bool, err error) {
	var firstCert []byte
	for rest := value; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return plain, sealed, nil
		}
		if b.Type == "CERTIFICATE" && firstCert == nil {
			firstCert = b.Bytes
		}
		if b.Type == SealedKeyType {
			if firstCert == nil {
				return nil, false, errors.New("sealed key before any certificate")
			}
			if b, err = seal.open(b, storeKey, firstCert); err != nil {
				return nil, false, err
			}
			sealed = true
		}
		plain = append(plain, pem.EncodeToMemory(b)...)
	}
}

// createRoot makes a self-signed ECDSA P-256 root and its store value under
// storeKey (certificate and PKCS#8 key as PEM, the key sealed if seal is set).
func createRoot(storeKey string, td spiffeid.TrustDomain, now time.Time, seal *SealKey) (*material, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: create root: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, fmt.Errorf("ca: create root: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: rootCommonName, Organization: []string{"Trellis"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(rootTTL),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		// The root can only vouch for IDs in its own trust domain, so a
		// stolen workload bundle cannot be used to trust other domains' IDs.
		PermittedURIDomains:         []string{td.Name()},
		PermittedDNSDomainsCritical: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: create root: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: create root: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: create root: %w", err)
	}
	value, err := record(storeKey, der, keyDER, seal)
	if err != nil {
		return nil, nil, err
	}
	return &material{cert: cert, signer: key, roots: []*x509.Certificate{cert}, chains: [][]*x509.Certificate{{cert}}}, value, nil
}

// parsePEMBundle returns every CERTIFICATE block and the first private key
// block (nil if none). Unknown block types are an error, so a mislabelled
// file is noticed.
func parsePEMBundle(data []byte) ([]*x509.Certificate, crypto.Signer, error) {
	var (
		certs  []*x509.Certificate
		signer crypto.Signer
	)
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		switch b.Type {
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
			}
			certs = append(certs, c)
		case "PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY":
			if signer != nil {
				return nil, nil, errors.New("more than one private key")
			}
			s, err := parsePrivateKey(b)
			if err != nil {
				return nil, nil, err
			}
			signer = s
		default:
			return nil, nil, fmt.Errorf("unexpected PEM block %q", b.Type)
		}
	}
	return certs, signer, nil
}

func parsePrivateKey(b *pem.Block) (crypto.Signer, error) {
	var (
		k   any
		err error
	)
	switch b.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(b.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
	}
	if err != nil {
		return nil, fmt.Errorf("private key: %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key of type %T cannot sign", k)
	}
	return s, nil
}

var errKeyMismatch = errors.New("private key does not match certificate")

// checkSigning validates a signing certificate (certs[0]), the intermediates
// after it, its key and the roots (nil: certs[0] must be a self-signed root).
func checkSigning(certs []*x509.Certificate, signer crypto.Signer, roots []*x509.Certificate, now time.Time) (*material, error) {
	cert := certs[0]
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return nil, fmt.Errorf("certificate %q is not a CA (basic constraints CA:FALSE or missing); use a CA certificate", cert.Subject)
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("certificate %q lacks the keyCertSign key usage", cert.Subject)
	}
	pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("%w %q", errKeyMismatch, cert.Subject)
	}
	if now.After(cert.NotAfter) {
		return nil, fmt.Errorf("%w: certificate %q expired at %s; issue a new one", ErrExpired, cert.Subject, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(cert.NotBefore) {
		return nil, fmt.Errorf("certificate %q is not valid before %s; check the clock", cert.Subject, cert.NotBefore.UTC().Format(time.RFC3339))
	}
	m := &material{cert: cert, signer: signer}
	selfSigned := cert.CheckSignatureFrom(cert) == nil && string(cert.RawSubject) == string(cert.RawIssuer)
	if roots == nil {
		if !selfSigned {
			return nil, fmt.Errorf("certificate %q is not self-signed (issuer %q): an intermediate needs the root file it chains to", cert.Subject, cert.Issuer)
		}
		m.roots = []*x509.Certificate{cert}
		m.chains = [][]*x509.Certificate{{cert}}
		return m, nil
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	chains, err := cert.Verify(x509.VerifyOptions{
		Roots:         pool,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, fmt.Errorf("certificate %q does not chain to the roots: %w", cert.Subject, err)
	}
	m.roots = roots
	m.chains = chains
	if !selfSigned {
		// Send the path up to (not including) the root with every leaf.
		chain := chains[0]
		m.tail = chain[:len(chain)-1]
	}
	return m, nil
}
