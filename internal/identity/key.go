package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// NewKey returns a fresh ECDSA P-256 key: small certificates, fast handshakes,
// and universally supported by TLS stacks.
func NewKey() (*ecdsa.PrivateKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("identity: generate key: %w", err)
	}
	return k, nil
}

// LoadOrCreateKey reads an ECDSA private key (PEM, PKCS#8 or SEC 1) from path,
// or creates a P-256 key there if the file does not exist. A created file is
// 0600 and a created parent directory 0700. An existing file readable or
// writable by group or others is refused, as ssh does, because the key is the
// workload's identity.
func LoadOrCreateKey(path string) (*ecdsa.PrivateKey, error) {
	k, err := loadKey(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return k, err
	}
	return createKey(path)
}

func loadKey(path string) (*ecdsa.PrivateKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("identity: key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("identity: key file: %w", err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("identity: key file %s is accessible by group or others (mode %#o); run chmod 600 %s", path, perm, path)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("identity: key file: %w", err)
	}
	k, err := ParseKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("identity: key file %s: %w; delete it to create a new key", path, err)
	}
	return k, nil
}

// createKey writes the key to a private temp file and links it into place, so
// a reader never sees a half-written key and two processes racing to create
// it both end up with the one that won.
func createKey(path string) (*ecdsa.PrivateKey, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("identity: key dir: %w", err)
	}
	k, err := NewKey()
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("identity: encode key: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".key-*") // CreateTemp uses mode 0600
	if err != nil {
		return nil, fmt.Errorf("identity: create key file: %w", err)
	}
	defer os.Remove(tmp.Name())
	werr := pem.Encode(tmp, &pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if werr == nil {
		werr = tmp.Sync()
	}
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return nil, fmt.Errorf("identity: write key file: %w", werr)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return loadKey(path)
		}
		return nil, fmt.Errorf("identity: create key file: %w", err)
	}
	return k, nil
}

// ParseKeyPEM parses the first private key block in data: PKCS#8 ("PRIVATE
// KEY") or SEC 1 ("EC PRIVATE KEY"), which must hold an ECDSA key.
func ParseKeyPEM(data []byte) (*ecdsa.PrivateKey, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("no PEM private key block")
		}
		switch b.Type {
		case "EC PRIVATE KEY":
			k, err := x509.ParseECPrivateKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("parse EC private key: %w", err)
			}
			return k, nil
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("parse PKCS#8 private key: %w", err)
			}
			ek, ok := k.(*ecdsa.PrivateKey)
			if !ok {
				return nil, fmt.Errorf("private key is %T, want ECDSA", k)
			}
			return ek, nil
		}
	}
}

// NewCSR returns a DER PKCS#10 request signed by key whose only name is id as
// a URI SAN. The CA decides the identity anyway; the SAN makes the request
// self-describing in logs and tools.
func NewCSR(key crypto.Signer, id spiffeid.ID) ([]byte, error) {
	if id.IsZero() {
		return nil, errors.New("identity: csr: empty SPIFFE ID")
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		return nil, fmt.Errorf("identity: csr: %w", err)
	}
	return der, nil
}
