package push

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// Retry pacing while the control plane is unreachable.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// expBackoff doubles from minBackoff up to maxBackoff, with jitter so that
// proxies cut off together do not come back together.
type expBackoff struct{ n int }

func (b *expBackoff) next() time.Duration {
	d := min(minBackoff<<min(b.n, 16), maxBackoff)
	b.n++
	return d/2 + rand.N(d/2+1)
}

func (b *expBackoff) reset() { b.n = 0 }

// sleepCtx waits d or until ctx ends; false means ctx ended.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// SessionOptions configure RunSession.
type SessionOptions struct {
	// Endpoint is this proxy's endpoint; identity is filled by the server.
	Endpoint *meshv1.Endpoint
	// Heartbeat is the lease keep-alive interval (default 5s). The lease TTL
	// requested is 2.5×Heartbeat, so a dead proxy leaves within 3 heartbeats.
	Heartbeat time.Duration
	// Subscriptions returns the wanted set ("name.namespace"); the proxy's
	// own service is always added. Nil means only its own service.
	Subscriptions func() []string
	// Apply installs a snapshot: nil ACKs it, an error NACKs it with the
	// error's text (the proxy keeps its last good config). Required.
	Apply func(*meshv1.Snapshot) error
	// CertNotAfter, if set, reports the proxy's current certificate expiry
	// to proxy-status; call Resubscribe after a renewal to send it.
	CertNotAfter func() time.Time
	// Status, if set, fills the proxy's status fields (its concurrency
	// limit and shed count) into every message it sends, and is polled
	// every StatusInterval (default 5s): when it changed, a status-only
	// message (no version, nonce or error: no ACK or NACK) carries it.
	Status         func(*meshv1.WatchRequest)
	StatusInterval time.Duration
	// Health, if set, is the proxy's verdict on its app: sent with every
	// Register and Heartbeat, and at once (without waiting for the lease
	// tick) whenever HealthChanged receives. Nil: the Endpoint's Healthy
	// as given.
	Health        func() (healthy bool, reason string)
	HealthChanged <-chan struct{}
	// FullSnapshots: do not ask for incremental snapshots (as a proxy older
	// than the delta protocol). Apply always gets whole snapshots either
	// way: the session merges deltas first.
	FullSnapshots bool
}

// DefaultStatusInterval is SessionOptions.StatusInterval's default.
const DefaultStatusInterval = 5 * time.Second

type session struct {
	c    *Client
	o    SessionOptions
	log  *slog.Logger
	ep   *meshv1.Endpoint
	self string
	ttl  int64

	// reregister (buffer 1): the watch learned the server does not know us.
	reregister chan struct{}
	// lastAcked is the version last applied; owned by the watch goroutine.
	lastAcked string
}

// RunSession registers the endpoint, keeps its lease alive and watches for
// snapshots, reconnecting with backoff, until ctx ends (then it returns nil).
// While the control plane is unreachable Apply is simply not called: the
// proxy keeps what it has. It returns early only on errors retrying cannot
// fix (the control plane refused the endpoint as invalid or not ours).
func (c *Client) RunSession(ctx context.Context, o SessionOptions) error {
	if o.Endpoint == nil {
		return errors.New("push: session: endpoint required")
	}
	if o.Apply == nil {
		return errors.New("push: session: apply func required")
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = DefaultHeartbeat
	}
	if o.StatusInterval <= 0 {
		o.StatusInterval = DefaultStatusInterval
	}
	s := &session{
		c:    c,
		o:    o,
		ep:   proto.Clone(o.Endpoint).(*meshv1.Endpoint),
		self: o.Endpoint.GetService() + "." + o.Endpoint.GetNamespace(),
		// Rounded down: a dead proxy must leave within 3 heartbeats,
		// and the lease checker and the push need some of that time.
		ttl:        max(1, int64(o.Heartbeat*5/2/time.Second)),
		reregister: make(chan struct{}, 1),
	}
	s.log = c.log.With("node", s.ep.GetId())

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	lease, err := s.register(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	errc := make(chan error, 2)
	go func() { errc <- s.leaseLoop(ctx, lease) }()
	go func() { errc <- s.watchLoop(ctx) }()
	err = <-errc
	cancel()
	return errors.Join(err, <-errc)
}

// rpcTimeout bounds one unary call so a hung connection cannot stall the loop.
func (s *session) rpcTimeout() time.Duration { return max(2*s.o.Heartbeat, 5*time.Second) }

// register retries until the control plane grants a lease.
func (s *session) register(ctx context.Context) (int64, error) {
	var bo expBackoff
	for attempt := 0; ; attempt++ {
		mesh, gen := s.c.current()
		rctx, cancel := context.WithTimeout(ctx, s.rpcTimeout())
		var pr peer.Peer
		resp, err := mesh.Register(rctx, &meshv1.RegisterRequest{Endpoint: s.endpoint(), TtlSeconds: s.ttl}, grpc.Peer(&pr))
		cancel()
		s.replicaFailed(gen, &pr, err)
		if err == nil {
			// A pending re-register request is satisfied by this one.
			select {
			case <-s.reregister:
			default:
			}
			lvl := slog.LevelDebug
			if attempt > 0 {
				lvl = slog.LevelInfo
			}
			s.log.Log(ctx, lvl, "registered", "lease", resp.GetLeaseId(), "ttl_seconds", resp.GetTtlSeconds())
			return resp.GetLeaseId(), nil
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		switch status.Code(err) {
		case codes.InvalidArgument, codes.PermissionDenied:
			return 0, rpcError("register", s.c.o.Addr, err)
		case codes.Unauthenticated:
			s.c.redial(gen)
		}
		lvl := slog.LevelDebug
		if attempt == 0 {
			lvl = slog.LevelWarn
		}
		s.log.Log(ctx, lvl, "register failed; retrying", "err", status.Convert(err).Message())
		if !sleepCtx(ctx, bo.next()) {
			return 0, ctx.Err()
		}
	}
}

// endpoint is the endpoint to register, with the app's health now.
func (s *session) endpoint() *meshv1.Endpoint {
	if s.o.Health == nil {
		return s.ep
	}
	ep := proto.Clone(s.ep).(*meshv1.Endpoint)
	ep.Healthy, ep.HealthReason = s.o.Health()
	return ep
}

// heartbeatRequest is a heartbeat of lease with the app's health now.
func (s *session) heartbeatRequest(lease int64) *meshv1.HeartbeatRequest {
	req := &meshv1.HeartbeatRequest{LeaseId: lease, Healthy: s.ep.GetHealthy()}
	if s.o.Health != nil {
		req.Healthy, req.HealthReason = s.o.Health()
	}
	return req
}

func (s *session) leaseLoop(ctx context.Context, lease int64) error {
	t := time.NewTicker(s.o.Heartbeat)
	defer t.Stop()
	failing := false
	for {
		reg := false
		select {
		case <-ctx.Done():
			return nil
		case <-s.reregister:
			reg = true
		case <-s.o.HealthChanged: // a nil channel never receives
			t.Reset(s.o.Heartbeat)
			reg = s.heartbeat(ctx, lease, &failing)
		case <-t.C:
			reg = s.heartbeat(ctx, lease, &failing)
		}
		if reg {
			l, err := s.register(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			lease, failing = l, false
		}
	}
}

// heartbeat sends one heartbeat; true means the lease expired and the
// proxy must register again.
func (s *session) heartbeat(ctx context.Context, lease int64, failing *bool) bool {
	mesh, gen := s.c.current()
	hctx, cancel := context.WithTimeout(ctx, s.rpcTimeout())
	var pr peer.Peer
	_, err := mesh.Heartbeat(hctx, s.heartbeatRequest(lease), grpc.Peer(&pr))
	cancel()
	s.replicaFailed(gen, &pr, err)
	switch status.Code(err) {
	case codes.OK:
		if *failing {
			s.log.Info("heartbeat ok again", "lease", lease)
		}
		*failing = false
	case codes.NotFound:
		s.log.Info("lease expired; registering again", "lease", lease)
		return true
	case codes.Unauthenticated:
		s.c.redial(gen)
		fallthrough
	default:
		if ctx.Err() != nil {
			return false
		}
		if !*failing {
			s.log.Warn("heartbeat failed; retrying", "err", status.Convert(err).Message())
		}
		*failing = true
	}
	return false
}

func (s *session) watchLoop(ctx context.Context) error {
	var bo expBackoff
	quiet := false
	for {
		received, gen, err := s.watchOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		switch status.Code(err) {
		case codes.FailedPrecondition:
			poke(s.reregister)
		case codes.Unauthenticated:
			s.c.redial(gen)
		}
		if received {
			bo.reset()
			quiet = false
		}
		if !quiet {
			s.log.Warn("watch disconnected; reconnecting (keeping current config)", "err", status.Convert(err).Message())
			quiet = true
		} else {
			s.log.Debug("watch failed; retrying", "err", status.Convert(err).Message())
		}
		if !sleepCtx(ctx, bo.next()) {
			return nil
		}
	}
}

// replicaFailed moves the client off a replica that answered a unary call
// with UNAVAILABLE: it is up but cannot serve (its store is unreachable),
// and staying would let the lease lapse while other replicas are fine. A
// call that never reached a replica (no peer) is gRPC's own failover to
// handle.
func (s *session) replicaFailed(gen uint64, pr *peer.Peer, err error) {
	if status.Code(err) != codes.Unavailable || pr.Addr == nil {
		return
	}
	s.c.avoid(gen, pr.Addr.String())
}

// attached records the replica a new Watch stream is on, logging a move.
func (s *session) attached(vals []string) {
	var r string
	if len(vals) > 0 {
		r = vals[0]
	}
	if old := s.c.replica.Swap(&r); old == nil || *old != r {
		s.log.Info("watching control-plane replica", "replica", r)
	}
}

// subscriptions is the wanted set, valid entries only, own service included.
// certNotAfter is the expiry to report, Unix seconds (0: unknown).
func (s *session) certNotAfter() int64 {
	if s.o.CertNotAfter == nil {
		return 0
	}
	if t := s.o.CertNotAfter(); !t.IsZero() {
		return t.Unix()
	}
	return 0
}

// reportedStatus is what a message reported of the proxy's status.
type reportedStatus struct {
	limit uint32
	shed  uint64
	// certRoot and bundle: the CA-rotation fingerprints, as strings so
	// the struct compares with ==.
	certRoot, bundle string
}

// status fills req's status fields and returns them.
func (s *session) status(req *meshv1.WatchRequest) reportedStatus {
	if s.o.Status != nil {
		s.o.Status(req)
	}
	return reportedStatus{req.GetConcurrencyLimit(), req.GetConcurrencyShed(),
		string(req.GetCertIssuerFingerprint()), string(req.GetTrustBundleFingerprint())}
}

func (s *session) subscriptions() []string {
	var want []string
	if s.o.Subscriptions != nil {
		want = s.o.Subscriptions()
	}
	out := make([]string, 0, len(want)+1)
	out = append(out, s.self)
	for _, w := range want {
		if _, err := normalizeSubscriptions([]string{w}); err != nil {
			s.log.Warn("ignoring invalid subscription", "err", err)
			continue
		}
		out = append(out, w)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// watchOnce runs one Watch stream until it fails. received reports whether
// any snapshot arrived (the connection was healthy, so backoff resets).
func (s *session) watchOnce(ctx context.Context) (received bool, gen uint64, err error) {
	mesh, gen := s.c.current()
	sctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	stream, err := mesh.Watch(sctx)
	if err != nil {
		return false, gen, err
	}

	// One Send at a time: ACKs from this goroutine, resubscriptions from the
	// other. cur is the set last sent.
	var mu sync.Mutex
	cur := s.subscriptions()
	expiry := s.certNotAfter()
	first := &meshv1.WatchRequest{NodeId: s.ep.GetId(), Subscriptions: cur, Version: s.lastAcked, CertNotAfter: expiry,
		SupportsIncremental: !s.o.FullSnapshots}
	sent := s.status(first)
	if err := stream.Send(first); err != nil {
		_, err = stream.Recv() // the stream's real error
		return false, gen, err
	}
	// The server names its replica in the header before any snapshot (an
	// unchanged config after a failover sends none).
	md, err := stream.Header()
	if err != nil {
		return false, gen, err
	}
	s.attached(md.Get(ReplicaHeader))
	wg.Go(func() {
		tick := time.NewTicker(s.o.StatusInterval)
		defer tick.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-s.c.resub:
			case <-tick.C:
			}
			next, nextExpiry := s.subscriptions(), s.certNotAfter()
			req := &meshv1.WatchRequest{NodeId: s.ep.GetId(), Subscriptions: next, CertNotAfter: nextExpiry}
			st := s.status(req)
			mu.Lock()
			if !slices.Equal(next, cur) || nextExpiry != expiry || st != sent {
				cur, expiry, sent = next, nextExpiry, st
				// A failed Send shows up as the stream's Recv error.
				_ = stream.Send(req)
			}
			mu.Unlock()
		}
	})

	// base is the snapshot last applied on this stream: what the server
	// bases a delta on (a new stream starts with a full snapshot).
	var base *meshv1.Snapshot
	for {
		snap, err := stream.Recv()
		if err != nil {
			return received, gen, err
		}
		received = true
		req := &meshv1.WatchRequest{NodeId: s.ep.GetId(), Version: snap.GetVersion(), Nonce: snap.GetNonce()}
		if full, aerr := s.apply(base, snap); aerr != nil {
			req.Error = aerr.Error()
			s.log.Warn("refusing snapshot (NACK); keeping last good config", "version", snap.GetVersion(),
				"incremental", snap.GetIncremental(), "err", aerr)
		} else {
			base = full
			s.lastAcked = snap.GetVersion()
			s.log.Debug("applied snapshot", "version", snap.GetVersion(), "incremental", snap.GetIncremental())
		}
		mu.Lock()
		req.Subscriptions, req.CertNotAfter = cur, expiry
		sent = s.status(req)
		_ = stream.Send(req)
		mu.Unlock()
	}
}

// apply merges snap onto base if it is a delta and applies the whole
// result, returning it (the next delta's base).
func (s *session) apply(base, snap *meshv1.Snapshot) (*meshv1.Snapshot, error) {
	full, err := ApplyDelta(base, snap)
	if err != nil {
		return nil, err
	}
	if err := s.o.Apply(full); err != nil {
		return nil, err
	}
	return full, nil
}
