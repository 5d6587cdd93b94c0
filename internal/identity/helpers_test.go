package identity

import (
	"crypto"
	"crypto/ecdsa"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"trellis.dev/trellis/internal/testpki"
)

// testCA is a throwaway root; testpki builds it with crypto/x509 directly
// so identity's tests do not depend on package ca.
type testCA struct{ *testpki.CA }

func newTestCA(t testing.TB) *testCA { return &testCA{testpki.NewCA(t)} }

func (c *testCA) bundle() [][]byte { return [][]byte{c.Cert.Raw} }

// issue returns a one-element chain for pub naming the given URIs.
func (c *testCA) issue(t testing.TB, pub crypto.PublicKey, uris []string, opts ...testpki.Option) [][]byte {
	t.Helper()
	return [][]byte{c.Issue(t, testpki.LeafTemplate(t, uris, opts...), pub).Raw}
}

// workload returns a key and a chain for id.
func (c *testCA) workload(t testing.TB, id spiffeid.ID) ([][]byte, *ecdsa.PrivateKey) {
	t.Helper()
	leaf, key := c.Leaf(t, id.String())
	return [][]byte{leaf.Raw}, key
}

func mustKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustID(t testing.TB, ns, sa string) spiffeid.ID {
	t.Helper()
	id, err := WorkloadID("trellis.local", ns, sa)
	if err != nil {
		t.Fatal(err)
	}
	return id
}
