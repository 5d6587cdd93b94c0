package ca

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"
)

// loadFiles reads a signing certificate (plus optional intermediates), its
// key and optional roots from PEM files. Errors name the file at fault.
func loadFiles(certFile, keyFile, rootFile string, now time.Time) (*material, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("ca: cert file: %w", err)
	}
	certs, stray, err := parsePEMBundle(certPEM)
	if err != nil {
		return nil, fmt.Errorf("ca: cert file %s: %w", certFile, err)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("ca: cert file %s: no PEM CERTIFICATE block", certFile)
	}
	if stray != nil && certFile != keyFile {
		return nil, fmt.Errorf("ca: cert file %s holds a private key; keep keys in the key file only", certFile)
	}

	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("ca: key file: %w", err)
	}
	_, signer, err := parsePEMBundle(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("ca: key file %s: %w", keyFile, err)
	}
	if signer == nil {
		return nil, fmt.Errorf("ca: key file %s: no PEM private key block", keyFile)
	}

	var roots []*x509.Certificate
	if rootFile != "" {
		rootPEM, err := os.ReadFile(rootFile)
		if err != nil {
			return nil, fmt.Errorf("ca: root file: %w", err)
		}
		var key crypto.Signer
		roots, key, err = parsePEMBundle(rootPEM)
		if err != nil {
			return nil, fmt.Errorf("ca: root file %s: %w", rootFile, err)
		}
		if key != nil {
			return nil, fmt.Errorf("ca: root file %s holds a private key; it must hold only the root certificate(s)", rootFile)
		}
		if len(roots) == 0 {
			return nil, fmt.Errorf("ca: root file %s: no PEM CERTIFICATE block", rootFile)
		}
		for _, r := range roots {
			if !r.IsCA {
				return nil, fmt.Errorf("ca: root file %s: certificate %q is not a CA", rootFile, r.Subject)
			}
		}
	}

	m, err := checkSigning(certs, signer, roots, now)
	if err != nil {
		if errors.Is(err, errKeyMismatch) {
			return nil, fmt.Errorf("ca: key file %s does not match cert file %s: %w", keyFile, certFile, err)
		}
		if rootFile != "" {
			return nil, fmt.Errorf("ca: cert file %s (roots from %s): %w", certFile, rootFile, err)
		}
		return nil, fmt.Errorf("ca: cert file %s: %w", certFile, err)
	}
	return m, nil
}
