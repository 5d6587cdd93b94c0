package ca

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"trellis.dev/trellis/internal/identity"
	"trellis.dev/trellis/internal/store"
)

// Store keys of a rotation. RotationKey holds the Rotation record while one
// runs; the next root and intermediate wait under NextRootKey and
// NextIntermediateKey (sealed as the others are) until they are promoted
// to RootKey and IntermediateKey.
const (
	RotationKey         = "/ca/rotation"
	NextRootKey         = "/ca/next/root"
	NextIntermediateKey = "/ca/next/intermediate"
	caPrefix            = "/ca/"
)

// Phases lists the phases, for metrics.
func Phases() []string { return []string{PhaseIdle, PhasePropagating, PhaseReissuing} }

// Phases of a rotation.
const (
	// PhaseIdle: no rotation; the bundle is the one root issued under.
	PhaseIdle = "idle"
	// PhasePropagating: the new root is in the bundle (after the old, which
	// still issues); waiting for every proxy to install that bundle.
	PhasePropagating = "propagating"
	// PhaseReissuing: the new root and intermediate issue; the old root
	// stays in the bundle (second) until every proxy holds a certificate
	// from the new root.
	PhaseReissuing = "reissuing"
)

// ErrOperatorCA: the signing certificate comes from files; its owner
// rotates it (docs/security.md, "CA rotation").
var ErrOperatorCA = errors.New("ca: rotate: the signing certificate comes from --ca-cert/--ca-key, so its owner rotates it: " +
	"issue a new one (under the same root, or list old and new roots in --ca-root first) and restart each replica with it; " +
	"'trellis ca rotate' rotates only the CA Trellis generated")

// Rotation is the record under RotationKey.
type Rotation struct {
	Phase      string    `json:"phase"`
	Started    time.Time `json:"started"`
	PhaseSince time.Time `json:"phaseSince"`
	By         string    `json:"by"`
	// OtherRoot is the root in the bundle beside the one issued under
	// (DER): the new one while propagating, the old one while reissuing.
	OtherRoot []byte `json:"otherRoot"`
}

func (r *Rotation) phase() string {
	if r == nil {
		return PhaseIdle
	}
	return r.Phase
}

// caKeys is one consistent read of the CA's keys.
type caKeys map[string]store.KV

func readKeys(ctx context.Context, st Storage) (caKeys, error) {
	kvs, _, err := st.List(ctx, caPrefix)
	if err != nil {
		return nil, fmt.Errorf("ca: read %s: %w", caPrefix, err)
	}
	out := caKeys{}
	for _, kv := range kvs {
		out[kv.Key] = kv
	}
	return out, nil
}

// rotation decodes the rotation record, nil when there is none.
func (k caKeys) rotation() (*Rotation, error) {
	kv, ok := k[RotationKey]
	if !ok {
		return nil, nil
	}
	var r Rotation
	if err := json.Unmarshal(kv.Value, &r); err != nil {
		return nil, fmt.Errorf("ca: %s: %w", RotationKey, err)
	}
	if r.Phase != PhasePropagating && r.Phase != PhaseReissuing {
		return nil, fmt.Errorf("ca: %s: phase %q: want %s or %s", RotationKey, r.Phase, PhasePropagating, PhaseReissuing)
	}
	if _, err := x509.ParseCertificate(r.OtherRoot); err != nil {
		return nil, fmt.Errorf("ca: %s: otherRoot: %w", RotationKey, err)
	}
	return &r, nil
}

// recordCert is the first certificate of a stored record; reading it needs
// no seal key.
func recordCert(kv store.KV) (*x509.Certificate, error) {
	for rest := kv.Value; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			return nil, fmt.Errorf("ca: %s: no certificate", kv.Key)
		}
		if b.Type == "CERTIFICATE" {
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("ca: %s: %w", kv.Key, err)
			}
			return c, nil
		}
	}
}

// Reload re-reads the CA from the store (one consistent read of /ca/) and
// reports whether what it issues under or the bundle changed. Every
// replica calls it when /ca/ changes. A no-op for a CA from files.
func (c *CA) Reload(ctx context.Context) (bool, error) {
	if c.st == nil {
		return false, nil
	}
	k, err := readKeys(ctx, c.st)
	if err != nil {
		return false, err
	}
	rootKV, ok := k[RootKey]
	if !ok {
		return false, fmt.Errorf("ca: reload: %s is missing from the store", RootKey)
	}
	interKV, ok := k[IntermediateKey]
	if !ok {
		return false, fmt.Errorf("ca: reload: %s is missing from the store", IntermediateKey)
	}
	now := c.now()
	root, err := loadStoredRoot(ctx, c.st, rootKV, c.td, now, c.seal, c.log)
	if err != nil {
		return false, err
	}
	m, err := loadStoredIntermediate(ctx, c.st, interKV, root, now, c.seal)
	if err != nil {
		return false, fmt.Errorf("ca: reload: %w", err)
	}
	rot, err := k.rotation()
	if err != nil {
		return false, err
	}
	var extra []*x509.Certificate
	if rot != nil {
		other, _ := x509.ParseCertificate(rot.OtherRoot) // checked by rotation()
		extra = append(extra, other)
	}
	is := c.newIssuer(m, extra, rot)
	if cur := c.cur.Load(); cur != nil && cur.cert.Equal(is.cert) &&
		slices.EqualFunc(cur.bundleDER, is.bundleDER, func(a, b []byte) bool { return string(a) == string(b) }) &&
		cur.rotation.phase() == rot.phase() {
		return false, nil
	}
	if err := c.selfCheck(is); err != nil {
		return false, err
	}
	c.cur.Store(is)
	c.log.Info("CA issuer loaded", "phase", rot.phase(), "roots", len(is.roots), "issuing_root", fingerprint(is.bundleDER[0]))
	return true, nil
}

// Phase is the rotation phase this CA last loaded.
func (c *CA) Phase() string { return c.cur.Load().rotation.phase() }

func fingerprint(der []byte) string { return hex.EncodeToString(identity.Fingerprint(der)) }

// FleetProxy is one registered proxy as the rotation sees it.
type FleetProxy struct {
	Node string
	// Connected: its reports reach the control plane (a replica watches
	// it); the fingerprints are what it last reported.
	Connected bool
	// BundleFingerprint and CertRootFingerprint are what it last reported
	// (identity.BundleFingerprint, identity.Fingerprint of its root).
	BundleFingerprint, CertRootFingerprint []byte
}

// Fleet lists every registered proxy (not only those connected here: one
// whose reports do not reach this replica is lagging, so a replica never
// advances past a proxy it cannot see).
type Fleet interface {
	Proxies(ctx context.Context) ([]FleetProxy, error)
}

// RotatorOptions configure NewRotator.
type RotatorOptions struct {
	Fleet Fleet
	// AuditOp returns the store op that records action by who, written in
	// the transaction of each step (nil: not audited).
	AuditOp func(who, action, detail string) (store.Op, error)
	Logger  *slog.Logger
}

// Rotator runs `trellis ca rotate`: Start, then Step until PhaseIdle. It
// only writes the store; every replica's CA follows it with Reload. All
// state is in the store and every step is one compare-and-set transaction,
// so a step is idempotent, a rotation survives restarts, and replicas that
// step concurrently cannot take one step twice. Step belongs in one place
// per control plane (Control runs it; with leader election, the leader
// alone should).
type Rotator struct {
	ca    *CA
	fleet Fleet
	audit func(who, action, detail string) (store.Op, error)
	log   *slog.Logger

	mu      sync.Mutex
	lagging int // at the last status read, for metrics
}

// Lagging is how many proxies the last status read found behind (0 when
// idle), for a gauge read at scrape time without touching the store.
func (r *Rotator) Lagging() int {
	if r.ca.Phase() == PhaseIdle {
		return 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lagging
}

// NewRotator returns the rotator of c.
func NewRotator(c *CA, o RotatorOptions) *Rotator {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Rotator{ca: c, fleet: o.Fleet, audit: o.AuditOp, log: o.Logger.With("component", "ca-rotate")}
}

// LaggingProxy is a proxy the current phase waits for.
type LaggingProxy struct {
	Node   string `json:"node"`
	Reason string `json:"reason"`
}

// RotationStatus is `trellis ca status`. Fingerprints are hex SHA-256 of
// the roots' DER, the form WatchRequest.cert_issuer_fingerprint takes.
type RotationStatus struct {
	Phase      string    `json:"phase"`
	Started    time.Time `json:"started,omitzero"`
	PhaseSince time.Time `json:"phaseSince,omitzero"`
	By         string    `json:"by,omitempty"`
	// IssuingRoot is the root issued under; Bundle every trusted root.
	IssuingRoot string   `json:"issuingRoot"`
	Bundle      []string `json:"bundle"`
	// Waiting says what the phase waits for; Lagging who it waits for.
	Waiting string         `json:"waiting,omitempty"`
	Proxies int            `json:"proxies"`
	Lagging []LaggingProxy `json:"lagging,omitempty"`
	// AlreadyRunning: Start found a rotation in progress and left it.
	AlreadyRunning bool `json:"alreadyRunning,omitempty"`
}

// Start begins a rotation: a new root and intermediate under the next
// keys, the new root added to the bundle. A rotation already running is
// left as it is (AlreadyRunning).
func (r *Rotator) Start(ctx context.Context, who string) (RotationStatus, error) {
	c := r.ca
	if c.FromFiles() {
		return RotationStatus{}, ErrOperatorCA
	}
	k, err := readKeys(ctx, c.st)
	if err != nil {
		return RotationStatus{}, err
	}
	if _, ok := k[RotationKey]; ok {
		st, err := r.Status(ctx)
		st.AlreadyRunning = true
		return st, err
	}
	ops, err := r.startOps(k, who)
	if err != nil {
		return RotationStatus{}, err
	}
	if _, err := c.st.Txn(ctx, ops...); err != nil && !errors.Is(err, store.ErrConflict) {
		return RotationStatus{}, fmt.Errorf("ca: rotate: start: %w", err)
	} else if err != nil {
		st, err := r.Status(ctx) // another replica started one first
		st.AlreadyRunning = true
		return st, err
	}
	r.log.Info("CA rotation started: new root added to the trust bundle", "by", who)
	return r.Status(ctx)
}

// startOps makes the new root and intermediate and the transaction that
// stores them, fenced on the current root.
func (r *Rotator) startOps(k caKeys, who string) ([]store.Op, error) {
	c := r.ca
	rootKV, ok := k[RootKey]
	if !ok {
		return nil, fmt.Errorf("ca: rotate: %s is missing from the store", RootKey)
	}
	now := c.now()
	root, rootVal, err := createRoot(NextRootKey, c.td, now, c.seal)
	if err != nil {
		return nil, err
	}
	inter, interVal, err := createIntermediate(NextIntermediateKey, root, c.td, now, c.seal)
	if err != nil {
		return nil, err
	}
	if err := c.selfCheck(c.newIssuer(inter, nil, nil)); err != nil {
		return nil, err
	}
	rec, err := json.Marshal(Rotation{Phase: PhasePropagating, Started: now.UTC(), PhaseSince: now.UTC(), By: who, OtherRoot: root.cert.Raw})
	if err != nil {
		return nil, fmt.Errorf("ca: rotate: %w", err)
	}
	ops := []store.Op{
		store.Check(RootKey, rootKV.ModRevision),
		store.Put(NextRootKey, rootVal, store.Absent),
		store.Put(NextIntermediateKey, interVal, store.Absent),
		store.Put(RotationKey, rec, store.Absent),
	}
	return r.withAudit(ops, who, "ca.rotate.start", "new root "+fingerprint(root.cert.Raw)+" added to the trust bundle")
}

func (r *Rotator) withAudit(ops []store.Op, who, action, detail string) ([]store.Op, error) {
	if r.audit == nil {
		return ops, nil
	}
	op, err := r.audit(who, action, detail)
	if err != nil {
		return nil, fmt.Errorf("ca: rotate: audit: %w", err)
	}
	return append(ops, op), nil
}

// Step advances the rotation by at most one phase, if every registered
// proxy has caught up with the current one, and returns the status.
func (r *Rotator) Step(ctx context.Context) (RotationStatus, error) {
	k, err := readKeys(ctx, r.ca.st)
	if err != nil {
		return RotationStatus{}, err
	}
	st, err := r.status(ctx, k)
	if err != nil || st.Phase == PhaseIdle || len(st.Lagging) > 0 {
		return st, err
	}
	var ops []store.Op
	rot, _ := k.rotation() // status checked it
	switch rot.Phase {
	case PhasePropagating:
		ops, err = r.promoteOps(k, rot)
	case PhaseReissuing:
		ops, err = r.withAudit([]store.Op{
			store.Check(RootKey, k[RootKey].ModRevision),
			store.Delete(RotationKey, k[RotationKey].ModRevision),
		}, rot.By, "ca.rotate.complete", "old root "+fingerprint(rot.OtherRoot)+" removed from the trust bundle")
	}
	if err != nil {
		return st, err
	}
	if _, err := r.ca.st.Txn(ctx, ops...); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return r.Status(ctx) // another replica took the step
		}
		return st, fmt.Errorf("ca: rotate: step from %s: %w", rot.Phase, err)
	}
	r.log.Info("CA rotation advanced", "from", rot.Phase, "proxies", st.Proxies)
	return r.Status(ctx)
}

// promoteOps moves the next root and intermediate to the issuing keys
// (re-sealed: a sealed key is bound to its store key) and keeps the old
// root in the bundle.
func (r *Rotator) promoteOps(k caKeys, rot *Rotation) ([]store.Op, error) {
	c := r.ca
	var vals [2][]byte
	for i, from := range []struct{ next, to string }{{NextRootKey, RootKey}, {NextIntermediateKey, IntermediateKey}} {
		kv, ok := k[from.next]
		if !ok {
			return nil, fmt.Errorf("ca: rotate: %s is missing from the store", from.next)
		}
		v, err := reseal(kv, from.to, c.seal)
		if err != nil {
			return nil, err
		}
		vals[i] = v
	}
	oldRoot, err := recordCert(k[RootKey])
	if err != nil {
		return nil, err
	}
	now := c.now().UTC()
	rec, err := json.Marshal(Rotation{Phase: PhaseReissuing, Started: rot.Started, PhaseSince: now, By: rot.By, OtherRoot: oldRoot.Raw})
	if err != nil {
		return nil, fmt.Errorf("ca: rotate: %w", err)
	}
	return r.withAudit([]store.Op{
		store.Put(RootKey, vals[0], k[RootKey].ModRevision),
		store.Put(IntermediateKey, vals[1], k[IntermediateKey].ModRevision),
		store.Delete(NextRootKey, k[NextRootKey].ModRevision),
		store.Delete(NextIntermediateKey, k[NextIntermediateKey].ModRevision),
		store.Put(RotationKey, rec, k[RotationKey].ModRevision),
	}, rot.By, "ca.rotate.reissue", "workload certificates now issued under root "+fingerprint(rot.OtherRoot))
}

// reseal returns the record kv holds as the value of storeKey.
func reseal(kv store.KV, storeKey string, seal *SealKey) ([]byte, error) {
	plain, _, err := openRecord(kv.Value, kv.Key, seal)
	if err != nil {
		return nil, fmt.Errorf("ca: rotate: %s: %w", kv.Key, err)
	}
	certs, signer, err := parsePEMBundle(plain)
	if err != nil || signer == nil || len(certs) != 1 {
		return nil, fmt.Errorf("ca: rotate: %s: want one certificate and its key (%v)", kv.Key, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(signer)
	if err != nil {
		return nil, fmt.Errorf("ca: rotate: %s: %w", kv.Key, err)
	}
	return record(storeKey, certs[0].Raw, keyDER, seal)
}

// Status reports the phase and the proxies it waits for.
func (r *Rotator) Status(ctx context.Context) (RotationStatus, error) {
	if r.ca.FromFiles() {
		return r.ca.idleStatus(), nil
	}
	k, err := readKeys(ctx, r.ca.st)
	if err != nil {
		return RotationStatus{}, err
	}
	return r.status(ctx, k)
}

func (c *CA) idleStatus() RotationStatus {
	is := c.cur.Load()
	st := RotationStatus{Phase: PhaseIdle, IssuingRoot: fingerprint(is.bundleDER[0])}
	for _, b := range is.bundleDER {
		st.Bundle = append(st.Bundle, fingerprint(b))
	}
	return st
}

// status is the status of the rotation k holds: what the phase waits for,
// and which registered proxies have not got there.
func (r *Rotator) status(ctx context.Context, k caKeys) (RotationStatus, error) {
	rootKV, ok := k[RootKey]
	if !ok {
		return RotationStatus{}, fmt.Errorf("ca: %s is missing from the store", RootKey)
	}
	root, err := recordCert(rootKV)
	if err != nil {
		return RotationStatus{}, err
	}
	rot, err := k.rotation()
	if err != nil {
		return RotationStatus{}, err
	}
	st := RotationStatus{Phase: rot.phase(), IssuingRoot: fingerprint(root.Raw), Bundle: []string{fingerprint(root.Raw)}}
	if rot == nil {
		return st, nil
	}
	st.Started, st.PhaseSince, st.By = rot.Started, rot.PhaseSince, rot.By
	st.Bundle = append(st.Bundle, fingerprint(rot.OtherRoot))
	bundleFP := identity.BundleFingerprint([][]byte{root.Raw, rot.OtherRoot})
	rootFP := identity.Fingerprint(root.Raw)
	switch rot.Phase {
	case PhasePropagating:
		st.Waiting = "every proxy to install the trust bundle with the new root"
	case PhaseReissuing:
		st.Waiting = "every proxy to hold a certificate from the new root"
	}
	proxies, err := r.fleet.Proxies(ctx)
	if err != nil {
		return st, fmt.Errorf("ca: rotate: list proxies: %w", err)
	}
	st.Proxies = len(proxies)
	for _, p := range proxies {
		if reason := lagReason(p, rot.Phase, bundleFP, rootFP); reason != "" {
			st.Lagging = append(st.Lagging, LaggingProxy{Node: p.Node, Reason: reason})
		}
	}
	r.mu.Lock()
	r.lagging = len(st.Lagging)
	r.mu.Unlock()
	return st, nil
}

func lagReason(p FleetProxy, phase string, bundleFP, rootFP []byte) string {
	switch {
	case !p.Connected:
		return "registered, but no report of its CA state has reached this replica"
	case phase == PhasePropagating && string(p.BundleFingerprint) != string(bundleFP):
		return "has not installed the trust bundle with the new root"
	case phase == PhaseReissuing && string(p.CertRootFingerprint) != string(rootFP):
		return "certificate still from the old root"
	}
	return ""
}

// Run steps the rotation every interval while one is in progress, until
// ctx ends. Errors are logged and retried at the next tick.
func (r *Rotator) Run(ctx context.Context, interval time.Duration) {
	if r.ca.FromFiles() {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if r.ca.Phase() == PhaseIdle {
			continue
		}
		if _, err := r.Step(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("CA rotation step failed; retrying", "err", err)
		}
	}
}
