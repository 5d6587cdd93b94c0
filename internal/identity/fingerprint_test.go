package identity

import (
	"bytes"
	"testing"
)

// TestBundleFingerprint: order matters, and no two root lists collide by
// concatenation.
func TestBundleFingerprint(t *testing.T) {
	a, b := []byte("root-a"), []byte("root-b")
	if bytes.Equal(BundleFingerprint([][]byte{a, b}), BundleFingerprint([][]byte{b, a})) {
		t.Fatal("bundles in another order have one fingerprint; the first root must count")
	}
	if bytes.Equal(BundleFingerprint([][]byte{[]byte("ab"), []byte("c")}), BundleFingerprint([][]byte{[]byte("a"), []byte("bc")})) {
		t.Fatal("length prefixes missing: split roots collide")
	}
	if !bytes.Equal(BundleFingerprint([][]byte{a, b}), BundleFingerprint([][]byte{a, b})) {
		t.Fatal("not deterministic")
	}
}

// TestRotationFingerprints walks a proxy's Source through a rotation: it
// reports the root its certificate chains to and its bundle, and says the
// issuer moved exactly while the bundle's first root is not its
// certificate's.
func TestRotationFingerprints(t *testing.T) {
	oldCA, newCA := newTestCA(t), newTestCA(t)
	id := mustID(t, "default", "orders")
	chain, key := oldCA.workload(t, id)
	s := NewSource(td)
	if s.CertRootFingerprint() != nil || s.BundleFingerprint() != nil || s.IssuerMoved() {
		t.Fatal("fingerprints or a moved issuer before the first certificate")
	}
	if err := s.Set(chain, key, oldCA.bundle()); err != nil {
		t.Fatal(err)
	}
	check := func(when string, bundle [][]byte, root *testCA, moved bool) {
		t.Helper()
		if got := s.CertRootFingerprint(); !bytes.Equal(got, Fingerprint(root.Cert.Raw)) {
			t.Fatalf("%s: certificate root fingerprint is not its issuer's", when)
		}
		if !bytes.Equal(s.BundleFingerprint(), BundleFingerprint(bundle)) {
			t.Fatalf("%s: bundle fingerprint is not the installed bundle's", when)
		}
		if s.IssuerMoved() != moved {
			t.Fatalf("%s: IssuerMoved = %t, want %t", when, s.IssuerMoved(), moved)
		}
	}
	check("before rotation", oldCA.bundle(), oldCA, false)

	propagating := [][]byte{oldCA.Cert.Raw, newCA.Cert.Raw}
	if err := s.SetBundle(propagating); err != nil {
		t.Fatal(err)
	}
	check("propagating", propagating, oldCA, false)

	reissuing := [][]byte{newCA.Cert.Raw, oldCA.Cert.Raw}
	if err := s.SetBundle(reissuing); err != nil {
		t.Fatal(err)
	}
	check("reissuing, old certificate", reissuing, oldCA, true)

	if err := s.SetBundle(newCA.bundle()); err == nil {
		t.Fatal("dropping the old root while the certificate is from it was accepted")
	}
	chain, key = newCA.workload(t, id)
	if err := s.Set(chain, key, reissuing); err != nil {
		t.Fatal(err)
	}
	check("reissuing, new certificate", reissuing, newCA, false)
	if err := s.SetBundle(newCA.bundle()); err != nil {
		t.Fatal(err)
	}
	check("after rotation", newCA.bundle(), newCA, false)
}
