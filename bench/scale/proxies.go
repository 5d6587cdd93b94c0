package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/identity"
	"trellis.dev/trellis/internal/push"
)

const namespace = "default"

func serviceName(i int) string { return fmt.Sprintf("svc-%03d", i) }

// applied is one snapshot a simulated proxy applied (and then ACKed).
type applied struct {
	at   time.Time
	snap *meshv1.Snapshot
}

// simProxy is one simulated proxy: its own certificate and gRPC connection
// (mTLS), a real push session (Register under a lease, Heartbeat, Watch
// with ACKs, deltas merged by the session), and the history of what it
// applied, for the harness to time changes by.
type simProxy struct {
	idx     int
	id      string
	service int
	subs    []int // indexes of the services it subscribes to
	cert    *tls.Certificate
	client  *push.Client

	mu      sync.Mutex
	history []applied // the last few, oldest first
	ready   chan struct{}
	once    sync.Once
}

const historyLen = 16

func (p *simProxy) apply(s *meshv1.Snapshot) error {
	now := time.Now()
	p.mu.Lock()
	if len(p.history) == historyLen {
		p.history = append(p.history[:0], p.history[1:]...)
	}
	p.history = append(p.history, applied{at: now, snap: s})
	p.mu.Unlock()
	p.once.Do(func() { close(p.ready) })
	return nil
}

// firstMatch is when the proxy first applied a snapshot for which ok holds
// (looking back over its history), false if it has not yet.
func (p *simProxy) firstMatch(ok func(*meshv1.Snapshot) bool) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, a := range p.history {
		if ok(a.snap) {
			return a.at, true
		}
	}
	return time.Time{}, false
}

func (p *simProxy) last() *meshv1.Snapshot {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.history) == 0 {
		return nil
	}
	return p.history[len(p.history)-1].snap
}

// subscriptions are the proxy's 3 (or -subs) services, "name.namespace".
func (p *simProxy) subscriptions() []string {
	out := make([]string, 0, len(p.subs))
	for _, s := range p.subs {
		out = append(out, serviceName(s)+"."+namespace)
	}
	return out
}

// uses reports whether a change to service k reaches this proxy: it is
// its own or one it subscribes to.
func (p *simProxy) uses(k int) bool {
	if p.service == k {
		return true
	}
	for _, s := range p.subs {
		if s == k {
			return true
		}
	}
	return false
}

// newSimProxies lays out n proxies over services: proxy i runs service
// i mod services and subscribes to subs others, drawn with a fixed seed so
// runs compare.
func newSimProxies(n, services, subs int) []*simProxy {
	r := rand.New(rand.NewPCG(uint64(n), 12))
	out := make([]*simProxy, n)
	for i := range out {
		p := &simProxy{idx: i, id: fmt.Sprintf("proxy-%04d", i), service: i % services, ready: make(chan struct{})}
		for len(p.subs) < min(subs, services-1) {
			s := r.IntN(services)
			if s != p.service && !p.uses(s) {
				p.subs = append(p.subs, s)
			}
		}
		out[i] = p
	}
	return out
}

// certifier gets workload certificates from Certify with the dev-mode
// bootstrap token, over one bootstrap connection.
type certifier struct {
	client *push.Client
	token  string
	td     spiffeid.TrustDomain
}

func (c *certifier) certify(ctx context.Context, service string) (*tls.Certificate, error) {
	key, err := identity.NewKey()
	if err != nil {
		return nil, err
	}
	id, err := spiffeid.FromSegments(c.td, "ns", namespace, "sa", service)
	if err != nil {
		return nil, err
	}
	csr, err := identity.NewCSR(key, id)
	if err != nil {
		return nil, err
	}
	resp, err := c.client.Certify(ctx, c.token, csr, namespace, service)
	if err != nil {
		return nil, fmt.Errorf("scale: certify %s: %w", service, err)
	}
	return tlsCert(resp.GetCertChain(), key), nil
}

func tlsCert(chain [][]byte, key *ecdsa.PrivateKey) *tls.Certificate {
	return &tls.Certificate{Certificate: chain, PrivateKey: key}
}

// start dials the proxy's own connection and runs its session until ctx
// ends; errors (a refused registration) go to errc.
func (p *simProxy) start(ctx context.Context, cp *controlPlane, full bool, heartbeat time.Duration, errc chan<- error) error {
	c, err := push.Dial(push.ClientOptions{
		Addr:    cp.addrs.GRPC,
		RootCAs: cp.ca,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return p.cert, nil
		},
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return err
	}
	p.client = c
	ep := &meshv1.Endpoint{
		Id: p.id, Service: serviceName(p.service), Namespace: namespace, Healthy: true,
		// Never dialled: the simulated proxies serve no traffic.
		Address:      fmt.Sprintf("10.1.%d.%d:8080", p.idx/250, p.idx%250+1),
		AdminAddress: "127.0.0.1:15000",
	}
	go func() {
		err := c.RunSession(ctx, push.SessionOptions{
			Endpoint: ep, Heartbeat: heartbeat, Subscriptions: p.subscriptions,
			Apply: p.apply, FullSnapshots: full,
		})
		if err != nil {
			errc <- fmt.Errorf("scale: %s: %w", p.id, err)
		}
	}()
	return nil
}

// rawMesh is a plain Mesh client presenting cert, for the endpoint churn
// (registering extra endpoints without watching).
func rawMesh(cp *controlPlane, cert *tls.Certificate) (meshv1.MeshClient, func(), error) {
	tc := &tls.Config{RootCAs: cp.ca, Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS13}
	cc, err := grpc.NewClient(cp.addrs.GRPC, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		return nil, nil, err
	}
	return meshv1.NewMeshClient(cc), func() { _ = cc.Close() }, nil
}

// snapshotSize is the encoded size of what a proxy holds.
func snapshotSize(s *meshv1.Snapshot) int {
	if s == nil {
		return 0
	}
	c := proto.Clone(s).(*meshv1.Snapshot)
	c.Nonce = ""
	return proto.Size(c)
}
