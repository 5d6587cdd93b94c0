package ca

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"trellis.dev/trellis/internal/identity"
	"trellis.dev/trellis/internal/store"
)

// memStorage is the smallest Storage with the store's compare-and-set
// semantics. Several memStorage values can share one memData to stand for
// the same database opened twice.
type memData struct {
	mu  sync.Mutex
	rev int64
	kv  map[string]store.KV
}

type memStorage struct {
	d *memData
	// afterGet, if set, runs after every Get has read, before it returns
	// (to line up races).
	afterGet func()
	// afterList is afterGet for List.
	afterList func()
}

func newMem() *memStorage { return &memStorage{d: &memData{kv: map[string]store.KV{}}} }

func (m *memStorage) Get(_ context.Context, key string) (store.KV, error) {
	m.d.mu.Lock()
	kv, ok := m.d.kv[key]
	m.d.mu.Unlock()
	if m.afterGet != nil {
		m.afterGet()
	}
	if !ok {
		return store.KV{}, store.ErrNotFound
	}
	kv.Value = append([]byte(nil), kv.Value...)
	return kv, nil
}

func (m *memStorage) List(_ context.Context, prefix string) ([]store.KV, int64, error) {
	if m.afterList != nil {
		defer m.afterList()
	}
	m.d.mu.Lock()
	defer m.d.mu.Unlock()
	var out []store.KV
	for k, kv := range m.d.kv {
		if strings.HasPrefix(k, prefix) {
			kv.Value = append([]byte(nil), kv.Value...)
			out = append(out, kv)
		}
	}
	slices.SortFunc(out, func(a, b store.KV) int { return strings.Compare(a.Key, b.Key) })
	return out, m.d.rev, nil
}

func (m *memStorage) Txn(_ context.Context, ops ...store.Op) (int64, error) {
	m.d.mu.Lock()
	defer m.d.mu.Unlock()
	for _, op := range ops {
		cur, ok := m.d.kv[op.Key]
		switch {
		case op.ExpectRevision == store.Any:
		case op.ExpectRevision == store.Absent && ok:
			return 0, store.ErrConflict
		case op.ExpectRevision > 0 && (!ok || cur.ModRevision != op.ExpectRevision):
			return 0, store.ErrConflict
		}
	}
	m.d.rev++
	for _, op := range ops {
		switch op.Type {
		case store.OpPut:
			kv := m.d.kv[op.Key]
			if kv.CreateRevision == 0 {
				kv.CreateRevision = m.d.rev
			}
			kv.Key, kv.Value, kv.ModRevision = op.Key, append([]byte(nil), op.Value...), m.d.rev
			m.d.kv[op.Key] = kv
		case store.OpDelete:
			delete(m.d.kv, op.Key)
		}
	}
	return m.d.rev, nil
}

var td = spiffeid.RequireTrustDomainFromString("trellis.local")

func mustCA(t testing.TB, opts Options) *CA {
	t.Helper()
	c, err := LoadOrCreate(context.Background(), newMem(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func workloadID(t testing.TB, ns, sa string) spiffeid.ID {
	t.Helper()
	id, err := identity.WorkloadID("trellis.local", ns, sa)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// fileCA is a CA certificate and key made for the file-loading tests.
type fileCA struct {
	cert *x509.Certificate
	key  crypto.Signer
}

type certOpt func(*x509.Certificate)

func makeCert(t testing.TB, cn string, parent *fileCA, isCA bool, opts ...certOpt) *fileCA {
	t.Helper()
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(365 * 24 * time.Hour),
		IsCA:                  isCA,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	if !isCA {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	}
	for _, o := range opts {
		o(tmpl)
	}
	signerCert, signerKey := tmpl, crypto.Signer(key)
	if parent != nil {
		signerCert, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signerCert, key.Public(), signerKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &fileCA{cert: cert, key: key}
}

func writeCerts(t testing.TB, dir, name string, certs ...*x509.Certificate) string {
	t.Helper()
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func writeKey(t testing.TB, dir, name string, key crypto.Signer) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// csrFor returns a key and a CSR from it naming id.
func csrFor(t testing.TB, id spiffeid.ID) ([]byte, crypto.Signer) {
	t.Helper()
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	der, err := identity.NewCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

func spiffeIDOf(t testing.TB, s string) spiffeid.ID {
	t.Helper()
	id, err := spiffeid.FromString(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}
