package ca

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"trellis.dev/trellis/internal/store"
)

// sealKeyFile writes a fresh seal key file (mode 0600) and returns its path.
func sealKeyFile(t *testing.T) string {
	t.Helper()
	raw := make([]byte, 32)
	rand.Read(raw)
	path := filepath.Join(t.TempDir(), "ca-seal.key")
	if err := os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(raw)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestSealedRoot: with a seal key the stored root holds no readable private
// key; a replica with the same key file loads the same root, one with
// another key or none is refused with the reason.
func TestSealedRoot(t *testing.T) {
	ctx := context.Background()
	st := newMem()
	keyFile := sealKeyFile(t)
	c1, err := LoadOrCreate(ctx, st, Options{SealKeyFile: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	kv, _ := st.Get(ctx, RootKey)
	if bytes.Contains(kv.Value, []byte("BEGIN PRIVATE KEY")) || !bytes.Contains(kv.Value, []byte("BEGIN "+SealedKeyType)) {
		t.Fatalf("stored root is not sealed:\n%s", kv.Value)
	}
	seal, err := LoadSealKey(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(kv.Value, []byte("Key-Id: "+seal.ID())) {
		t.Fatalf("stored root does not name its seal key %s", seal.ID())
	}

	c2, err := LoadOrCreate(ctx, &memStorage{d: st.d}, Options{SealKeyFile: keyFile})
	if err != nil {
		t.Fatalf("replica with the same key file: %v", err)
	}
	if !bytes.Equal(c1.Bundle()[0], c2.Bundle()[0]) {
		t.Fatal("replica with the same key file has another root")
	}
	id := workloadID(t, "default", "orders")
	csr, _ := csrFor(t, id)
	if _, _, err := c2.Sign(csr, id); err != nil {
		t.Fatalf("replica signs with the unsealed key: %v", err)
	}

	refused := []struct {
		name string
		opts Options
		want string
	}{
		{"another key", Options{SealKeyFile: sealKeyFile(t)}, "give every replica the same key file"},
		{"no key", Options{}, "--ca-seal-key"},
	}
	for _, r := range refused {
		if _, err := LoadOrCreate(ctx, &memStorage{d: st.d}, r.opts); err == nil || !strings.Contains(err.Error(), r.want) {
			t.Errorf("%s: err = %v, want one containing %q", r.name, err, r.want)
		}
	}
}

// TestSealedRootTampered: a sealed key that was altered, or moved under
// another certificate, does not load.
func TestSealedRootTampered(t *testing.T) {
	ctx := context.Background()
	keyFile := sealKeyFile(t)
	st := newMem()
	if _, err := LoadOrCreate(ctx, st, Options{SealKeyFile: keyFile}); err != nil {
		t.Fatal(err)
	}
	kv, _ := st.Get(ctx, RootKey)
	other := newMem()
	if _, err := LoadOrCreate(ctx, other, Options{SealKeyFile: keyFile}); err != nil {
		t.Fatal(err)
	}
	otherKV, _ := other.Get(ctx, RootKey)
	cut := func(v []byte) (cert, key []byte) {
		i := bytes.Index(v, []byte("-----BEGIN "+SealedKeyType))
		return v[:i], v[i:]
	}
	certA, _ := cut(kv.Value)
	_, keyB := cut(otherKV.Value)
	flipped := bytes.Clone(kv.Value)
	i := bytes.LastIndex(flipped, []byte("\n-----END")) - 5
	flipped[i] ^= 'A' ^ 'B'
	for name, value := range map[string][]byte{
		"another certificate's key": append(bytes.Clone(certA), keyB...),
		"altered ciphertext":        flipped,
	} {
		bad := newMem()
		bad.Txn(ctx, store.Put(RootKey, value, store.Absent))
		if _, err := LoadOrCreate(ctx, bad, Options{SealKeyFile: keyFile}); err == nil {
			t.Errorf("%s: loaded", name)
		}
	}
}

// TestSealExistingRoot: a root stored before sealing was turned on is
// sealed in place on the first start with a seal key, and stays the root.
func TestSealExistingRoot(t *testing.T) {
	ctx := context.Background()
	st := newMem()
	c1, err := LoadOrCreate(ctx, st, Options{})
	if err != nil {
		t.Fatal(err)
	}
	keyFile := sealKeyFile(t)
	c2, err := LoadOrCreate(ctx, st, Options{SealKeyFile: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c1.Bundle()[0], c2.Bundle()[0]) {
		t.Fatal("sealing replaced the root")
	}
	kv, _ := st.Get(ctx, RootKey)
	if bytes.Contains(kv.Value, []byte("BEGIN PRIVATE KEY")) || !bytes.Contains(kv.Value, []byte(SealedKeyType)) {
		t.Fatalf("root not sealed in place:\n%s", kv.Value)
	}
	if _, err := LoadOrCreate(ctx, st, Options{}); err == nil {
		t.Fatal("loaded the sealed root without the key")
	}
}

func TestLoadSealKey(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		return p
	}
	good := base64.StdEncoding.EncodeToString(make([]byte, 32))
	cases := []struct {
		name, path, want string
	}{
		{"missing", filepath.Join(dir, "none"), "head -c 32 /dev/urandom | base64"},
		{"world-readable", write("open", good, 0o644), "chmod 600"},
		{"not base64", write("junk", "not base64!", 0o600), "32 random bytes in base64"},
		{"short", write("short", base64.StdEncoding.EncodeToString(make([]byte, 16)), 0o600), "32 random bytes in base64"},
	}
	for _, c := range cases {
		if _, err := LoadSealKey(c.path); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want one containing %q", c.name, err, c.want)
		}
	}
	k1, err := LoadSealKey(write("good", good+"\n", 0o600))
	if err != nil {
		t.Fatal(err)
	}
	raw := make([]byte, 32)
	raw[0] = 1
	k2, _ := NewSealKey(raw)
	if len(k1.ID()) != 16 || k1.ID() == k2.ID() {
		t.Fatalf("key IDs %q and %q: want 16 hex digits, different for different keys", k1.ID(), k2.ID())
	}
	if _, err := LoadOrCreate(context.Background(), newMem(), Options{SealKeyFile: filepath.Join(dir, "good"), CertFile: "c", KeyFile: "k"}); err == nil ||
		!strings.Contains(err.Error(), "sealKeyFile") {
		t.Fatalf("seal key with cert files: err = %v, want a sealKeyFile option error", err)
	}
}
