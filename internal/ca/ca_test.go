package ca

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"trellis.dev/trellis/internal/store"
)

func TestLoadOrCreateRoot(t *testing.T) {
	ctx := context.Background()
	st := newMem()
	c1, err := LoadOrCreate(ctx, st, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(c1.Bundle()) != 1 {
		t.Fatalf("bundle has %d roots, want 1", len(c1.Bundle()))
	}
	root, err := x509.ParseCertificate(c1.Bundle()[0])
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case root.Subject.CommonName != "Trellis Root CA":
		t.Errorf("CN = %q", root.Subject.CommonName)
	case !root.IsCA || root.KeyUsage&x509.KeyUsageCertSign == 0:
		t.Error("root is not a signing CA")
	case root.CheckSignatureFrom(root) != nil:
		t.Error("root is not self-signed")
	case root.NotAfter.Sub(root.NotBefore) < 9*365*24*time.Hour:
		t.Errorf("root lifetime %s, want ~10y", root.NotAfter.Sub(root.NotBefore))
	case len(root.PermittedURIDomains) != 1 || root.PermittedURIDomains[0] != "trellis.local":
		t.Errorf("root URI name constraints %v, want [trellis.local]", root.PermittedURIDomains)
	}
	if pub, ok := root.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("root key %T, want ECDSA P-256", root.PublicKey)
	}
	kv, err := st.Get(ctx, RootKey)
	if err != nil {
		t.Fatalf("root not saved under %s: %v", RootKey, err)
	}
	if !bytes.Contains(kv.Value, []byte("PRIVATE KEY")) {
		t.Fatal("stored root lacks its key")
	}

	// A second start on the same store loads the same root and can sign.
	c2, err := LoadOrCreate(ctx, st, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c1.Bundle()[0], c2.Bundle()[0]) {
		t.Fatal("second LoadOrCreate made a new root; every issued certificate would be invalidated")
	}
	if !bytes.Equal(c1.BundlePEM(), c2.BundlePEM()) {
		t.Fatal("BundlePEM differs")
	}
	b, _ := pem.Decode(c1.BundlePEM())
	if b == nil || !bytes.Equal(b.Bytes, c1.Bundle()[0]) {
		t.Fatal("BundlePEM does not hold the root")
	}
}

// Another Storage over the same data (a restart, another replica) gets the
// same root, and certificates from one verify against the other's bundle.
func TestLoadOrCreatePersists(t *testing.T) {
	ctx := context.Background()
	st1 := newMem()
	c1, err := LoadOrCreate(ctx, st1, Options{})
	if err != nil {
		t.Fatal(err)
	}
	id := workloadID(t, "default", "orders")
	csr, _ := csrFor(t, id)
	chain, _, err := c1.Sign(csr, id)
	if err != nil {
		t.Fatal(err)
	}
	st2 := &memStorage{d: st1.d}
	c2, err := LoadOrCreate(ctx, st2, Options{})
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(chain[0])
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: c2.RootPool(), Intermediates: intermediatesOf(t, chain), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("certificate from the first instance does not verify against the second's bundle: %v", err)
	}
	// A fresh store is a different CA.
	c3 := mustCA(t, Options{})
	if bytes.Equal(c1.Bundle()[0], c3.Bundle()[0]) {
		t.Fatal("independent stores share a root")
	}
}

// Two replicas starting at once on an empty store both see no root, both
// create one, one write wins, and both end up using the winner.
func TestLoadOrCreateRace(t *testing.T) {
	ctx := context.Background()
	d := &memData{kv: map[string]store.KV{}}
	var arrived sync.WaitGroup
	arrived.Add(2)
	var once [2]sync.Once
	cas := make([]*CA, 2)
	var wg sync.WaitGroup
	for i := range 2 {
		st := &memStorage{d: d, afterGet: func() {
			// Only the first Get of each replica waits for the other.
			once[i].Do(func() { arrived.Done(); arrived.Wait() })
		}}
		wg.Go(func() {
			c, err := LoadOrCreate(ctx, st, Options{})
			if err != nil {
				t.Error(err)
				return
			}
			cas[i] = c
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if !bytes.Equal(cas[0].Bundle()[0], cas[1].Bundle()[0]) {
		t.Fatal("racing replicas ended with different roots")
	}
	kv, _ := (&memStorage{d: d}).Get(ctx, RootKey)
	certs, _, _ := parsePEMBundle(kv.Value)
	if !bytes.Equal(certs[0].Raw, cas[0].Bundle()[0]) {
		t.Fatal("replicas do not use the stored root")
	}
}

type failStorage struct{ err error }

func (f failStorage) Get(context.Context, string) (store.KV, error)   { return store.KV{}, f.err }
func (f failStorage) Txn(context.Context, ...store.Op) (int64, error) { return 0, f.err }
func (f failStorage) List(context.Context, string) ([]store.KV, int64, error) {
	return nil, 0, f.err
}

func TestLoadOrCreateErrors(t *testing.T) {
	ctx := context.Background()
	other := newMem()
	if _, err := LoadOrCreate(ctx, other, Options{TrustDomain: "other.org"}); err != nil {
		t.Fatal(err)
	}
	garbage := newMem()
	garbage.Txn(ctx, store.Put(RootKey, []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), store.Any))
	certOnly := newMem()
	{
		src := newMem()
		c, _ := LoadOrCreate(ctx, src, Options{})
		certOnly.Txn(ctx, store.Put(RootKey, c.BundlePEM(), store.Any))
	}
	tests := []struct {
		name string
		st   Storage
		opts Options
		err  string
	}{
		{name: "store down", st: failStorage{errors.New("disk on fire")}, err: "disk on fire"},
		{name: "closed store", st: failStorage{store.ErrClosed}, err: "read root from store"},
		{name: "garbage root", st: garbage, err: RootKey},
		{name: "root without key", st: certOnly, err: "key present: false"},
		{name: "root of another trust domain", st: other, err: `created for trust domain [other.org], not "trellis.local"`},
		{name: "no store", st: nil, err: "no store"},
		{name: "bad trust domain", st: newMem(), opts: Options{TrustDomain: "spiffe://x"}, err: "trustDomain"},
		{name: "negative ttl", st: newMem(), opts: Options{WorkloadTTL: -time.Hour}, err: "workloadTTL"},
		{name: "cert without key", st: newMem(), opts: Options{CertFile: "x.pem"}, err: "set both or neither"},
		{name: "root file alone", st: newMem(), opts: Options{RootFile: "r.pem"}, err: "rootFile"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadOrCreate(ctx, tt.st, tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("err = %v, want containing %q", err, tt.err)
			}
		})
	}
}

// The real embedded store: the root survives closing and reopening the file.
func TestLoadOrCreateBolt(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "trellis.db")
	open := func() *store.Bolt {
		t.Helper()
		st, err := store.NewBolt(path, store.BoltOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	st := open()
	c1, err := LoadOrCreate(ctx, st, Options{})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	st = open()
	defer st.Close()
	c2, err := LoadOrCreate(ctx, st, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c1.Bundle()[0], c2.Bundle()[0]) {
		t.Fatal("root changed across a restart of the bolt store")
	}
}
