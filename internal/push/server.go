package push

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/ratelog"
)

// Server is the control plane's Mesh service.
type Server struct {
	o   ServerOptions
	log *slog.Logger

	// done closes on Shutdown; every Watch handler returns.
	done     chan struct{}
	shutOnce sync.Once

	noncePrefix string
	nonceSeq    atomic.Uint64

	mu sync.Mutex
	// nodes: what each proxy registered through this server, by node id;
	// Watch takes the node's service from here.
	nodes map[string]*nodeInfo
	// leases: lease id → owner, so one proxy cannot keep another's lease alive.
	leases  map[int64]*nodeInfo
	streams map[string]*watchStream
	// changed closes (and is replaced) whenever a stream opens, closes or
	// changes its status, so waiters for a revision need not poll.
	changed chan struct{}

	pushes, acks, nacks, slow atomic.Uint64
	// refusalLog rate-limits the log lines of refused calls.
	refusalLog *ratelog.Limiter
	// incrementals: pushes that were deltas; pushedBytes: proto.Size of
	// every snapshot sent.
	incrementals, pushedBytes atomic.Uint64
}

type nodeInfo struct {
	id        string
	service   string
	namespace string
	identity  spiffeid.ID
	lease     int64
	ttl       time.Duration
	lastSeen  time.Time
	// health is the verdict last recorded in the registry.
	health endpointHealth
}

// endpointHealth is a proxy's verdict on its app.
type endpointHealth struct {
	healthy bool
	reason  string
}

// NewServer builds the Mesh service. Signer, Registry, Snapshots and
// ValidToken are required; the control plane wires them.
func NewServer(o ServerOptions) *Server {
	if o.MaxTTL <= 0 {
		o.MaxTTL = DefaultMaxTTL
	}
	if o.SendTimeout <= 0 {
		o.SendTimeout = DefaultSendTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.ValidToken == nil {
		o.ValidToken = func(string) bool { return false }
	}
	if o.Metrics == nil {
		o.Metrics = nopMetrics{}
	}
	if o.Refusals == nil {
		o.Refusals = nopRefusals{}
	}
	if o.Auditor == nil {
		o.Auditor = nopAuditor{}
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	return &Server{
		o:           o,
		log:         o.Logger.With("component", "push"),
		refusalLog:  ratelog.New(o.Logger.With("component", "push"), ratelog.Options{}),
		done:        make(chan struct{}),
		noncePrefix: hex.EncodeToString(b[:]),
		nodes:       map[string]*nodeInfo{},
		leases:      map[int64]*nodeInfo{},
		streams:     map[string]*watchStream{},
		changed:     make(chan struct{}),
	}
}

// Register registers the Mesh service on g.
func (s *Server) Register(g *grpc.Server) {
	meshv1.RegisterMeshServer(g, &meshService{s: s})
}

// Shutdown ends every Watch stream (with UNAVAILABLE, so proxies reconnect)
// and refuses new ones. Call it before g.GracefulStop: GracefulStop waits
// for open streams, and watches never end on their own.
func (s *Server) Shutdown() {
	s.shutOnce.Do(func() { close(s.done) })
}

// Statuses lists the proxies with an open Watch stream, sorted by node id.
func (s *Server) Statuses() []ProxyStatus {
	s.mu.Lock()
	ws := make([]*watchStream, 0, len(s.streams))
	for _, w := range s.streams {
		ws = append(ws, w)
	}
	s.mu.Unlock()
	out := make([]ProxyStatus, 0, len(ws))
	for _, w := range ws {
		out = append(out, w.status())
	}
	slices.SortFunc(out, func(a, b ProxyStatus) int { return strings.Compare(a.NodeID, b.NodeID) })
	return out
}

// statusChanged returns a channel that closes at the next status change.
func (s *Server) statusChanged() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// notifyStatus wakes every statusChanged waiter.
func (s *Server) notifyStatus() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.notifyStatusLocked()
}

func (s *Server) notifyStatusLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// AwaitRevision waits until every connected proxy runs a snapshot current at
// rev or later, or one has refused the config current at rev (see Settled),
// or ctx ends; it returns the statuses at that moment. Proxies that connect
// meanwhile count too. `trellis apply --wait` long-polls it.
func (s *Server) AwaitRevision(ctx context.Context, rev int64) []ProxyStatus {
	for {
		// Take the channel before reading: a change in between still wakes us.
		ch := s.statusChanged()
		list := s.Statuses()
		if Settled(list, rev) {
			return list
		}
		select {
		case <-ctx.Done():
			return list
		case <-ch:
		}
		// One apply moves every stream's status; reading them all at each
		// change would cost n² with n proxies, so changes coalesce a moment.
		t := time.NewTimer(awaitCoalesce)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
}

// awaitCoalesce bounds how often AwaitRevision re-reads the statuses.
const awaitCoalesce = 10 * time.Millisecond

// SoonestCertExpiry is the earliest expiry of the certificates the connected
// proxies use; ok is false when none is connected (or none reported one).
func (s *Server) SoonestCertExpiry() (t time.Time, ok bool) {
	for _, st := range s.Statuses() {
		if st.CertExpiry.IsZero() {
			continue
		}
		if !ok || st.CertExpiry.Before(t) {
			t, ok = st.CertExpiry, true
		}
	}
	return t, ok
}

// Counters returns the running totals.
func (s *Server) Counters() Counters {
	s.mu.Lock()
	n := len(s.streams)
	s.mu.Unlock()
	return Counters{
		Streams:            n,
		Pushes:             s.pushes.Load(),
		Acks:               s.acks.Load(),
		Nacks:              s.nacks.Load(),
		SlowConsumerClosed: s.slow.Load(),
		Incremental:        s.incrementals.Load(),
		PushedBytes:        s.pushedBytes.Load(),
	}
}

func (s *Server) nextNonce() string {
	return fmt.Sprintf("%s-%d", s.noncePrefix, s.nonceSeq.Add(1))
}

// meshService implements meshv1.MeshServer; a separate type because the
// RPC Register and Server.Register(*grpc.Server) share a name.
type meshService struct {
	meshv1.UnimplementedMeshServer
	s *Server
}

// Errors of the peer check; turned into codes at the boundary.
var (
	errNoClientCert = errors.New("no client certificate: call Certify first and connect with the workload certificate")
	errCertExpired  = errors.New("client certificate expired: renew it with Certify (bootstrap token if it has lapsed)")
)

type peerIdentity struct {
	id       spiffeid.ID
	ns, sa   string
	notAfter time.Time
	// serial of the leaf, hex: who renewed, in the audit log.
	serial string
}

// peerOf returns the verified workload identity of the caller. The TLS
// handshake already verified the chain against the bundle
// (VerifyClientCertIfGiven); VerifiedChains is empty when no cert was sent.
func (s *Server) peerOf(ctx context.Context) (peerIdentity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return peerIdentity{}, errNoClientCert
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return peerIdentity{}, errNoClientCert
	}
	leaf := info.State.VerifiedChains[0][0]
	return s.identityOf(leaf)
}

func (s *Server) identityOf(leaf *x509.Certificate) (peerIdentity, error) {
	if time.Now().After(leaf.NotAfter) {
		return peerIdentity{}, errCertExpired
	}
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return peerIdentity{}, fmt.Errorf("client certificate has no SPIFFE ID: %w", err)
	}
	if !id.MemberOf(s.o.TrustDomain) {
		return peerIdentity{}, fmt.Errorf("client certificate identity %s is not in trust domain %s", id, s.o.TrustDomain)
	}
	segs := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(segs) != 4 || segs[0] != "ns" || segs[2] != "sa" {
		return peerIdentity{}, fmt.Errorf("client certificate identity %s is not spiffe://<td>/ns/<namespace>/sa/<service-account>", id)
	}
	return peerIdentity{id: id, ns: segs[1], sa: segs[3], notAfter: leaf.NotAfter, serial: leaf.SerialNumber.Text(16)}, nil
}

func unauthenticated(err error) error {
	return status.Error(codes.Unauthenticated, err.Error())
}

// Certify signs a workload certificate for spiffe://td/ns/<ns>/sa/<sa>.
// The caller proves itself with a join token naming that identity (one use
// spent), or renews with a current certificate for the same identity. Every
// issuance is recorded before the certificate is returned.
func (m *meshService) Certify(ctx context.Context, req *meshv1.CertifyRequest) (*meshv1.CertifyResponse, error) {
	s := m.s
	if err := checkLabel("namespace", req.GetNamespace()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if req.GetServiceAccount() == "" {
		return nil, status.Error(codes.InvalidArgument, "service_account: required")
	}
	if !validSubdomain(req.GetServiceAccount()) {
		return nil, status.Errorf(codes.InvalidArgument, "service_account: %q is not a DNS name (lower-case letters, digits, '-' and '.')", req.GetServiceAccount())
	}
	id, err := spiffeid.FromSegments(s.o.TrustDomain, "ns", req.GetNamespace(), "sa", req.GetServiceAccount())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "namespace/service_account: %v", err)
	}
	if len(req.GetCsr()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "csr: required")
	}
	csr, err := x509.ParseCertificateRequest(req.GetCsr())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "csr: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "csr: signature: %v", err)
	}

	if err := checkCSRNames(csr, id); err != nil {
		s.refused("certify", ReasonCSRIdentity, "certify refused: the CSR names another identity", "requested", id.String())
		return nil, status.Error(codes.PermissionDenied, err.Error())
	}
	g, err := s.authorize(ctx, req, id)
	if err != nil {
		return nil, err
	}

	chain, notAfter, err := s.o.Signer.Sign(req.GetCsr(), id)
	if err != nil {
		s.log.Error("certify: sign failed", "identity", id.String(), "err", err)
		return nil, status.Errorf(codes.Internal, "push: certify: %v", err)
	}
	iss := Issuance{By: g.by, Identity: id.String(), Serial: leafSerial(chain), NotAfter: notAfter}
	if err := s.record(ctx, g, iss); err != nil {
		s.log.Warn("certify: issuance not recorded; certificate withheld", "identity", id.String(), "by", g.by, "err", err)
		return nil, err
	}
	s.o.Metrics.CertificateIssued(g.renewal)
	s.log.Info("certified", "identity", id.String(), "renewal", g.renewal, "by", g.by, "serial", iss.Serial, "not_after", notAfter)
	return &meshv1.CertifyResponse{
		CertChain:   chain,
		TrustBundle: s.o.Signer.Bundle(),
		NotAfter:    notAfter.Unix(),
	}, nil
}

// Register puts the caller's endpoint in the registry under a lease. The
// endpoint's identity comes from the caller's certificate.
func (m *meshService) Register(ctx context.Context, req *meshv1.RegisterRequest) (*meshv1.RegisterResponse, error) {
	s := m.s
	p, err := s.peerOf(ctx)
	if err != nil {
		return nil, unauthenticated(err)
	}
	ep := req.GetEndpoint()
	if err := validateEndpoint(ep); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if ep.GetNamespace() != p.ns {
		s.refused("register", ReasonNamespace, "register refused: endpoint namespace is not the certificate's", "identity", p.id.String())
		return nil, status.Errorf(codes.PermissionDenied, "endpoint.namespace: %q does not match the certificate's namespace %q (%s)", ep.GetNamespace(), p.ns, p.id)
	}
	if ep.GetIdentity() != "" && ep.GetIdentity() != p.id.String() {
		s.refused("register", ReasonIdentity, "register refused: endpoint identity is not the certificate's", "identity", p.id.String())
		return nil, status.Errorf(codes.PermissionDenied, "endpoint.identity: %q does not match the certificate's identity %s", truncate(ep.GetIdentity(), 256), p.id)
	}
	if err := s.allowAccount(ctx, ep, p); err != nil {
		return nil, err
	}
	ttl := s.o.MaxTTL
	if t := req.GetTtlSeconds(); t > 0 && t < int64(math.MaxInt64/time.Second) && time.Duration(t)*time.Second < ttl {
		ttl = time.Duration(t) * time.Second
	}
	ep = cloneEndpoint(ep)
	ep.Identity = p.id.String()
	ep.HealthReason = healthReason(ep.GetHealthReason())
	lease, granted, err := s.o.Registry.Register(ctx, ep, ttl)
	if err != nil {
		s.log.Error("register failed", "node", ep.GetId(), "err", err)
		return nil, status.Errorf(codes.Unavailable, "push: register: %v", err)
	}

	now := time.Now()
	n := &nodeInfo{id: ep.GetId(), service: ep.GetService(), namespace: ep.GetNamespace(), identity: p.id, lease: lease, ttl: granted, lastSeen: now,
		health: endpointHealth{ep.GetHealthy(), ep.GetHealthReason()}}
	s.mu.Lock()
	if old := s.nodes[n.id]; old != nil && old.lease != lease {
		delete(s.leases, old.lease)
	}
	s.nodes[n.id] = n
	s.leases[lease] = n
	s.sweepLocked(now)
	s.mu.Unlock()

	s.log.Info("registered", "node", ep.GetId(), "service", ep.GetService(), "namespace", ep.GetNamespace(), "address", ep.GetAddress(), "lease", lease, "ttl", granted)
	return &meshv1.RegisterResponse{LeaseId: lease, TtlSeconds: int64(math.Ceil(granted.Seconds()))}, nil
}

// sweepLocked forgets nodes that stopped heart-beating long ago and have no
// stream, so the maps do not grow with churn.
func (s *Server) sweepLocked(now time.Time) {
	for id, n := range s.nodes {
		if _, streaming := s.streams[id]; streaming {
			continue
		}
		if now.Sub(n.lastSeen) > 2*max(n.ttl, s.o.MaxTTL) {
			delete(s.nodes, id)
			delete(s.leases, n.lease)
		}
	}
}

// Heartbeat keeps a lease alive; NOT_FOUND tells the proxy to register again.
func (m *meshService) Heartbeat(ctx context.Context, req *meshv1.HeartbeatRequest) (*meshv1.HeartbeatResponse, error) {
	s := m.s
	p, err := s.peerOf(ctx)
	if err != nil {
		return nil, unauthenticated(err)
	}
	lease := req.GetLeaseId()
	s.mu.Lock()
	n := s.leases[lease]
	s.mu.Unlock()
	// A lease this server did not grant (another replica, or before a
	// restart) is passed through: the registry knows it or says NOT_FOUND.
	if n != nil && n.identity != p.id {
		return nil, status.Errorf(codes.PermissionDenied, "lease %d belongs to %s, not %s", lease, n.identity, p.id)
	}
	if err := s.o.Registry.Heartbeat(ctx, lease); err != nil {
		if errors.Is(err, ErrLeaseNotFound) {
			s.mu.Lock()
			if n != nil {
				delete(s.leases, lease)
			}
			s.mu.Unlock()
			return nil, status.Errorf(codes.NotFound, "lease %d expired: register again", lease)
		}
		return nil, status.Errorf(codes.Unavailable, "push: heartbeat: %v", err)
	}
	var ttl time.Duration
	if n != nil {
		s.mu.Lock()
		n.lastSeen = time.Now()
		ttl = n.ttl
		s.mu.Unlock()
	}
	if err := s.recordHealth(ctx, n, req); err != nil {
		return nil, err
	}
	return &meshv1.HeartbeatResponse{TtlSeconds: int64(math.Ceil(ttl.Seconds()))}, nil
}

// recordHealth writes the heartbeat's verdict on the proxy's app to the
// registry when it differs from the one last recorded (n nil: a lease this
// replica did not grant; the registry skips an unchanged verdict itself).
func (s *Server) recordHealth(ctx context.Context, n *nodeInfo, req *meshv1.HeartbeatRequest) error {
	h := endpointHealth{req.GetHealthy(), req.GetHealthReason()}
	if h.healthy {
		h.reason = ""
	}
	h.reason = healthReason(h.reason)
	if n != nil {
		s.mu.Lock()
		same := n.health == h
		s.mu.Unlock()
		if same {
			return nil
		}
	}
	if err := s.o.Registry.SetHealth(ctx, req.GetLeaseId(), h.healthy, h.reason); err != nil {
		if errors.Is(err, ErrLeaseNotFound) {
			return status.Errorf(codes.NotFound, "lease %d expired: register again", req.GetLeaseId())
		}
		return status.Errorf(codes.Unavailable, "push: heartbeat: record health: %v", err)
	}
	if n != nil {
		s.mu.Lock()
		n.health = h
		s.mu.Unlock()
	}
	return nil
}

// healthReason bounds the reason a proxy reports (it is shown by trellis
// get endpoints and stored with the endpoint), cut on a rune boundary.
func healthReason(r string) string {
	return strings.ToValidUTF8(truncate(r, 256), "")
}

func cloneEndpoint(ep *meshv1.Endpoint) *meshv1.Endpoint {
	out := proto.Clone(ep).(*meshv1.Endpoint)
	// The protocol promises label app=<service> on every endpoint.
	if out.Labels == nil {
		out.Labels = map[string]string{}
	}
	out.Labels["app"] = out.GetService()
	return out
}

// NodeLease is the registry lease of a node this server knows (registered
// or adopted here), 0 if none: the control plane stores each connected
// proxy's status under it, so the record leaves with the proxy.
func (s *Server) NodeLease(id string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := s.nodes[id]; n != nil {
		return n.lease
	}
	return 0
}
