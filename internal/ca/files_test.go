package ca

import (
	"bytes"
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadFromFiles(t *testing.T) {
	dir := t.TempDir()
	root := makeCert(t, "file root", nil, true)
	inter := makeCert(t, "file intermediate", root, true)
	inter2 := makeCert(t, "second intermediate", inter, true)
	otherRoot := makeCert(t, "other root", nil, true)
	leafCert := makeCert(t, "not a ca", root, false)
	expired := makeCert(t, "old root", nil, true, func(c *x509.Certificate) {
		c.NotBefore = time.Now().Add(-48 * time.Hour)
		c.NotAfter = time.Now().Add(-24 * time.Hour)
	})
	foreign := makeCert(t, "constrained root", nil, true, func(c *x509.Certificate) {
		c.PermittedURIDomains = []string{"other.org"}
	})

	rootCert := writeCerts(t, dir, "root.pem", root.cert)
	rootKey := writeKey(t, dir, "root.key", root.key)
	interCert := writeCerts(t, dir, "inter.pem", inter.cert)
	interKey := writeKey(t, dir, "inter.key", inter.key)
	inter2Chain := writeCerts(t, dir, "inter2-chain.pem", inter2.cert, inter.cert)
	inter2Key := writeKey(t, dir, "inter2.key", inter2.key)
	otherRootCert := writeCerts(t, dir, "other-root.pem", otherRoot.cert)
	bothRoots := writeCerts(t, dir, "both-roots.pem", otherRoot.cert, root.cert)
	leafPEM := writeCerts(t, dir, "leaf.pem", leafCert.cert)
	leafKey := writeKey(t, dir, "leaf.key", leafCert.key)
	expiredCert := writeCerts(t, dir, "expired.pem", expired.cert)
	expiredKey := writeKey(t, dir, "expired.key", expired.key)
	foreignCert := writeCerts(t, dir, "foreign.pem", foreign.cert)
	foreignKey := writeKey(t, dir, "foreign.key", foreign.key)
	empty := filepath.Join(dir, "empty.pem")
	os.WriteFile(empty, nil, 0o600)

	tests := []struct {
		name                string
		cert, key, rootFile string
		wantChain           []*x509.Certificate // after the leaf
		wantRoots           []*x509.Certificate
		err                 []string // substrings, all required
	}{
		{name: "root", cert: rootCert, key: rootKey, wantRoots: []*x509.Certificate{root.cert}},
		{name: "root with itself as root file", cert: rootCert, key: rootKey, rootFile: rootCert, wantRoots: []*x509.Certificate{root.cert}},
		{name: "intermediate", cert: interCert, key: interKey, rootFile: rootCert, wantChain: []*x509.Certificate{inter.cert}, wantRoots: []*x509.Certificate{root.cert}},
		{name: "two intermediates", cert: inter2Chain, key: inter2Key, rootFile: rootCert, wantChain: []*x509.Certificate{inter2.cert, inter.cert}, wantRoots: []*x509.Certificate{root.cert}},
		{name: "intermediate with two roots", cert: interCert, key: interKey, rootFile: bothRoots, wantChain: []*x509.Certificate{inter.cert}, wantRoots: []*x509.Certificate{root.cert, otherRoot.cert}}, // the root issued under first, whatever the file order
		{name: "mismatched key", cert: rootCert, key: interKey, err: []string{"key file " + interKey, "does not match", rootCert}},
		{name: "not a CA", cert: leafPEM, key: leafKey, err: []string{leafPEM, "not a CA"}},
		{name: "expired", cert: expiredCert, key: expiredKey, err: []string{expiredCert, "expired"}},
		{name: "intermediate without root file", cert: interCert, key: interKey, err: []string{interCert, "not self-signed", "root file"}},
		{name: "intermediate with wrong root", cert: interCert, key: interKey, rootFile: otherRootCert, err: []string{interCert, otherRootCert, "does not chain"}},
		{name: "missing cert file", cert: filepath.Join(dir, "nope.pem"), key: rootKey, err: []string{"nope.pem", "no such file"}},
		{name: "missing key file", cert: rootCert, key: filepath.Join(dir, "nope.key"), err: []string{"nope.key"}},
		{name: "empty cert file", cert: empty, key: rootKey, err: []string{empty, "no PEM CERTIFICATE"}},
		{name: "key file holds a cert", cert: rootCert, key: rootCert, err: []string{rootCert, "no PEM private key"}},
		{name: "root file holds a key", cert: interCert, key: interKey, rootFile: interKey, err: []string{interKey, "private key"}},
		{name: "root file not a CA", cert: interCert, key: interKey, rootFile: leafPEM, err: []string{leafPEM, "not a CA"}},
		{name: "constrained to another trust domain", cert: foreignCert, key: foreignKey, err: []string{"self-check", "name constraints"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := LoadOrCreate(context.Background(), nil, Options{CertFile: tt.cert, KeyFile: tt.key, RootFile: tt.rootFile})
			if tt.err != nil {
				if err == nil {
					t.Fatal("loaded; want an error")
				}
				for _, s := range tt.err {
					if !strings.Contains(err.Error(), s) {
						t.Fatalf("err = %v\nwant it to mention %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			bundle := c.Bundle()
			if len(bundle) != len(tt.wantRoots) {
				t.Fatalf("bundle has %d roots, want %d", len(bundle), len(tt.wantRoots))
			}
			for i, r := range tt.wantRoots {
				if !bytes.Equal(bundle[i], r.Raw) {
					t.Fatalf("bundle[%d] is not %s", i, r.Subject)
				}
			}
			id := workloadID(t, "default", "orders")
			csr, _ := csrFor(t, id)
			chain, _, err := c.Sign(csr, id)
			if err != nil {
				t.Fatal(err)
			}
			if len(chain) != 1+len(tt.wantChain) {
				t.Fatalf("chain has %d certificates, want leaf + %d", len(chain), len(tt.wantChain))
			}
			inter := x509.NewCertPool()
			for i, w := range tt.wantChain {
				if !bytes.Equal(chain[1+i], w.Raw) {
					t.Fatalf("chain[%d] is not %s", 1+i, w.Subject)
				}
				inter.AddCert(w)
			}
			leaf, _ := x509.ParseCertificate(chain[0])
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: c.RootPool(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Fatalf("issued chain does not verify against the bundle: %v", err)
			}
			if leaf.NotAfter.After(tt.wantRoots[len(tt.wantRoots)-1].NotAfter) {
				t.Fatal("leaf outlives its root")
			}
		})
	}
}

// An intermediate that expires before the workload TTL caps leaves at its
// own expiry, so a leaf never outlives a certificate in its chain.
func TestIntermediateCapsTTL(t *testing.T) {
	dir := t.TempDir()
	root := makeCert(t, "root", nil, true)
	inter := makeCert(t, "short intermediate", root, true, func(c *x509.Certificate) {
		c.NotAfter = time.Now().Add(2 * time.Hour).Truncate(time.Second)
	})
	c, err := LoadOrCreate(context.Background(), nil, Options{
		CertFile: writeCerts(t, dir, "i.pem", inter.cert),
		KeyFile:  writeKey(t, dir, "i.key", inter.key),
		RootFile: writeCerts(t, dir, "r.pem", root.cert),
	})
	if err != nil {
		t.Fatal(err)
	}
	id := workloadID(t, "default", "orders")
	csr, _ := csrFor(t, id)
	_, notAfter, err := c.Sign(csr, id)
	if err != nil {
		t.Fatal(err)
	}
	if !notAfter.Equal(inter.cert.NotAfter) {
		t.Fatalf("NotAfter = %s, want the intermediate's %s", notAfter, inter.cert.NotAfter)
	}
}
