package identity

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestLoadOrCreateKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "proxy")
	path := filepath.Join(dir, "key.pem")

	k1, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if k1.Curve.Params().Name != "P-256" {
		t.Fatalf("curve %s, want P-256", k1.Curve.Params().Name)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Fatalf("key file mode %#o, want 0600", perm)
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if perm := di.Mode().Perm(); perm != 0o700 {
		t.Fatalf("key dir mode %#o, want 0700", perm)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("dir holds %d entries, want only the key (temp file left behind?)", len(entries))
	}

	k2, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !k1.Equal(k2) {
		t.Fatal("second call returned a different key; the identity would change on every restart")
	}
}

func TestLoadOrCreateKeyConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "key.pem")
	const n = 8
	keys := make([]*ecdsa.PrivateKey, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			k, err := LoadOrCreateKey(path)
			if err != nil {
				t.Error(err)
				return
			}
			keys[i] = k
		})
	}
	wg.Wait()
	on := mustLoad(t, path)
	for i, k := range keys {
		if k == nil || !on.Equal(k) {
			t.Fatalf("caller %d got a key different from the one on disk", i)
		}
	}
}

func mustLoad(t *testing.T, path string) *ecdsa.PrivateKey {
	t.Helper()
	k, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestLoadOrCreateKeyErrors(t *testing.T) {
	k := mustKey(t)
	sec1, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		content []byte
		mode    os.FileMode
		err     string
	}{
		{name: "sec1 ok", content: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}), mode: 0o600},
		{name: "world readable", content: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}), mode: 0o644, err: "chmod 600"},
		{name: "garbage", content: []byte("not a key"), mode: 0o600, err: "no PEM private key block"},
		{name: "corrupt der", content: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}}), mode: 0o600, err: "PKCS#8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "key.pem")
			if err := os.WriteFile(path, tt.content, tt.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tt.mode); err != nil { // umask-proof
				t.Fatal(err)
			}
			got, err := LoadOrCreateKey(path)
			if tt.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				if !got.Equal(k) {
					t.Fatal("loaded a different key")
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("err = %v, want containing %q", err, tt.err)
			}
			// The bad file must not be overwritten with a new identity.
			after, _ := os.ReadFile(path)
			if string(after) != string(tt.content) {
				t.Fatal("key file was modified")
			}
		})
	}
}

func TestNewCSR(t *testing.T) {
	k := mustKey(t)
	id := mustID(t, "default", "orders")
	der, err := NewCSR(k, id)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Fatal(err)
	}
	if len(csr.URIs) != 1 || csr.URIs[0].String() != id.String() {
		t.Fatalf("URIs = %v, want [%s]", csr.URIs, id)
	}
	if !k.PublicKey.Equal(csr.PublicKey) {
		t.Fatal("CSR public key is not the given key's")
	}
	if _, err := NewCSR(k, spiffeid.ID{}); err == nil {
		t.Fatal("CSR for an empty ID was accepted")
	}
}
