// Package ca is the mesh's certificate authority. It owns a signing
// certificate (an intermediate under a self-signed root, both created and
// kept in the control plane's store, their keys optionally sealed with a
// key file; or a root or intermediate loaded from files), issues
// short-lived workload certificates whose only name is a SPIFFE ID,
// publishes the trust bundle, and serves TLS for the control plane's own
// listeners. Replicas sharing a store share the root and intermediate.
package ca

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"trellis.dev/trellis/internal/identity"
	"trellis.dev/trellis/internal/store"
)

// Sentinel errors callers branch on.
var (
	// ErrBadCSR: the CSR does not parse, its signature is wrong, or its key is
	// not acceptable. The caller sent bad input; retrying will not help.
	ErrBadCSR = errors.New("ca: bad CSR")
	// ErrForeignID: the ID to sign is not a workload ID in the CA's trust domain.
	ErrForeignID = errors.New("ca: ID not in this trust domain")
	// ErrExpired: the signing certificate has expired; the CA must be renewed.
	ErrExpired = errors.New("ca: signing certificate expired")
)

// RootKey is the store key holding the generated root's certificate and key
// as PEM. Unless the key is sealed (Options.SealKeyFile), anyone who can
// read the store can mint identities, so the store's file (or etcd) must be
// as private as a key file.
const RootKey = "/ca/root"

// Defaults.
const (
	DefaultTrustDomain = "trellis.local"
	DefaultWorkloadTTL = 24 * time.Hour
	// MinWorkloadTTL is the shortest workload certificate lifetime accepted.
	MinWorkloadTTL = 5 * time.Second
	rootTTL        = 10 * 365 * 24 * time.Hour
	rootCommonName = "Trellis Root CA"
	// clockSkew backdates NotBefore so a peer whose clock runs a little
	// behind still accepts a certificate issued this instant.
	clockSkew = time.Minute
)

// Options configures the CA. The zero value (but for the store) gives a
// generated root in trust domain trellis.local issuing 24h certificates.
type Options struct {
	// TrustDomain; default trellis.local.
	TrustDomain string
	// CertFile and KeyFile, if set, hold the signing certificate and its key
	// (PEM) instead of a generated root. CertFile may hold the signing
	// certificate followed by further intermediates. If the signing
	// certificate is not self-signed, RootFile must hold the root(s) it
	// chains to; those roots are the trust bundle.
	CertFile, KeyFile, RootFile string
	// SealKeyFile, if set, is the seal key (see LoadSealKey) that encrypts
	// the generated root's private key in the store. Every replica sharing
	// the store needs the same file. Not with CertFile, whose key is KeyFile.
	SealKeyFile string
	// WorkloadTTL is the lifetime of issued certificates; default 24h.
	WorkloadTTL time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
	// RenewJitter draws where in identity.RenewAt's window the control
	// plane's own server certificate is re-issued; default math/rand/v2's
	// Float64.
	RenewJitter func() float64
	// Logger; default discards.
	Logger *slog.Logger
}

func (o *Options) setDefaults() {
	if o.TrustDomain == "" {
		o.TrustDomain = DefaultTrustDomain
	}
	if o.WorkloadTTL == 0 {
		o.WorkloadTTL = DefaultWorkloadTTL
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.RenewJitter == nil {
		o.RenewJitter = rand.Float64
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate checks the options after defaults.
func (o *Options) Validate() error {
	if _, err := identity.ParseTrustDomain(o.TrustDomain); err != nil {
		return fmt.Errorf("trustDomain: %w", err)
	}
	// Seconds-long certificates are for renewal drills and tests; below
	// that, renewal traffic would dominate.
	if o.WorkloadTTL < MinWorkloadTTL {
		return fmt.Errorf("workloadTTL: %s is too short; use at least %s", o.WorkloadTTL, MinWorkloadTTL)
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		return errors.New("certFile, keyFile: set both or neither")
	}
	if o.SealKeyFile != "" && o.CertFile != "" {
		return errors.New("sealKeyFile: seals the generated root in the store; with certFile the key is keyFile's")
	}
	if o.RootFile != "" && o.CertFile == "" {
		return errors.New("rootFile: only meaningful with certFile and keyFile")
	}
	return nil
}

// Storage is what the CA needs of the control plane's store.
type Storage interface {
	Get(ctx context.Context, key string) (store.KV, error)
	List(ctx context.Context, prefix string) ([]store.KV, int64, error)
	Txn(ctx context.Context, ops ...store.Op) (int64, error)
}

// The control plane's store satisfies Storage.
var _ Storage = store.Store(nil)

// CA issues workload certificates. Safe for concurrent use. What it issues
// under and the bundle it publishes are one immutable issuer behind an
// atomic pointer, replaced by Reload when a rotation moves them in the
// store.
type CA struct {
	td     spiffeid.TrustDomain
	ttl    time.Duration
	now    func() time.Time
	jitter func() float64
	log    *slog.Logger
	// st and seal: the store the generated CA lives in, and its seal key;
	// st is nil when the signing certificate comes from files.
	st   Storage
	seal *SealKey
	cur  atomic.Pointer[issuer]
	gen  atomic.Uint64 // numbers issuers, so server certificates follow
}

// issuer is a signing certificate with what goes with it; immutable.
type issuer struct {
	gen    uint64
	signer crypto.Signer
	cert   *x509.Certificate // the signing certificate
	// chainTail is appended after each leaf: the signing certificate and any
	// intermediates above it, when the signing certificate is not a root.
	chainTail [][]byte
	// maxNotAfter caps issued certificates: a leaf must not outlive any
	// certificate above it.
	maxNotAfter time.Time
	// roots is the trust bundle, the root the signing certificate chains
	// to first (proxies read the first root as the one issued under now).
	roots     []*x509.Certificate
	pool      *x509.CertPool
	bundleDER [][]byte
	bundlePEM []byte
	// rotation is the rotation in progress (nil: none).
	rotation *Rotation
}

// LoadOrCreate returns the CA. With CertFile/KeyFile it uses those (st may be
// nil). Otherwise it loads the root from st under RootKey, creating it on the
// first start; replicas racing to create it all end with the one that was
// stored first; and a rotation in progress (RotationKey) adds its root to
// the bundle.
func LoadOrCreate(ctx context.Context, st Storage, opts Options) (*CA, error) {
	opts.setDefaults()
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("ca: options: %w", err)
	}
	td, _ := identity.ParseTrustDomain(opts.TrustDomain)
	log := opts.Logger.With("component", "ca")
	c := &CA{td: td, ttl: opts.WorkloadTTL, now: opts.Now, jitter: opts.RenewJitter, log: log}

	if opts.CertFile != "" {
		m, err := loadFiles(opts.CertFile, opts.KeyFile, opts.RootFile, opts.Now())
		if err != nil {
			return nil, err
		}
		log.Info("loaded signing certificate from files", "cert", opts.CertFile, "subject", m.cert.Subject.String(), "not_after", m.cert.NotAfter, "intermediate", len(m.tail) > 0)
		is := c.newIssuer(m, nil, nil)
		if err := c.selfCheck(is); err != nil {
			return nil, err
		}
		c.cur.Store(is)
		return c, nil
	}
	if st == nil {
		return nil, errors.New("ca: no store and no certFile/keyFile: nowhere to keep the root")
	}
	c.st = st
	if opts.SealKeyFile != "" {
		var err error
		if c.seal, err = LoadSealKey(opts.SealKeyFile); err != nil {
			return nil, err
		}
	}
	root, err := loadOrCreateRoot(ctx, st, td, opts.Now(), c.seal, log)
	if err != nil {
		return nil, err
	}
	if _, err := loadOrCreateIntermediate(ctx, st, root, td, opts.Now(), c.seal, log); err != nil {
		return nil, err
	}
	if _, err := c.Reload(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// material is a signing certificate with its key, the certificates between it
// and the roots, and the roots.
type material struct {
	cert   *x509.Certificate
	signer crypto.Signer
	tail   []*x509.Certificate // signing cert and intermediates; empty for a root
	roots  []*x509.Certificate
	// chains are the verified paths from cert to a root.
	chains [][]*x509.Certificate
}

// newIssuer makes the issuer for m; extra roots (a rotation's other root)
// follow m's in the bundle.
func (c *CA) newIssuer(m *material, extra []*x509.Certificate, rot *Rotation) *issuer {
	is := &issuer{
		gen:         c.gen.Add(1),
		signer:      m.signer,
		cert:        m.cert,
		maxNotAfter: m.cert.NotAfter,
		rotation:    rot,
		pool:        x509.NewCertPool(),
	}
	for _, t := range m.tail {
		is.chainTail = append(is.chainTail, t.Raw)
	}
	for _, chain := range m.chains {
		for _, x := range chain {
			if x.NotAfter.Before(is.maxNotAfter) {
				is.maxNotAfter = x.NotAfter
			}
		}
	}
	// The root the signing certificate chains to goes first.
	var first *x509.Certificate
	if len(m.chains) > 0 && len(m.chains[0]) > 0 {
		first = m.chains[0][len(m.chains[0])-1]
		is.roots = append(is.roots, first)
	}
	for _, r := range append(append([]*x509.Certificate(nil), m.roots...), extra...) {
		if first == nil || !r.Equal(first) {
			is.roots = append(is.roots, r)
		}
	}
	for _, r := range is.roots {
		is.pool.AddCert(r)
		is.bundleDER = append(is.bundleDER, r.Raw)
		is.bundlePEM = append(is.bundlePEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
	}
	return is
}

// selfCheck issues and verifies a throwaway certificate so that a CA that
// cannot issue usable certificates (name constraints for another trust
// domain, missing key usage, path length) fails at start, not at the first
// proxy.
func (c *CA) selfCheck(is *issuer) error {
	id, err := identity.WorkloadID(c.td.Name(), "trellis-system", "ca-self-check")
	if err != nil {
		return fmt.Errorf("ca: self-check: %w", err)
	}
	key, err := identity.NewKey()
	if err != nil {
		return fmt.Errorf("ca: self-check: %w", err)
	}
	chain, _, err := c.issueWith(is, key.Public(), id, nil, nil)
	if err != nil {
		return fmt.Errorf("ca: self-check: %w", err)
	}
	// At the CA's clock, not the wall clock, so a CA on a test or skewed
	// clock checks what it will actually issue.
	b := x509bundle.FromX509Authorities(c.td, is.roots)
	if _, _, err := x509svid.ParseAndVerify(chain, b, x509svid.WithTime(c.now())); err != nil {
		return fmt.Errorf("ca: self-check: a certificate this CA issues does not verify against its own bundle "+
			"(check name constraints, key usage and path length of the CA certificates): %w", err)
	}
	return nil
}

// TrustDomain is the CA's trust domain.
func (c *CA) TrustDomain() spiffeid.TrustDomain { return c.td }

// Bundle returns the trust bundle: the DER roots, the one issued under
// first. During a rotation it holds the old and the new root.
func (c *CA) Bundle() [][]byte {
	is := c.cur.Load()
	out := make([][]byte, len(is.bundleDER))
	copy(out, is.bundleDER)
	return out
}

// BundlePEM returns the trust bundle as concatenated PEM certificates.
func (c *CA) BundlePEM() []byte {
	return append([]byte(nil), c.cur.Load().bundlePEM...)
}

// NotAfter is when the signing certificate (or a certificate above it) expires.
func (c *CA) NotAfter() time.Time { return c.cur.Load().maxNotAfter }

// IssuingRoot is the DER of the root issued under now (Bundle()[0]).
func (c *CA) IssuingRoot() []byte { return c.cur.Load().bundleDER[0] }

// FromFiles reports whether the signing certificate came from files (the
// operator owns it; Rotate refuses).
func (c *CA) FromFiles() bool { return c.st == nil }
