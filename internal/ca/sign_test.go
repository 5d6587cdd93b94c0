package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"trellis.dev/trellis/internal/identity"
)

func TestSign(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	c := mustCA(t, Options{WorkloadTTL: 6 * time.Hour, Now: func() time.Time { return now }})
	id := workloadID(t, "default", "orders")
	csr, key := csrFor(t, id)

	chain, notAfter, err := c.Sign(csr, id)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 {
		t.Fatalf("chain has %d certificates, want the leaf and the intermediate (the root is in the bundle)", len(chain))
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         c.RootPool(),
		Intermediates: intermediatesOf(t, chain),
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}); err != nil {
		t.Fatalf("leaf does not verify against the bundle: %v", err)
	}
	switch {
	case len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String():
		t.Errorf("URIs = %v, want [%s]", leaf.URIs, id)
	case len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0:
		t.Errorf("leaf has extra names: %v %v %v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
	case !leaf.NotAfter.Equal(now.Add(6*time.Hour)) || !notAfter.Equal(leaf.NotAfter):
		t.Errorf("NotAfter = %s (returned %s), want %s", leaf.NotAfter, notAfter, now.Add(6*time.Hour))
	case !leaf.NotBefore.Equal(now.Add(-time.Minute)):
		t.Errorf("NotBefore = %s, want now-1m for clock skew", leaf.NotBefore)
	case leaf.KeyUsage != x509.KeyUsageDigitalSignature:
		t.Errorf("KeyUsage = %v, want DigitalSignature only", leaf.KeyUsage)
	case len(leaf.ExtKeyUsage) != 2:
		t.Errorf("ExtKeyUsage = %v, want server and client auth", leaf.ExtKeyUsage)
	case leaf.IsCA:
		t.Error("leaf is a CA")
	case leaf.SerialNumber.Sign() <= 0 || leaf.SerialNumber.BitLen() > 128 || leaf.SerialNumber.BitLen() < 64:
		t.Errorf("serial %s is not a random positive 128-bit number", leaf.SerialNumber)
	}
	// A workload can install what the CA issues.
	src := identity.NewSource(td)
	// Source verifies at the real time; the fixed clock is in 2026, which the
	// root (created at the fixed time) covers for ten years, but the leaf
	// only for 6h, so re-sign at real time for this check.
	c2 := mustCA(t, Options{})
	chain2, _, err := c2.Sign(csr, id)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Set(chain2, key, c2.Bundle()); err != nil {
		t.Fatalf("workload refuses its own certificate: %v", err)
	}
	// Serials differ between issues.
	again, _, err := c.Sign(csr, id)
	if err != nil {
		t.Fatal(err)
	}
	leaf2, _ := x509.ParseCertificate(again[0])
	if leaf2.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Fatal("two certificates share a serial")
	}
}

// The CA names the workload by the id it is given, never by what the CSR asks.
func TestSignIgnoresRequestedNames(t *testing.T) {
	c := mustCA(t, Options{})
	id := workloadID(t, "default", "orders")
	key, _ := identity.NewKey()
	evil, _ := url.Parse("spiffe://trellis.local/ns/kube-system/sa/admin")
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:        pkix.Name{CommonName: "admin"},
		URIs:           []*url.URL{evil},
		DNSNames:       []string{"payments.default.svc.trellis.local"},
		IPAddresses:    []net.IP{net.IPv4(127, 0, 0, 1)},
		EmailAddresses: []string{"root@example.com"},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	chain, _, err := c.Sign(csr, id)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(chain[0])
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
		t.Fatalf("URIs = %v, want only %s", leaf.URIs, id)
	}
	if leaf.Subject.CommonName != "" || len(leaf.DNSNames) != 0 || len(leaf.IPAddresses) != 0 || len(leaf.EmailAddresses) != 0 {
		t.Fatalf("leaf carries names from the CSR: CN=%q %v %v %v", leaf.Subject.CommonName, leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
	}
}

func TestSignRefuses(t *testing.T) {
	c := mustCA(t, Options{})
	id := workloadID(t, "default", "orders")
	good, _ := csrFor(t, id)

	badSig := append([]byte(nil), good...)
	badSig[len(badSig)-3] ^= 0xff // inside the signature BIT STRING

	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	weakEC, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, p224)
	if err != nil {
		t.Fatal(err)
	}
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	weakRSA, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, rsa1024)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		csr  []byte
		id   spiffeid.ID
		want error
	}{
		{name: "bad signature", csr: badSig, id: id, want: ErrBadCSR},
		{name: "garbage", csr: []byte("hello"), id: id, want: ErrBadCSR},
		{name: "empty", csr: nil, id: id, want: ErrBadCSR},
		{name: "certificate instead of CSR", csr: c.Bundle()[0], id: id, want: ErrBadCSR},
		{name: "P-224 key", csr: weakEC, id: id, want: ErrBadCSR},
		{name: "RSA 1024 key", csr: weakRSA, id: id, want: ErrBadCSR},
		{name: "foreign trust domain", csr: good, id: spiffeid.RequireFromString("spiffe://other.org/ns/default/sa/orders"), want: ErrForeignID},
		{name: "trust domain root ID", csr: good, id: td.ID(), want: ErrForeignID},
		{name: "zero ID", csr: good, id: spiffeid.ID{}, want: ErrForeignID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, _, err := c.Sign(tt.csr, tt.id)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if chain != nil {
				t.Fatal("chain returned with an error")
			}
		})
	}
}

// A leaf never outlives the CA: near the end of the root's life, leaves are
// cut short, and after it the CA refuses.
func TestSignCappedByCA(t *testing.T) {
	var now time.Time
	clock := func() time.Time { return now }
	now = time.Now()
	c := mustCA(t, Options{Now: clock})
	root, _ := x509.ParseCertificate(c.Bundle()[0])
	id := workloadID(t, "default", "orders")
	csr, _ := csrFor(t, id)

	now = root.NotAfter.Add(-time.Hour)
	_, notAfter, err := c.Sign(csr, id)
	if err != nil {
		t.Fatal(err)
	}
	if !notAfter.Equal(root.NotAfter) {
		t.Fatalf("NotAfter = %s, want capped at the root's %s", notAfter, root.NotAfter)
	}
	now = root.NotAfter.Add(time.Second)
	if _, _, err := c.Sign(csr, id); !errors.Is(err, ErrExpired) {
		t.Fatalf("err = %v, want ErrExpired", err)
	}
}

func FuzzSign(f *testing.F) {
	c := mustCA(f, Options{})
	id := workloadID(f, "default", "orders")
	good, _ := csrFor(f, id)
	f.Add(good)
	f.Add([]byte{})
	f.Add([]byte{0x30, 0x82, 0x01, 0x00})
	f.Add(good[:len(good)/2])
	f.Add(c.Bundle()[0])
	f.Fuzz(func(t *testing.T, csr []byte) {
		chain, _, err := c.Sign(csr, id)
		if err != nil {
			if !errors.Is(err, ErrBadCSR) {
				t.Fatalf("error %v is not ErrBadCSR", err)
			}
			return
		}
		leaf, err := x509.ParseCertificate(chain[0])
		if err != nil {
			t.Fatal(err)
		}
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
			t.Fatalf("issued for %v", leaf.URIs)
		}
	})
}

func BenchmarkSign(b *testing.B) {
	c := mustCA(b, Options{})
	id := workloadID(b, "default", "orders")
	csr, _ := csrFor(b, id)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := c.Sign(csr, id); err != nil {
			b.Fatal(err)
		}
	}
}
