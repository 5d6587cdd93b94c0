package push

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/testpki"
)

var td = spiffeid.RequireTrustDomainFromString("trellis.local")

// testCA is a throwaway CA; the real one lives in internal/ca.
type testCA struct {
	*testpki.CA
	pool *x509.CertPool
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	ca := testpki.NewCA(t)
	return &testCA{CA: ca, pool: ca.Pool()}
}

// serverCert is the control plane's serving certificate for 127.0.0.1.
func (ca *testCA) serverCert(t testing.TB) *tls.Certificate {
	c := ca.TLSCertificate(t, "", func(c *x509.Certificate) {
		c.Subject.CommonName = "control"
		c.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	})
	return &c
}

// workloadCert is a workload certificate for id, optionally already expired.
func (ca *testCA) workloadCert(t testing.TB, id string, notAfter time.Time) *tls.Certificate {
	c := ca.TLSCertificate(t, id, func(c *x509.Certificate) {
		c.NotAfter = notAfter // zero: testpki's default
		if !notAfter.IsZero() && notAfter.Before(time.Now()) {
			c.NotBefore = notAfter.Add(-time.Hour)
		}
	})
	return &c
}

func newCSR(t testing.TB) []byte {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, testpki.NewKey(t))
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// fakeSigner signs with the test CA.
type fakeSigner struct {
	t  testing.TB
	ca *testCA
}

func (f *fakeSigner) Sign(csrDER []byte, id spiffeid.ID) ([][]byte, time.Time, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, time.Time{}, err
	}
	notAfter := time.Now().Add(time.Hour).Truncate(time.Second)
	tmpl := testpki.LeafTemplate(f.t, []string{id.String()}, func(c *x509.Certificate) { c.NotAfter = notAfter })
	return [][]byte{f.ca.Issue(f.t, tmpl, csr.PublicKey).Raw}, notAfter, nil
}

func (f *fakeSigner) Bundle() [][]byte { return [][]byte{f.ca.Cert.Raw} }

// fakeRegistry keeps leases in memory; expire() simulates a lapsed lease.
type fakeRegistry struct {
	mu        sync.Mutex
	next      int64
	leases    map[int64]*meshv1.Endpoint
	ttls      map[int64]time.Duration
	registers int
	// healthWrites counts SetHealth calls.
	healthWrites int
	beats        map[int64]int // heartbeats per lease
}

func newFakeRegistry() *fakeRegistry {
	return &fakeRegistry{next: 100, leases: map[int64]*meshv1.Endpoint{}, ttls: map[int64]time.Duration{}, beats: map[int64]int{}}
}

func (r *fakeRegistry) Register(_ context.Context, ep *meshv1.Endpoint, ttl time.Duration) (int64, time.Duration, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.next++
	r.registers++
	r.leases[r.next] = ep
	r.ttls[r.next] = ttl
	return r.next, ttl, nil
}

func (r *fakeRegistry) Heartbeat(_ context.Context, lease int64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.leases[lease]; !ok {
		return fmt.Errorf("registry: lease %d: %w", lease, ErrLeaseNotFound)
	}
	r.beats[lease]++
	return nil
}

func (r *fakeRegistry) SetHealth(_ context.Context, lease int64, healthy bool, reason string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	ep, ok := r.leases[lease]
	if !ok {
		return fmt.Errorf("registry: lease %d: %w", lease, ErrLeaseNotFound)
	}
	ep = proto.Clone(ep).(*meshv1.Endpoint)
	ep.Healthy, ep.HealthReason = healthy, reason
	r.leases[lease] = ep
	r.healthWrites++
	return nil
}

func (r *fakeRegistry) Lookup(_ context.Context, ns, id string) (*meshv1.Endpoint, int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for l, ep := range r.leases {
		if ep.GetNamespace() == ns && ep.GetId() == id {
			return ep, l, nil
		}
	}
	return nil, 0, fmt.Errorf("registry: %s/%s: %w", ns, id, ErrLeaseNotFound)
}

func (r *fakeRegistry) expireAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	clear(r.leases)
}

func (r *fakeRegistry) stats() (registers int, endpoints []*meshv1.Endpoint, ttls []time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for l, ep := range r.leases {
		endpoints = append(endpoints, ep)
		ttls = append(ttls, r.ttls[l])
	}
	return r.registers, endpoints, ttls
}

// fakeSnapshots versions snapshots by a generation and the subscriptions,
// so bumping the generation or changing subscriptions changes the version.
// Like the compiler, it stamps each snapshot with the store revision it
// reflects: every bump or write is one revision.
type fakeSnapshots struct {
	mu      sync.Mutex
	gen     int
	rev     int64
	svcGen  map[string]int // write(svc): changes only that service's proxies
	prefix  string
	payload []byte // for every node whose id starts with "big"
	subs    map[int]chan struct{}
	nextSub int
}

func newFakeSnapshots(prefix string) *fakeSnapshots {
	return &fakeSnapshots{prefix: prefix, rev: 1, svcGen: map[string]int{}, subs: map[int]chan struct{}{}}
}

func (f *fakeSnapshots) Snapshot(_ context.Context, n Node) (*meshv1.Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	version := fmt.Sprintf("%s%d|%s", f.prefix, f.gen, strings.Join(n.Subscriptions, ","))
	if g := f.svcGen[n.Service]; g > 0 {
		version += fmt.Sprintf("#%d", g)
	}
	snap := &meshv1.Snapshot{
		Version:     version,
		Revision:    f.rev,
		TrustDomain: td.Name(),
		Inbound:     &meshv1.Service{Name: n.Service, Namespace: n.Namespace},
	}
	for _, s := range n.Subscriptions {
		name, ns, _ := strings.Cut(s, ".")
		snap.Services = append(snap.Services, &meshv1.Service{Name: name, Namespace: ns})
	}
	if strings.HasPrefix(n.ID, "big") {
		snap.TrustBundle = [][]byte{f.payload}
	}
	return snap, nil
}

func (f *fakeSnapshots) Subscribe() (<-chan struct{}, func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ch := make(chan struct{}, 1)
	id := f.nextSub
	f.nextSub++
	f.subs[id] = ch
	return ch, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		delete(f.subs, id)
	}
}

// bump changes the inputs (change=true) or only signals (change=false).
func (f *fakeSnapshots) bump(change bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rev++
	if change {
		f.gen++
	}
	for _, ch := range f.subs {
		poke(ch)
	}
}

// write is one store write at the next revision that changes the config of
// the proxies of the services named, and of no other (none: no one's).
// It returns the new revision.
func (f *fakeSnapshots) write(services ...string) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rev++
	for _, s := range services {
		f.svcGen[s]++
	}
	for _, ch := range f.subs {
		poke(ch)
	}
	return f.rev
}

func (f *fakeSnapshots) revision() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rev
}

// env is one control plane on a real loopback TLS listener.
type env struct {
	ca    *testCA
	srv   *Server
	grpc  *grpc.Server
	addr  string
	reg   *fakeRegistry
	snaps *fakeSnapshots
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// startEnv starts a control plane on addr ("127.0.0.1:0" for any port).
func startEnv(t testing.TB, ca *testCA, addr string, tweak func(*ServerOptions)) *env {
	t.Helper()
	e := &env{ca: ca, reg: newFakeRegistry(), snaps: newFakeSnapshots("v")}
	o := ServerOptions{
		TrustDomain: td,
		ValidToken:  TokenValidator("s3cret"),
		Signer:      &fakeSigner{t: t, ca: ca},
		Registry:    e.reg,
		Snapshots:   e.snaps,
		Logger:      testLogger(t),
	}
	if tweak != nil {
		tweak(&o)
	}
	e.srv = NewServer(o)
	sc := ca.serverCert(t)
	tc := ServerTLSConfig(func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return sc, nil }, func() *x509.CertPool { return ca.pool })
	e.grpc = grpc.NewServer(GRPCServerOptions(tc)...)
	e.srv.Register(e.grpc)
	var lis net.Listener
	var err error
	for i := 0; i < 50; i++ { // the port of a just-stopped server may linger briefly
		if lis, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	e.addr = lis.Addr().String()
	go func() { _ = e.grpc.Serve(lis) }()
	t.Cleanup(e.stop)
	return e
}

func (e *env) stop() {
	e.srv.Shutdown()
	e.grpc.GracefulStop()
}

// dial returns a client presenting cert (nil: no client certificate).
func (e *env) dial(t testing.TB, cert *tls.Certificate) *Client {
	t.Helper()
	var mu sync.Mutex
	c, err := Dial(ClientOptions{
		Addr:    e.addr,
		RootCAs: e.ca.pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			mu.Lock()
			defer mu.Unlock()
			return cert, nil
		},
		Logger: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func spiffe(ns, sa string) string { return "spiffe://trellis.local/ns/" + ns + "/sa/" + sa }

func endpoint(id, svc string) *meshv1.Endpoint {
	return &meshv1.Endpoint{Id: id, Service: svc, Namespace: "default", Address: "127.0.0.1:15006", AdminAddress: "127.0.0.1:15000", Healthy: true}
}

// eventually polls cond (real-network tests only; synctest tests use Wait).
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func protoEqual(a, b proto.Message) bool { return proto.Equal(a, b) }

func contains(s, sub string) bool { return strings.Contains(s, sub) }
