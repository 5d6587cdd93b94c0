package ca

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"trellis.dev/trellis/internal/identity"
	"trellis.dev/trellis/internal/store"
	"trellis.dev/trellis/internal/testpki"
)

// fakeFleet is a set of proxies whose reports the test moves by hand.
type fakeFleet struct {
	mu      sync.Mutex
	proxies []FleetProxy
}

func (f *fakeFleet) Proxies(context.Context) ([]FleetProxy, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]FleetProxy(nil), f.proxies...), nil
}

// catchUp makes every proxy report c's bundle and a certificate from c's
// issuing root, as a proxy does once it has followed the rotation.
func (f *fakeFleet) catchUp(c *CA, bundle, cert bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.proxies {
		f.proxies[i].Connected = true
		if bundle {
			f.proxies[i].BundleFingerprint = identity.BundleFingerprint(c.Bundle())
		}
		if cert {
			f.proxies[i].CertRootFingerprint = identity.Fingerprint(c.IssuingRoot())
		}
	}
}

// auditLog collects the audit ops the rotator writes.
type auditLog struct {
	mu      sync.Mutex
	actions []string
}

func (a *auditLog) op(who, action, detail string) (store.Op, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.actions = append(a.actions, who+" "+action)
	return store.Put("/audit/"+action, []byte(detail), store.Absent), nil
}

func reload(t *testing.T, c *CA) {
	t.Helper()
	if _, err := c.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// signVerify issues a certificate and returns the root it chains to.
func signVerify(t *testing.T, c *CA) []byte {
	t.Helper()
	id := workloadID(t, "default", "orders")
	csr, _ := csrFor(t, id)
	chain, _, err := c.Sign(csr, id)
	if err != nil {
		t.Fatal(err)
	}
	roots := make([]*x509.Certificate, 0)
	for _, der := range c.Bundle() {
		r, _ := x509.ParseCertificate(der)
		roots = append(roots, r)
	}
	_, chains, err := x509svid.ParseAndVerify(chain, x509bundle.FromX509Authorities(td, roots))
	if err != nil {
		t.Fatalf("issued certificate does not verify against the bundle: %v", err)
	}
	return chains[0][len(chains[0])-1].Raw
}

// TestRotationPhases walks a rotation through its phases: each waits for
// the proxies, the bundle holds old+new until the end, the issuer switches
// only after every proxy has the new bundle, and the old root leaves only
// after every proxy has a new certificate.
func TestRotationPhases(t *testing.T) {
	ctx := context.Background()
	st := newMem()
	c, err := LoadOrCreate(ctx, st, Options{})
	if err != nil {
		t.Fatal(err)
	}
	oldRoot := c.IssuingRoot()
	fleet := &fakeFleet{proxies: []FleetProxy{{Node: "a"}, {Node: "b"}}}
	fleet.catchUp(c, true, true)
	audit := &auditLog{}
	r := NewRotator(c, RotatorOptions{Fleet: fleet, AuditOp: audit.op})

	s, err := r.Start(ctx, "admin-token")
	if err != nil {
		t.Fatal(err)
	}
	if s.Phase != PhasePropagating || len(s.Lagging) != 2 {
		t.Fatalf("after start: phase %s, %d lagging; want propagating, 2 lagging (old bundle)", s.Phase, len(s.Lagging))
	}
	reload(t, c)
	if b := c.Bundle(); len(b) != 2 || string(b[0]) != string(oldRoot) {
		t.Fatalf("propagating bundle: %d roots, old first: %t; want old then new", len(b), string(b[0]) == string(oldRoot))
	}
	if got := signVerify(t, c); string(got) != string(oldRoot) {
		t.Fatal("propagating: issued under the new root before every proxy trusts it")
	}
	newRoot := c.Bundle()[1]

	// One proxy has the new bundle: no step.
	fleet.mu.Lock()
	fleet.proxies[0].BundleFingerprint = identity.BundleFingerprint(c.Bundle())
	fleet.mu.Unlock()
	if s, err = r.Step(ctx); err != nil || s.Phase != PhasePropagating || len(s.Lagging) != 1 || s.Lagging[0].Node != "b" {
		t.Fatalf("step with b behind: %+v, %v; want propagating, b lagging", s, err)
	}
	fleet.catchUp(c, true, false)
	if s, err = r.Step(ctx); err != nil || s.Phase != PhaseReissuing {
		t.Fatalf("step with every bundle current: %+v, %v; want reissuing", s, err)
	}
	reload(t, c)
	if b := c.Bundle(); len(b) != 2 || string(b[0]) != string(newRoot) || string(b[1]) != string(oldRoot) {
		t.Fatal("reissuing bundle: want new root first, then old")
	}
	if got := signVerify(t, c); string(got) != string(newRoot) {
		t.Fatal("reissuing: still issuing under the old root")
	}
	if s, err = r.Step(ctx); err != nil || s.Phase != PhaseReissuing || len(s.Lagging) != 2 {
		t.Fatalf("step with old certificates: %+v, %v; want reissuing, 2 lagging", s, err)
	}
	fleet.catchUp(c, true, true)
	if s, err = r.Step(ctx); err != nil || s.Phase != PhaseIdle {
		t.Fatalf("step with new certificates: %+v, %v; want idle", s, err)
	}
	reload(t, c)
	if b := c.Bundle(); len(b) != 1 || string(b[0]) != string(newRoot) {
		t.Fatal("after rotation: want the new root alone")
	}
	if s, err = r.Step(ctx); err != nil || s.Phase != PhaseIdle {
		t.Fatalf("step when idle: %+v, %v", s, err)
	}
	want := "admin-token ca.rotate.start,admin-token ca.rotate.reissue,admin-token ca.rotate.complete"
	if got := strings.Join(audit.actions, ","); got != want {
		t.Fatalf("audited %q, want %q", got, want)
	}

	// A restarted replica loads the rotated CA from the store.
	c2, err := LoadOrCreate(ctx, st, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if string(c2.IssuingRoot()) != string(newRoot) || len(c2.Bundle()) != 1 {
		t.Fatal("a new replica does not load the rotated root")
	}
}

// TestRotationWaitsForUnconnectedProxies: a registered proxy this replica
// does not watch holds the rotation, whatever it reported before.
func TestRotationWaitsForUnconnectedProxies(t *testing.T) {
	ctx := context.Background()
	c := mustCA(t, Options{})
	fleet := &fakeFleet{proxies: []FleetProxy{{Node: "here"}, {Node: "elsewhere"}}}
	r := NewRotator(c, RotatorOptions{Fleet: fleet})
	if _, err := r.Start(ctx, "admin-token"); err != nil {
		t.Fatal(err)
	}
	reload(t, c)
	fleet.catchUp(c, true, true)
	fleet.mu.Lock()
	fleet.proxies[1].Connected = false
	fleet.mu.Unlock()
	s, err := r.Step(ctx)
	if err != nil || s.Phase != PhasePropagating || len(s.Lagging) != 1 || !strings.Contains(s.Lagging[0].Reason, "no report") {
		t.Fatalf("step: %+v, %v; want propagating, 'elsewhere' lagging with no report", s, err)
	}
}

// TestRotationStartIdempotent: a second start, or a racing replica's,
// leaves the running rotation as it is.
func TestRotationStartIdempotent(t *testing.T) {
	ctx := context.Background()
	st := newMem()
	c1, err := LoadOrCreate(ctx, st, Options{})
	if err != nil {
		t.Fatal(err)
	}
	c2, err := LoadOrCreate(ctx, st, Options{})
	if err != nil {
		t.Fatal(err)
	}
	// Two memStorages on one database, each a replica's view; both
	// starts read before either writes.
	s1, s2 := &memStorage{d: st.d}, &memStorage{d: st.d}
	c1.st, c2.st = s1, s2
	var bothRead sync.WaitGroup
	bothRead.Add(2)
	var once1, once2 sync.Once
	s1.afterList = func() { once1.Do(func() { bothRead.Done(); bothRead.Wait() }) }
	s2.afterList = func() { once2.Do(func() { bothRead.Done(); bothRead.Wait() }) }
	fleet := &fakeFleet{}
	r1 := NewRotator(c1, RotatorOptions{Fleet: fleet})
	r2 := NewRotator(c2, RotatorOptions{Fleet: fleet})
	var wg sync.WaitGroup
	results := make([]RotationStatus, 2)
	for i, r := range []*Rotator{r1, r2} {
		wg.Go(func() {
			s, err := r.Start(ctx, "admin-token")
			if err != nil {
				t.Error(err)
			}
			results[i] = s
		})
	}
	wg.Wait()
	if results[0].AlreadyRunning == results[1].AlreadyRunning {
		t.Fatalf("two starts: already running %t and %t; want exactly one to start", results[0].AlreadyRunning, results[1].AlreadyRunning)
	}
	if results[0].Bundle[1] != results[1].Bundle[1] {
		t.Fatal("two starts report different new roots")
	}
	reload(t, c1)
	reload(t, c2)
	if string(c1.Bundle()[1]) != string(c2.Bundle()[1]) {
		t.Fatal("replicas disagree on the new root")
	}
	// Both step with no proxies: one promotes, the other finds it done.
	for _, r := range []*Rotator{r1, r2} {
		if _, err := r.Step(ctx); err != nil {
			t.Fatal(err)
		}
	}
	reload(t, c1)
	reload(t, c2)
	if c1.Phase() != PhaseIdle || c2.Phase() != PhaseIdle || string(c1.IssuingRoot()) != string(c2.IssuingRoot()) {
		t.Fatalf("after both stepped: phases %s, %s; same root %t", c1.Phase(), c2.Phase(), string(c1.IssuingRoot()) == string(c2.IssuingRoot()))
	}
}

// TestRotationSealed: with a seal key, the next keys are sealed under
// their own store keys and re-sealed under the issuing ones on promotion,
// so a replica with the seal key loads every phase, and one without it
// loads none.
func TestRotationSealed(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "seal.key")
	raw := make([]byte, 32)
	for i := range raw {
		raw[i] = byte(i)
	}
	if err := os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(raw)), 0o600); err != nil {
		t.Fatal(err)
	}
	st := newMem()
	c, err := LoadOrCreate(ctx, st, Options{SealKeyFile: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	r := NewRotator(c, RotatorOptions{Fleet: &fakeFleet{}})
	if _, err := r.Start(ctx, "admin-token"); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{NextRootKey, NextIntermediateKey} {
		kv, err := st.Get(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(kv.Value), SealedKeyType) || strings.Contains(string(kv.Value), "BEGIN PRIVATE KEY") {
			t.Fatalf("%s holds its key unsealed", k)
		}
	}
	if _, err := r.Step(ctx); err != nil {
		t.Fatal(err)
	}
	reload(t, c)
	if c.Phase() != PhaseReissuing {
		t.Fatalf("phase %s, want reissuing", c.Phase())
	}
	signVerify(t, c)
	if _, err := LoadOrCreate(ctx, st, Options{SealKeyFile: keyFile}); err != nil {
		t.Fatalf("a replica with the seal key cannot load the promoted CA: %v", err)
	}
	if _, err := LoadOrCreate(ctx, st, Options{}); !errors.Is(err, errSealedNoKey) {
		t.Fatalf("a replica without the seal key: %v, want errSealedNoKey", err)
	}
}

// TestRotateOperatorCA: a CA from files refuses to rotate, naming the way.
func TestRotateOperatorCA(t *testing.T) {
	dir := t.TempDir()
	root := makeCert(t, "files root", nil, true)
	certFile, keyFile := writeCerts(t, dir, "root.pem", root.cert), writeKey(t, dir, "root.key", root.key)
	c, err := LoadOrCreate(context.Background(), nil, Options{CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	r := NewRotator(c, RotatorOptions{Fleet: &fakeFleet{}})
	if _, err := r.Start(context.Background(), "admin-token"); !errors.Is(err, ErrOperatorCA) {
		t.Fatalf("Start: %v, want ErrOperatorCA", err)
	}
	s, err := r.Status(context.Background())
	if err != nil || s.Phase != PhaseIdle || len(s.Bundle) != 1 {
		t.Fatalf("Status: %+v, %v", s, err)
	}
}

// TestServerTLSFollowsRotation over real handshakes: the control plane's
// listeners verify client certificates against the bundle of the moment
// (a proxy already re-certified under the new root is accepted, one under
// the old root is refused once it has left), offer their ALPN protocols,
// and serve a certificate from the new chain once the issuer moved.
func TestServerTLSFollowsRotation(t *testing.T) {
	ctx := context.Background()
	c := mustCA(t, Options{})
	cfg, err := c.ServerTLSConfig(workloadID(t, "trellis-system", "control"), []string{"localhost"}, nil, "h2")
	if err != nil {
		t.Fatal(err)
	}
	addr, results := testpki.Serve(t, cfg, nil)
	oldPool := c.RootPool()
	leafFrom := func() tls.Certificate {
		id := workloadID(t, "default", "orders")
		csr, key := csrFor(t, id)
		chain, _, err := c.Sign(csr, id)
		if err != nil {
			t.Fatal(err)
		}
		return tls.Certificate{Certificate: chain, PrivateKey: key}
	}
	handshake := func(roots *x509.CertPool, cert tls.Certificate) (tls.ConnectionState, testpki.Handshake, error) {
		cs, err := testpki.Dial(t, addr, &tls.Config{RootCAs: roots, ServerName: "localhost", NextProtos: []string{"h2"},
			Certificates: []tls.Certificate{cert}})
		return cs, <-results, err
	}
	oldLeaf := leafFrom()

	r := NewRotator(c, RotatorOptions{Fleet: &fakeFleet{}})
	if _, err := r.Start(ctx, "admin-token"); err != nil {
		t.Fatal(err)
	}
	reload(t, c)
	if _, err := r.Step(ctx); err != nil { // no proxies: promote
		t.Fatal(err)
	}
	reload(t, c)
	newLeaf := leafFrom()
	newPool := c.RootPool()
	cs, srv, err := handshake(newPool, newLeaf)
	if err != nil || srv.Err != nil || len(srv.State.VerifiedChains) == 0 {
		t.Fatalf("reissuing, new-root client: %v / server %v, %d verified chains", err, srv.Err, len(srv.State.VerifiedChains))
	}
	if cs.NegotiatedProtocol != "h2" {
		t.Fatalf("ALPN %q, want h2", cs.NegotiatedProtocol)
	}
	inter := x509.NewCertPool()
	for _, ic := range cs.PeerCertificates[1:] {
		inter.AddCert(ic)
	}
	if _, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: oldPool, Intermediates: inter, DNSName: "localhost"}); err == nil {
		t.Fatal("reissuing: the server certificate still chains to the old root")
	}
	if _, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: newPool, Intermediates: inter, DNSName: "localhost"}); err != nil {
		t.Fatalf("reissuing: the server certificate does not verify: %v", err)
	}
	if _, srv, err := handshake(newPool, oldLeaf); err != nil || len(srv.State.VerifiedChains) == 0 {
		t.Fatalf("reissuing, old-root client (old root still trusted): %v / %d verified chains", err, len(srv.State.VerifiedChains))
	}
	if _, err := r.Step(ctx); err != nil { // complete
		t.Fatal(err)
	}
	reload(t, c)
	if _, srv, _ := handshake(newPool, oldLeaf); srv.Err == nil {
		t.Fatal("after rotation: a client certificate from the dropped root was accepted")
	}
}
