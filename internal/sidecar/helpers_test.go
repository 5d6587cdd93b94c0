package sidecar

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/push"
	"trellis.dev/trellis/internal/testpki"
)

const testToken = "s3cret"

// controlPlane is the real push server on a real loopback TLS listener,
// with a snapshot source the test steers (mesh) and an in-memory registry:
// what the sidecar talks to is exactly what `trellis control` serves, only
// the compiler is replaced.
type controlPlane struct {
	srv    *push.Server
	signer *signer
	addr   string
	caFile string
	token  string
	mesh   *mesh
}

func startControlPlane(t *testing.T) *controlPlane {
	t.Helper()
	ca := testpki.NewCA(t)
	sg := &signer{t: t, ca: ca}
	m := &mesh{bundle: [][]byte{ca.Cert.Raw}, subs: map[int]chan struct{}{}, reg: map[string]*meshv1.Endpoint{}}
	srv := push.NewServer(push.ServerOptions{
		TrustDomain: spiffeid.RequireTrustDomainFromString("trellis.local"),
		ValidToken:  push.TokenValidator(testToken),
		Signer:      sg,
		Registry:    m,
		Snapshots:   m,
		Logger:      testLogger(t, "control"),
	})
	serverCert := ca.TLSCertificate(t, "", func(c *x509.Certificate) {
		c.Subject.CommonName = "control"
		c.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	})
	pool := ca.Pool()
	tc := push.ServerTLSConfig(func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &serverCert, nil }, func() *x509.CertPool { return pool })
	g := grpc.NewServer(push.GRPCServerOptions(tc)...)
	srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(func() { srv.Shutdown(); g.GracefulStop() })

	dir := t.TempDir()
	cp := &controlPlane{srv: srv, signer: sg, addr: lis.Addr().String(), mesh: m,
		caFile: filepath.Join(dir, "ca.crt"), token: filepath.Join(dir, "bootstrap-token")}
	writeFile(t, cp.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw}))
	writeFile(t, cp.token, []byte(testToken+"\n"))
	return cp
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// status is the control plane's view of one service's proxy (proxy-status).
func (cp *controlPlane) status(service string) (push.ProxyStatus, bool) {
	for _, st := range cp.srv.Statuses() {
		if st.Service == service {
			return st, true
		}
	}
	return push.ProxyStatus{}, false
}

// signer issues workload certificates from the test CA.
type signer struct {
	t  testing.TB
	ca *testpki.CA
	// signed counts certificates issued.
	signed atomic.Int32
}

func (s *signer) Sign(csrDER []byte, id spiffeid.ID) ([][]byte, time.Time, error) {
	s.signed.Add(1)
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, time.Time{}, err
	}
	cert := s.ca.Issue(s.t, testpki.LeafTemplate(s.t, []string{id.String()}), csr.PublicKey)
	return [][]byte{cert.Raw}, cert.NotAfter, nil
}

func (s *signer) Bundle() [][]byte { return [][]byte{s.ca.Cert.Raw} }

// mesh is the test's compiler and registry in one: every service has one
// HTTP port; a subscriber sees a service's registered endpoints whose
// "version" label is the one the test picked (all of them if none), and
// poison adds to one service's snapshot whatever the test wants refused.
type mesh struct {
	bundle [][]byte

	mu      sync.Mutex
	gen     int
	reg     map[string]*meshv1.Endpoint      // by id
	version map[string]string                // service → endpoint version label to route to
	poison  map[string]*meshv1.Service       // node's service → extra service in its snapshot
	policy  map[string]*meshv1.BackendPolicy // service → its backend policy
	checks  map[string]*meshv1.HealthCheck   // service → its healthCheck
	subs    map[int]chan struct{}
	nextSub int
	lease   int64
	leases  map[int64]string // lease → endpoint id
}

func (m *mesh) Register(_ context.Context, ep *meshv1.Endpoint, ttl time.Duration) (int64, time.Duration, error) {
	m.mu.Lock()
	m.reg[ep.GetId()] = proto.Clone(ep).(*meshv1.Endpoint)
	m.gen++ // the endpoint set changed: a new version for subscribers
	m.lease++
	lease := m.lease
	if m.leases == nil {
		m.leases = map[int64]string{}
	}
	m.leases[lease] = ep.GetId()
	m.mu.Unlock()
	m.changed()
	return lease, ttl, nil
}

func (m *mesh) Heartbeat(context.Context, int64) error { return nil }

// SetHealth records a verdict; an unhealthy endpoint leaves snapshots, as
// the real compiler's.
func (m *mesh) SetHealth(_ context.Context, lease int64, healthy bool, reason string) error {
	m.mu.Lock()
	ep := m.reg[m.leases[lease]]
	if ep == nil {
		m.mu.Unlock()
		return fmt.Errorf("lease %d: %w", lease, push.ErrLeaseNotFound)
	}
	ep = proto.Clone(ep).(*meshv1.Endpoint)
	ep.Healthy, ep.HealthReason = healthy, reason
	m.reg[ep.GetId()] = ep
	m.gen++
	m.mu.Unlock()
	m.changed()
	return nil
}

// endpoint is the registered endpoint of service (nil: none).
func (m *mesh) endpoint(service string) *meshv1.Endpoint {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, ep := range m.reg {
		if ep.GetService() == service {
			return ep
		}
	}
	return nil
}

// Lookup finds nothing: one control plane, so no proxy fails over to it.
func (m *mesh) Lookup(_ context.Context, ns, id string) (*meshv1.Endpoint, int64, error) {
	return nil, 0, fmt.Errorf("mesh: %s/%s: %w", ns, id, push.ErrLeaseNotFound)
}

func httpService(name string) *meshv1.Service {
	return &meshv1.Service{Name: name, Namespace: "default", Ports: []*meshv1.Port{{Name: "http", Port: 80, Protocol: meshv1.Protocol_HTTP}}}
}

func (m *mesh) Snapshot(_ context.Context, n push.Node) (*meshv1.Snapshot, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	snap := &meshv1.Snapshot{
		Version:     fmt.Sprintf("g%d-%s", m.gen, n.Service),
		Domain:      "trellis.local",
		TrustDomain: "trellis.local",
		TrustBundle: m.bundle,
		Inbound:     httpService(n.Service),
	}
	snap.Inbound.HealthCheck = m.checks[n.Service]
	for _, sub := range n.Subscriptions {
		name, _, _ := strings.Cut(sub, ".")
		if name == n.Service {
			continue
		}
		svc := httpService(name)
		svc.BackendPolicy = m.policy[name]
		for _, ep := range m.reg {
			if ep.GetService() == name && ep.GetHealthy() && (m.version[name] == "" || ep.GetLabels()["version"] == m.version[name]) {
				svc.Endpoints = append(svc.Endpoints, ep)
			}
		}
		snap.Services = append(snap.Services, svc)
	}
	if bad := m.poison[n.Service]; bad != nil {
		snap.Services = append(snap.Services, bad)
		snap.Version += "-poisoned"
	}
	// In the compiler's order (namespace, name), which a proxy merging a
	// delta keeps.
	slices.SortFunc(snap.Services, func(a, b *meshv1.Service) int {
		return cmp.Or(cmp.Compare(a.GetNamespace(), b.GetNamespace()), cmp.Compare(a.GetName(), b.GetName()))
	})
	return snap, nil
}

func (m *mesh) Subscribe() (<-chan struct{}, func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ch := make(chan struct{}, 1)
	id := m.nextSub
	m.nextSub++
	m.subs[id] = ch
	return ch, func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		delete(m.subs, id)
	}
}

// update changes the mesh under the lock and tells every watcher.
func (m *mesh) update(f func(m *mesh)) {
	m.mu.Lock()
	m.gen++
	f(m)
	m.mu.Unlock()
	m.changed()
}

func (m *mesh) changed() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, ch := range m.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// startSidecar runs a sidecar against cp until the test ends and returns
// it once it is ready (its first snapshot applied).
func startSidecar(t *testing.T, cp *controlPlane, o Options) *sidecar {
	t.Helper()
	ready := make(chan struct{})
	o.ControlAddr, o.CAFile, o.TokenFile = cp.addr, cp.caFile, cp.token
	o.InboundAddr, o.AdminAddr = "127.0.0.1:0", "127.0.0.1:0"
	o.DrainTimeout = time.Second
	o.Ready = ready
	o.Logger = testLogger(t, o.Service)
	s, err := newSidecar(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := s.run(ctx); done <- err }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("sidecar %s: %v", o.Service, err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("sidecar %s ended before ready: %v", o.Service, err)
	case <-time.After(10 * time.Second):
		t.Fatalf("sidecar %s not ready after 10s", o.Service)
	}
	return s
}

// startApp serves a fixed body on loopback.
func startApp(t *testing.T, body string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, body) })}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// call sends GET http://<host>/ through the sidecar's outbound HTTP proxy.
func call(t *testing.T, s *sidecar, host string) (int, string) {
	t.Helper()
	proxyURL := &url.URL{Scheme: "http", Host: s.proxy.OutboundAddr()}
	c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL)}, Timeout: 10 * time.Second}
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://" + host + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// eventually polls cond over real sockets (no fake clock can drive gRPC).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func testLogger(t *testing.T, name string) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})).With("test_node", name)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
