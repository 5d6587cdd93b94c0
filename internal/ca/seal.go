package ca

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
)

// SealedKeyType is the PEM block type of a private key encrypted with the
// seal key. Its headers name the cipher and the seal key's ID; its bytes
// are the GCM nonce followed by the sealed PKCS#8 key.
const SealedKeyType = "TRELLIS SEALED PRIVATE KEY"

const (
	sealCipher  = "AES-256-GCM"
	sealKeySize = 32
)

// SealKey encrypts the CA's private key where the store keeps it, so that
// reading the store (an etcd backup, a leaked bbolt file) is not enough to
// mint identities: the key file is needed too. Every replica of one mesh
// is given the same key file.
type SealKey struct {
	aead cipher.AEAD
	id   string
}

// LoadSealKey reads a seal key file: 32 random bytes, base64-encoded
// (`head -c 32 /dev/urandom | base64 > ca-seal.key`). A file others can
// read is refused, as ssh refuses such a private key.
func LoadSealKey(path string) (*SealKey, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("ca: seal key: %w (create one with: head -c 32 /dev/urandom | base64 > %s; chmod 600 %s)", err, path, path)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("ca: seal key %s: mode %v lets others read it: chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ca: seal key: %w", err)
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(raw) != sealKeySize {
		return nil, fmt.Errorf("ca: seal key %s: want %d random bytes in base64 (head -c 32 /dev/urandom | base64)", path, sealKeySize)
	}
	return NewSealKey(raw)
}

// NewSealKey makes a seal key of 32 bytes.
func NewSealKey(raw []byte) (*SealKey, error) {
	if len(raw) != sealKeySize {
		return nil, fmt.Errorf("ca: seal key: %d bytes, want %d", len(raw), sealKeySize)
	}
	block, err := aes.NewCipher(raw)
	if err != nil {
		return nil, fmt.Errorf("ca: seal key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("ca: seal key: %w", err)
	}
	// The ID tells which key sealed a record without revealing the key: a
	// hash under a label of its own, so it is no hash of the key anywhere
	// else.
	sum := sha256.Sum256(append([]byte("trellis ca seal key id\x00"), raw...))
	return &SealKey{aead: aead, id: hex.EncodeToString(sum[:8])}, nil
}

// ID names the key (16 hex digits) in records and errors.
func (k *SealKey) ID() string { return k.id }

// sealAAD binds a sealed key to its store key and to its certificate, so a
// sealed key cannot be passed off as another certificate's.
func sealAAD(storeKey string, certDER []byte) []byte {
	sum := sha256.Sum256(certDER)
	return append([]byte("trellis ca key\x00"+storeKey+"\x00"), sum[:]...)
}

// seal returns keyDER as a sealed PEM block.
func (k *SealKey) seal(keyDER []byte, storeKey string, certDER []byte) ([]byte, error) {
	nonce := make([]byte, k.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("ca: seal: %w", err)
	}
	out := k.aead.Seal(nonce, nonce, keyDER, sealAAD(storeKey, certDER))
	return pem.EncodeToMemory(&pem.Block{
		Type:    SealedKeyType,
		Headers: map[string]string{"Cipher": sealCipher, "Key-Id": k.id},
		Bytes:   out,
	}), nil
}

// errSealedNoKey: the record is sealed and no seal key was given.
var errSealedNoKey = errors.New("the CA key in the store is sealed and no seal key was given")

// open decrypts a sealed block back into a private key PEM block.
func (k *SealKey) open(b *pem.Block, storeKey string, certDER []byte) (*pem.Block, error) {
	if k == nil {
		return nil, fmt.Errorf("%w: start with --ca-seal-key naming the key file the other replicas use (key id %s)", errSealedNoKey, b.Headers["Key-Id"])
	}
	if c := b.Headers["Cipher"]; c != sealCipher {
		return nil, fmt.Errorf("sealed key: cipher %q, want %s", c, sealCipher)
	}
	if id := b.Headers["Key-Id"]; id != k.id {
		return nil, fmt.Errorf("sealed key: sealed with seal key %s, but the seal key given is %s: give every replica the same key file", id, k.id)
	}
	n := k.aead.NonceSize()
	if len(b.Bytes) < n {
		return nil, errors.New("sealed key: truncated")
	}
	der, err := k.aead.Open(nil, b.Bytes[:n], b.Bytes[n:], sealAAD(storeKey, certDER))
	if err != nil {
		return nil, errors.New("sealed key: does not decrypt with the seal key (tampered with, or moved from another certificate)")
	}
	return &pem.Block{Type: "PRIVATE KEY", Bytes: der}, nil
}
