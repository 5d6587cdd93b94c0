package identity

import (
	"crypto"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var td = spiffeid.RequireTrustDomainFromString("trellis.local")

func TestSourceBeforeSet(t *testing.T) {
	s := NewSource(td)
	if s.Ready() {
		t.Fatal("Ready before Set")
	}
	if _, err := s.GetX509SVID(); !errors.Is(err, ErrNotReady) {
		t.Fatalf("GetX509SVID err = %v, want ErrNotReady", err)
	}
	if _, err := s.GetX509BundleForTrustDomain(td); !errors.Is(err, ErrNotReady) {
		t.Fatalf("GetX509BundleForTrustDomain err = %v, want ErrNotReady", err)
	}
	if !s.ID().IsZero() || !s.NotAfter().IsZero() || s.RootPool() != nil {
		t.Fatal("zero values expected before Set")
	}
}

func TestSourceSet(t *testing.T) {
	ca := newTestCA(t)
	id := mustID(t, "default", "orders")
	chain, key := ca.workload(t, id)
	s := NewSource(td)
	if err := s.Set(chain, key, ca.bundle()); err != nil {
		t.Fatal(err)
	}
	if !s.Ready() || s.ID() != id {
		t.Fatalf("Ready=%v ID=%s, want true %s", s.Ready(), s.ID(), id)
	}
	svid, err := s.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != id || svid.Certificates[0].NotAfter != s.NotAfter() || svid.PrivateKey != key {
		t.Fatal("SVID does not reflect what was set")
	}
	b, err := s.GetX509BundleForTrustDomain(td)
	if err != nil || !b.HasX509Authority(ca.Cert) {
		t.Fatalf("bundle = %v, %v; want the CA's root", b, err)
	}
	if _, err := s.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("other.org")); err == nil {
		t.Fatal("bundle for a foreign trust domain was returned")
	}
	if _, err := svid.Certificates[0].Verify(x509.VerifyOptions{Roots: s.RootPool()}); err != nil {
		t.Fatalf("RootPool does not verify the leaf: %v", err)
	}
}

// Each bad Set must fail and leave the previous SVID in place.
func TestSourceSetRefuses(t *testing.T) {
	ca := newTestCA(t)
	other := newTestCA(t)
	id := mustID(t, "default", "orders")
	goodChain, goodKey := ca.workload(t, id)

	k := mustKey(t)
	tests := []struct {
		name   string
		chain  [][]byte
		key    crypto.Signer
		bundle [][]byte
		err    string
	}{
		{name: "wrong key", chain: ca.issue(t, k.Public(), []string{id.String()}), key: mustKey(t), bundle: ca.bundle(), err: "does not match"},
		{name: "foreign trust domain", chain: ca.issue(t, k.Public(), []string{"spiffe://other.org/ns/default/sa/orders"}), key: k, bundle: ca.bundle(), err: "not in trust domain"},
		{name: "unverifiable chain", chain: other.issue(t, k.Public(), []string{id.String()}), key: k, bundle: ca.bundle(), err: "verify"},
		{name: "two URI SANs", chain: ca.issue(t, k.Public(), []string{id.String(), "spiffe://trellis.local/ns/x/sa/y"}), key: k, bundle: ca.bundle(), err: "more than one URI SAN"},
		{name: "no URI SAN", chain: ca.issue(t, k.Public(), nil), key: k, bundle: ca.bundle(), err: "no URI SAN"},
		{name: "expired", chain: ca.issue(t, k.Public(), []string{id.String()}, func(c *x509.Certificate) {
			c.NotBefore = time.Now().Add(-2 * time.Hour)
			c.NotAfter = time.Now().Add(-time.Hour)
		}), key: k, bundle: ca.bundle(), err: "expired"},
		{name: "no digitalSignature", chain: ca.issue(t, k.Public(), []string{id.String()}, func(c *x509.Certificate) {
			c.KeyUsage = x509.KeyUsageKeyEncipherment
		}), key: k, bundle: ca.bundle(), err: "digitalSignature"},
		{name: "garbage chain", chain: [][]byte{[]byte("junk")}, key: k, bundle: ca.bundle(), err: "chain"},
		{name: "empty chain", chain: nil, key: k, bundle: ca.bundle(), err: "empty"},
		{name: "nil key", chain: goodChain, key: nil, bundle: ca.bundle(), err: "no private key"},
		{name: "empty bundle", chain: goodChain, key: goodKey, bundle: nil, err: "no roots"},
		{name: "garbage bundle", chain: goodChain, key: goodKey, bundle: [][]byte{{0x30, 0x00}}, err: "bundle"},
		{name: "leaf as root", chain: goodChain, key: goodKey, bundle: goodChain, err: "not a CA"},
	}
	s := NewSource(td)
	if err := s.Set(goodChain, goodKey, ca.bundle()); err != nil {
		t.Fatal(err)
	}
	before, _ := s.GetX509SVID()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.Set(tt.chain, tt.key, tt.bundle)
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("err = %v, want containing %q", err, tt.err)
			}
			after, _ := s.GetX509SVID()
			if after != before || !s.RootPool().Equal(poolOf(ca.Cert)) {
				t.Fatal("a refused Set changed the SVID or bundle")
			}
		})
	}
}

func poolOf(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

func TestSourceSetBundle(t *testing.T) {
	oldCA, newCA := newTestCA(t), newTestCA(t)
	id := mustID(t, "default", "orders")
	chain, key := oldCA.workload(t, id)
	s := NewSource(td)
	if err := s.Set(chain, key, oldCA.bundle()); err != nil {
		t.Fatal(err)
	}
	// Rotation step 1: trust both roots.
	if err := s.SetBundle([][]byte{oldCA.Cert.Raw, newCA.Cert.Raw}); err != nil {
		t.Fatal(err)
	}
	if b, _ := s.GetX509BundleForTrustDomain(td); !b.HasX509Authority(newCA.Cert) || !b.HasX509Authority(oldCA.Cert) {
		t.Fatal("bundle does not hold both roots")
	}
	// Dropping the root the current certificate needs is refused.
	if err := s.SetBundle(newCA.bundle()); err == nil || !strings.Contains(err.Error(), "would not verify") {
		t.Fatalf("err = %v, want refusal", err)
	}
	if b, _ := s.GetX509BundleForTrustDomain(td); !b.HasX509Authority(oldCA.Cert) {
		t.Fatal("refused SetBundle dropped the old root")
	}
	// Step 2: a certificate from the new root, then the old root can go.
	chain2, key2 := newCA.workload(t, id)
	if err := s.Set(chain2, key2, [][]byte{oldCA.Cert.Raw, newCA.Cert.Raw}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetBundle(newCA.bundle()); err != nil {
		t.Fatal(err)
	}
	if s.Ready() != true || s.ID() != id {
		t.Fatal("SVID lost across SetBundle")
	}
}

// Readers never see a torn state while another goroutine rotates (run with -race).
func TestSourceConcurrentRotation(t *testing.T) {
	ca := newTestCA(t)
	id := mustID(t, "default", "orders")
	type pair struct {
		chain [][]byte
		key   crypto.Signer
	}
	var pairs []pair
	for range 4 {
		c, k := ca.workload(t, id)
		pairs = append(pairs, pair{c, k})
	}
	s := NewSource(td)
	if err := s.Set(pairs[0].chain, pairs[0].key, ca.bundle()); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 200 {
			p := pairs[i%len(pairs)]
			if err := s.Set(p.chain, p.key, ca.bundle()); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for {
		select {
		case <-done:
			return
		default:
		}
		svid, err := s.GetX509SVID()
		if err != nil {
			t.Fatal(err)
		}
		pub := svid.PrivateKey.Public().(interface{ Equal(crypto.PublicKey) bool })
		if !pub.Equal(svid.Certificates[0].PublicKey) {
			t.Fatal("SVID key and certificate from different rotations")
		}
	}
}
