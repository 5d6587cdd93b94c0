package ca

import (
	"bytes"
	"context"
	"crypto/x509"
	"strings"
	"sync"
	"testing"
	"time"

	"trellis.dev/trellis/internal/store"
)

// intermediatesOf is the pool of a chain's certificates after the leaf.
func intermediatesOf(t testing.TB, chain [][]byte) *x509.CertPool {
	t.Helper()
	pool := x509.NewCertPool()
	for _, der := range chain[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		pool.AddCert(c)
	}
	return pool
}

// storedCert is the first certificate of a store record.
func storedCert(t testing.TB, st Storage, key string) *x509.Certificate {
	t.Helper()
	kv, err := st.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	plain, _, err := openRecord(kv.Value, key, nil)
	if err != nil && !strings.Contains(err.Error(), "sealed") {
		t.Fatal(err)
	}
	if err != nil {
		plain = kv.Value
	}
	certs, _, err := parsePEMBundle(bytes.Split(plain, []byte("-----BEGIN "+SealedKeyType))[0])
	if err != nil || len(certs) == 0 {
		t.Fatalf("%s: %v", key, err)
	}
	return certs[0]
}

// TestIntermediateSigns: the generated CA signs with an intermediate kept
// in the store under the root; the bundle holds the root alone; replicas
// share the intermediate.
func TestIntermediateSigns(t *testing.T) {
	ctx := context.Background()
	st := newMem()
	c, err := LoadOrCreate(ctx, st, Options{})
	if err != nil {
		t.Fatal(err)
	}
	root, inter := storedCert(t, st, RootKey), storedCert(t, st, IntermediateKey)
	switch {
	case len(c.Bundle()) != 1 || !bytes.Equal(c.Bundle()[0], root.Raw):
		t.Fatal("bundle is not the stored root alone")
	case inter.CheckSignatureFrom(root) != nil:
		t.Fatal("intermediate is not signed by the root")
	case !inter.IsCA || !inter.MaxPathLenZero || inter.MaxPathLen != 0:
		t.Errorf("intermediate: CA %v, path length %d (zero %v); want a CA that signs leaves only", inter.IsCA, inter.MaxPathLen, inter.MaxPathLenZero)
	case len(inter.PermittedURIDomains) != 1 || inter.PermittedURIDomains[0] != "trellis.local":
		t.Errorf("intermediate URI constraints %v, want [trellis.local]", inter.PermittedURIDomains)
	case !inter.NotAfter.Equal(root.NotAfter):
		t.Errorf("intermediate expires %s, root %s: want the same, so nothing expires before the root", inter.NotAfter, root.NotAfter)
	}
	id := workloadID(t, "default", "orders")
	csr, _ := csrFor(t, id)
	chain, _, err := c.Sign(csr, id)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(chain[0])
	if len(chain) != 2 || !bytes.Equal(chain[1], inter.Raw) || leaf.CheckSignatureFrom(inter) != nil {
		t.Fatal("leaf is not issued by the stored intermediate, or the chain does not carry it")
	}
	c2, err := LoadOrCreate(ctx, &memStorage{d: st.d}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	chain2, _, err := c2.Sign(csr, id)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(chain2[1], inter.Raw) {
		t.Fatal("a second instance on the same store made its own intermediate")
	}
}

// TestIntermediateAddedAndReplaced: a store holding a root only (written
// before intermediates) gets an intermediate under that root; one that no
// longer fits the root (the root was deleted and re-created) is replaced.
func TestIntermediateAddedAndReplaced(t *testing.T) {
	ctx := context.Background()
	st := newMem()
	if _, err := LoadOrCreate(ctx, st, Options{}); err != nil {
		t.Fatal(err)
	}
	first := storedCert(t, st, IntermediateKey)
	st.Txn(ctx, store.Delete(IntermediateKey, store.Any))
	rootBefore := storedCert(t, st, RootKey)
	if _, err := LoadOrCreate(ctx, st, Options{}); err != nil {
		t.Fatal(err)
	}
	added := storedCert(t, st, IntermediateKey)
	if bytes.Equal(added.Raw, first.Raw) || added.CheckSignatureFrom(rootBefore) != nil {
		t.Fatal("root-only store: no new intermediate under the stored root")
	}
	if !bytes.Equal(storedCert(t, st, RootKey).Raw, rootBefore.Raw) {
		t.Fatal("adding an intermediate replaced the root")
	}

	st.Txn(ctx, store.Delete(RootKey, store.Any))
	c, err := LoadOrCreate(ctx, st, Options{})
	if err != nil {
		t.Fatalf("new root with a stale intermediate: %v", err)
	}
	root, inter := storedCert(t, st, RootKey), storedCert(t, st, IntermediateKey)
	if inter.CheckSignatureFrom(root) != nil || bytes.Equal(inter.Raw, added.Raw) {
		t.Fatal("the stale intermediate was kept under a new root")
	}
	if !bytes.Equal(c.Bundle()[0], root.Raw) {
		t.Fatal("bundle is not the new root")
	}
}

// TestIntermediateExpiredReplaced: at a clock past the intermediate's end
// (the root valid) a new intermediate is made.
func TestIntermediateExpiredReplaced(t *testing.T) {
	ctx := context.Background()
	st := newMem()
	now := time.Now()
	if _, err := LoadOrCreate(ctx, st, Options{}); err != nil {
		t.Fatal(err)
	}
	root := storedCert(t, st, RootKey)
	// Swap in a short-lived intermediate under the same root.
	rootKV, _ := st.Get(ctx, RootKey)
	plain, _, _ := openRecord(rootKV.Value, RootKey, nil)
	certs, signer, _ := parsePEMBundle(plain)
	rm := &material{cert: certs[0], signer: signer, roots: certs}
	short := *rm.cert
	short.NotAfter = now.Add(time.Hour)
	m, value, err := createIntermediate(IntermediateKey, &material{cert: &short, signer: signer, roots: certs}, td, now, nil)
	if err != nil {
		t.Fatal(err)
	}
	st.Txn(ctx, store.Put(IntermediateKey, value, store.Any))
	later := now.Add(2 * time.Hour)
	c, err := LoadOrCreate(ctx, st, Options{Now: func() time.Time { return later }})
	if err != nil {
		t.Fatalf("with an expired intermediate: %v", err)
	}
	inter := storedCert(t, st, IntermediateKey)
	if bytes.Equal(inter.Raw, m.cert.Raw) || inter.CheckSignatureFrom(root) != nil || !later.Before(inter.NotAfter) {
		t.Fatal("expired intermediate not replaced by a valid one under the root")
	}
	if c.NotAfter().Before(later) {
		t.Fatalf("CA NotAfter %s is before its clock %s", c.NotAfter(), later)
	}
}

// TestIntermediateRace: two replicas on a store with a root but no
// intermediate both create one; one write wins and both sign with it.
func TestIntermediateRace(t *testing.T) {
	ctx := context.Background()
	d := &memData{kv: map[string]store.KV{}}
	if _, err := LoadOrCreate(ctx, &memStorage{d: d}, Options{}); err != nil {
		t.Fatal(err)
	}
	(&memStorage{d: d}).Txn(ctx, store.Delete(IntermediateKey, store.Any))
	var arrived sync.WaitGroup
	arrived.Add(2)
	cas := make([]*CA, 2)
	var wg sync.WaitGroup
	for i := range 2 {
		gets := 0
		st := &memStorage{d: d, afterGet: func() {
			// The second Get reads the (missing) intermediate: wait there
			// until the other replica has read it too.
			if gets++; gets == 2 {
				arrived.Done()
				arrived.Wait()
			}
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
	id := workloadID(t, "default", "orders")
	csr, _ := csrFor(t, id)
	a, _, _ := cas[0].Sign(csr, id)
	b, _, _ := cas[1].Sign(csr, id)
	stored := storedCert(t, &memStorage{d: d}, IntermediateKey)
	if !bytes.Equal(a[1], b[1]) || !bytes.Equal(a[1], stored.Raw) {
		t.Fatal("racing replicas sign with different intermediates, or not with the stored one")
	}
}

// TestIntermediateSealed: with a seal key the intermediate's key is sealed
// too, bound to its own store key.
func TestIntermediateSealed(t *testing.T) {
	ctx := context.Background()
	st := newMem()
	if _, err := LoadOrCreate(ctx, st, Options{SealKeyFile: sealKeyFile(t)}); err != nil {
		t.Fatal(err)
	}
	kv, _ := st.Get(ctx, IntermediateKey)
	if bytes.Contains(kv.Value, []byte("BEGIN PRIVATE KEY")) || !bytes.Contains(kv.Value, []byte(SealedKeyType)) {
		t.Fatalf("intermediate key not sealed:\n%s", kv.Value)
	}
}
