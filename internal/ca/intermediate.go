package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"trellis.dev/trellis/internal/store"
)

// IntermediateKey is the store key of the generated intermediate, which
// signs workload certificates under the generated root: its certificate
// and key as PEM, the key sealed as the root's is. The trust bundle holds
// only the root, so the intermediate can be replaced (rotated) without
// touching any proxy's trust.
const IntermediateKey = "/ca/intermediate"

const intermediateCommonName = "Trellis Intermediate CA"

// errStale: the stored intermediate no longer fits the root (another root,
// or it expired); it is replaced.
var errStale = errors.New("stale intermediate")

// loadOrCreateIntermediate returns the stored intermediate under root, or
// creates one. Writes are compare-and-set, so replicas racing to create
// (or replace) it all end with the one stored first.
func loadOrCreateIntermediate(ctx context.Context, st Storage, root *material, td spiffeid.TrustDomain, now time.Time, seal *SealKey, log *slog.Logger) (*material, error) {
	for range 3 {
		kv, err := st.Get(ctx, IntermediateKey)
		expect := store.Absent
		switch {
		case err == nil:
			m, err := loadStoredIntermediate(ctx, st, kv, root, now, seal)
			if !errors.Is(err, errStale) {
				return m, err
			}
			log.Warn("replacing the stored intermediate CA", "reason", err.Error())
			expect = kv.ModRevision
		case !errors.Is(err, store.ErrNotFound):
			return nil, fmt.Errorf("ca: read intermediate from store: %w", err)
		}
		m, value, err := createIntermediate(IntermediateKey, root, td, now, seal)
		if err != nil {
			return nil, err
		}
		_, err = st.Txn(ctx, store.Put(IntermediateKey, value, expect))
		if err == nil {
			log.Info("created intermediate CA", "not_after", m.cert.NotAfter, "store_key", IntermediateKey, "sealed", seal != nil)
			return m, nil
		}
		if !errors.Is(err, store.ErrConflict) {
			return nil, fmt.Errorf("ca: save intermediate to store: %w", err)
		}
		// Another replica stored one first: read it back.
	}
	return nil, errors.New("ca: intermediate: the store changed under three attempts to create it; start again")
}

func loadStoredIntermediate(ctx context.Context, st Storage, kv store.KV, root *material, now time.Time, seal *SealKey) (*material, error) {
	plain, sealed, err := openRecord(kv.Value, IntermediateKey, seal)
	if err != nil {
		return nil, fmt.Errorf("ca: intermediate in store (%s): %w", IntermediateKey, err)
	}
	certs, signer, err := parsePEMBundle(plain)
	if err != nil {
		return nil, fmt.Errorf("ca: intermediate in store (%s): %w", IntermediateKey, err)
	}
	if signer == nil || len(certs) != 1 {
		return nil, fmt.Errorf("ca: intermediate in store (%s): want one certificate and its key, got %d certificate(s), key present: %t", IntermediateKey, len(certs), signer != nil)
	}
	switch cert := certs[0]; {
	case cert.CheckSignatureFrom(root.cert) != nil:
		return nil, fmt.Errorf("%w: not signed by the root in the store", errStale)
	case !now.Before(cert.NotAfter):
		return nil, fmt.Errorf("%w: expired at %s", errStale, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	m, err := checkSigning(certs, signer, root.roots, now)
	if err != nil {
		return nil, fmt.Errorf("ca: intermediate in store (%s): %w", IntermediateKey, err)
	}
	if seal != nil && !sealed {
		if err := sealStored(ctx, st, kv, m, seal); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// createIntermediate makes an ECDSA P-256 intermediate signed by root, able
// to sign leaves only (path length 0), for the root's trust domain only,
// valid as long as the root; and its store value under storeKey.
func createIntermediate(storeKey string, root *material, td spiffeid.TrustDomain, now time.Time, seal *SealKey) (*material, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: create intermediate: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, fmt.Errorf("ca: create intermediate: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:                serial,
		Subject:                     pkix.Name{CommonName: intermediateCommonName, Organization: []string{"Trellis"}},
		NotBefore:                   now.Add(-clockSkew),
		NotAfter:                    root.cert.NotAfter,
		IsCA:                        true,
		BasicConstraintsValid:       true,
		MaxPathLenZero:              true,
		KeyUsage:                    x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		PermittedURIDomains:         []string{td.Name()},
		PermittedDNSDomainsCritical: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root.cert, key.Public(), root.signer)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: create intermediate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: create intermediate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: create intermediate: %w", err)
	}
	m, err := checkSigning([]*x509.Certificate{cert}, key, root.roots, now)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: create intermediate: %w", err)
	}
	value, err := record(storeKey, der, keyDER, seal)
	if err != nil {
		return nil, nil, err
	}
	return m, value, nil
}
