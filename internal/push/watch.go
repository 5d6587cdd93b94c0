package push

import (
	"context"
	"encoding/hex"
	"errors"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// ReplicaHeader is the Watch response header that names the replica
// (ServerOptions.Replica) the stream is attached to.
const ReplicaHeader = "trellis-replica"

// watchStream is one proxy's open Watch. The handler goroutine waits for the
// end; recvLoop handles ACK/NACK and subscriptions; sendLoop compiles and
// sends, alone, so a stalled send holds up no one but this stream.
type watchStream struct {
	s      *Server
	stream grpc.BidiStreamingServer[meshv1.WatchRequest, meshv1.Snapshot]
	node   Node // Subscriptions unused here; subs below is current

	// wake (buffer 1) coalesces subscription changes: latest wins.
	wake      chan struct{}
	replaced  chan struct{}
	replOnce  sync.Once
	stalled   chan struct{}
	stallOnce sync.Once

	mu        sync.Mutex
	subs      []string
	sentVer   string
	sentNonce string
	// sentRev is the newest revision sentVer is current at (compiles that
	// yield the same version advance it); sentAt is when it was sent.
	sentRev int64
	sentAt  time.Time
	st      ProxyStatus

	// The delta protocol (delta.go). incremental: the proxy asked for
	// deltas. base: the services of the snapshot last sent, a delta's base
	// once baseAcked (the proxy ACKed it). sentIncr: that send was a delta.
	incremental bool
	base        *deltaBase
	baseAcked   bool
	sentIncr    bool
}

func (w *watchStream) status() ProxyStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.st
}

func (w *watchStream) replace() { w.replOnce.Do(func() { close(w.replaced) }) }
func (w *watchStream) stall()   { w.stallOnce.Do(func() { close(w.stalled) }) }

func poke(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Watch streams snapshots to one proxy until it goes away, is replaced by a
// newer stream for the same node, stalls, or the server shuts down.
func (m *meshService) Watch(stream grpc.BidiStreamingServer[meshv1.WatchRequest, meshv1.Snapshot]) error {
	s := m.s
	select {
	case <-s.done:
		return status.Error(codes.Unavailable, "control plane shutting down: reconnect")
	default:
	}
	p, err := s.peerOf(stream.Context())
	if err != nil {
		return unauthenticated(err)
	}
	first, err := stream.Recv()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		return err
	}
	if first.GetNodeId() == "" {
		return status.Error(codes.InvalidArgument, "node_id: required on the first message")
	}
	subs, err := normalizeSubscriptions(first.GetSubscriptions())
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	n, err := s.streamNode(stream.Context(), first.GetNodeId(), p)
	if err != nil {
		return err
	}

	// Tell the proxy whom it is attached to before any snapshot: an
	// unchanged config sends none.
	if err := stream.SendHeader(metadata.Pairs(ReplicaHeader, s.o.Replica)); err != nil {
		return err
	}
	now := time.Now()
	w := &watchStream{
		s:        s,
		stream:   stream,
		node:     Node{ID: n.id, Service: n.service, Namespace: n.namespace, Identity: n.identity},
		wake:     make(chan struct{}, 1),
		replaced: make(chan struct{}),
		stalled:  make(chan struct{}),
		subs:     subs,

		incremental: first.GetSupportsIncremental(),
		st: ProxyStatus{
			NodeID:      n.id,
			Replica:     s.o.Replica,
			Service:     n.service,
			Namespace:   n.namespace,
			Identity:    n.identity.String(),
			State:       StatePending,
			CertExpiry:  p.notAfter,
			ConnectedAt: now,

			ConcurrencyLimit: first.GetConcurrencyLimit(),
			ConcurrencyShed:  first.GetConcurrencyShed(),
		},
	}
	// A reconnecting proxy says which version it runs; if that is still
	// current, nothing needs sending.
	if v := first.GetVersion(); v != "" {
		w.sentVer = v
		w.st.SentVersion, w.st.AckedVersion, w.st.State = v, v, StateSynced
	}
	w.recordFingerprintsLocked(first) // not yet shared: no lock needed
	w.wake <- struct{}{}              // first compile at once

	s.mu.Lock()
	old := s.streams[n.id]
	s.streams[n.id] = w
	s.notifyStatusLocked()
	s.mu.Unlock()
	if old != nil {
		old.replace()
	}
	defer func() {
		s.mu.Lock()
		if s.streams[n.id] == w {
			delete(s.streams, n.id)
			s.notifyStatusLocked()
		}
		s.mu.Unlock()
	}()
	log := s.log.With("node", n.id)
	log.Info("watch opened", "subscriptions", len(subs), "version", first.GetVersion())

	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	inputs, unsubscribe := s.o.Snapshots.Subscribe()
	defer unsubscribe()

	recvErr := make(chan error, 1)
	go func() { recvErr <- w.recvLoop() }()
	sendErr := make(chan error, 1)
	go func() { sendErr <- w.sendLoop(ctx, inputs) }()

	select {
	case <-ctx.Done():
		log.Debug("watch ended", "err", ctx.Err())
		return status.FromContextError(ctx.Err()).Err()
	case <-s.done:
		log.Debug("watch ended: server shutting down")
		return status.Error(codes.Unavailable, "control plane shutting down: reconnect")
	case <-w.replaced:
		log.Info("watch replaced by a newer stream for the same node")
		return status.Errorf(codes.Aborted, "replaced by a newer watch for node %q", n.id)
	case err := <-recvErr:
		if errors.Is(err, io.EOF) {
			log.Debug("watch closed by proxy")
			return nil
		}
		log.Debug("watch ended", "err", err)
		return err
	case err := <-sendErr:
		log.Info("watch send failed", "err", err)
		return err
	case <-w.stalled:
		// Returning ends the stream, which unblocks the stalled Send.
		s.slow.Add(1)
		s.o.Metrics.SlowConsumerClosed()
		log.Warn("closing watch: proxy did not take a snapshot in time", "timeout", s.o.SendTimeout)
		return status.Errorf(codes.Unavailable, "snapshot send blocked longer than %s: reconnect and resync", s.o.SendTimeout)
	}
}

func (w *watchStream) recvLoop() error {
	for {
		req, err := w.stream.Recv()
		if err != nil {
			return err
		}
		if id := req.GetNodeId(); id != "" && id != w.node.ID {
			return status.Errorf(codes.InvalidArgument, "node_id: %q differs from the stream's %q", id, w.node.ID)
		}
		subs, err := normalizeSubscriptions(req.GetSubscriptions())
		if err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
		w.mu.Lock()
		changed := !slices.Equal(subs, w.subs)
		if changed {
			w.subs = subs
		}
		answered := false
		if exp := req.GetCertNotAfter(); exp > 0 {
			w.st.CertExpiry = time.Unix(exp, 0).UTC()
		}
		// Every message carries the proxy's status; one without a nonce
		// (status-only, or a resubscription) answers no snapshot.
		w.st.ConcurrencyLimit, w.st.ConcurrencyShed = req.GetConcurrencyLimit(), req.GetConcurrencyShed()
		rotated := w.recordFingerprintsLocked(req)
		resend := false
		if nonce := req.GetNonce(); nonce != "" && nonce == w.sentNonce {
			resend = w.answerLocked(req)
			answered = true
		}
		w.mu.Unlock()
		if answered || rotated {
			w.s.notifyStatus()
		}
		if changed || resend {
			poke(w.wake)
		}
	}
}

// recordFingerprintsLocked keeps the CA-rotation fingerprints a message
// carries and reports whether they changed.
func (w *watchStream) recordFingerprintsLocked(req *meshv1.WatchRequest) bool {
	changed := false
	if fp := req.GetCertIssuerFingerprint(); len(fp) > 0 && hex.EncodeToString(fp) != w.st.CertIssuer {
		w.st.CertIssuer, changed = hex.EncodeToString(fp), true
	}
	if fp := req.GetTrustBundleFingerprint(); len(fp) > 0 && hex.EncodeToString(fp) != w.st.TrustBundle {
		w.st.TrustBundle, changed = hex.EncodeToString(fp), true
	}
	return changed
}

// answerLocked records an ACK or NACK of the last snapshot sent; answers to
// older nonces were already overtaken and are ignored by the caller. It
// reports whether the send loop must resend in full at once: the proxy
// could not merge a delta (it lacks the base).
func (w *watchStream) answerLocked(req *meshv1.WatchRequest) (resend bool) {
	if msg := req.GetError(); msg != "" {
		// baseAcked stays false (cleared at the send): the next snapshot
		// is full either way.
		if w.sentIncr && strings.HasPrefix(msg, DeltaRefusal) {
			// Forget the version so the same content goes out whole.
			w.sentVer, w.base, resend = "", nil, true
		}
		w.s.nacks.Add(1)
		w.s.o.Metrics.SnapshotNacked()
		// Revision stays: the proxy runs what it ran before.
		w.st.State = StateNacked
		w.st.Error = msg
		w.s.log.Warn("proxy refused snapshot (NACK); it keeps its last good config",
			"node", w.node.ID, "version", req.GetVersion(), "incremental", w.sentIncr, "error", msg)
		return resend
	}
	w.baseAcked = true
	now := time.Now()
	w.s.acks.Add(1)
	w.s.o.Metrics.SnapshotAcked(now.Sub(w.sentAt))
	w.st.State = StateSynced
	w.st.AckedVersion = req.GetVersion()
	w.st.Revision = max(w.st.Revision, w.sentRev)
	w.st.Error = ""
	w.st.LastAck = now
	return false
}

// unchangedLocked records a compile at rev that yielded the version last
// sent: that snapshot is current at rev too, so a proxy that ACKed it is
// now at rev without a push. It reports whether the status changed.
func (w *watchStream) unchangedLocked(rev int64) bool {
	if rev <= w.sentRev {
		return false
	}
	w.sentRev = rev
	w.st.SentRevision = rev
	if w.st.State == StateSynced {
		w.st.Revision = max(w.st.Revision, rev)
	}
	return true
}

func (w *watchStream) sendLoop(ctx context.Context, inputs <-chan struct{}) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.wake:
		case <-inputs:
		}
		w.mu.Lock()
		n := w.node
		n.Subscriptions = w.subs
		w.mu.Unlock()
		snap, err := w.s.o.Snapshots.Snapshot(ctx, n)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			w.s.log.Warn("compile failed; proxy keeps its config", "node", n.ID, "err", err)
			w.mu.Lock()
			w.st.Error = "control plane: " + err.Error()
			w.mu.Unlock()
			continue
		}
		w.mu.Lock()
		if snap.GetVersion() == w.sentVer {
			changed := w.unchangedLocked(snap.GetRevision())
			w.mu.Unlock()
			if changed {
				w.s.notifyStatus()
			}
			continue
		}
		nonce := w.s.nextNonce()
		w.sentVer, w.sentNonce = snap.GetVersion(), nonce
		w.sentRev, w.sentAt = snap.GetRevision(), time.Now()
		w.st.SentVersion, w.st.SentRevision, w.st.State = snap.GetVersion(), snap.GetRevision(), StateStale
		out := w.nextSendLocked(snap)
		out.Nonce, out.Replica = nonce, w.s.o.Replica
		w.mu.Unlock()
		w.s.notifyStatus()

		t := time.AfterFunc(w.s.o.SendTimeout, w.stall)
		err = w.stream.Send(out)
		t.Stop()
		if err != nil {
			return err
		}
		w.s.pushes.Add(1)
		w.s.pushedBytes.Add(uint64(proto.Size(out)))
		if out.GetIncremental() {
			w.s.incrementals.Add(1)
		}
		w.s.o.Metrics.SnapshotPushed()
	}
}

// nextSendLocked is what goes out for snap: a delta onto the snapshot the
// proxy last ACKed when it asked for deltas and one is smaller, else the
// whole snapshot. Either is a copy the caller may set the nonce on. snap
// becomes the next delta's base once the proxy ACKs it.
func (w *watchStream) nextSendLocked(snap *meshv1.Snapshot) *meshv1.Snapshot {
	var out *meshv1.Snapshot
	if w.incremental && w.baseAcked && w.base != nil {
		out = diffSnapshot(w.base, snap)
	}
	w.sentIncr = out != nil
	if out == nil {
		out = shallowCopy(snap)
	}
	w.base, w.baseAcked = baseOf(snap), false
	return out
}

// openNodeStream is how every per-node stream (Quota, Report, Tap) starts:
// the control plane not shutting down, the caller's verified identity, its
// first message, and that message naming a registered node that is the
// caller (streamNode). A nil node with a nil error: the caller closed the
// stream before sending anything.
func openNodeStream[Req interface{ GetNodeId() string }](s *Server, stream interface {
	Context() context.Context
	Recv() (Req, error)
}) (*nodeInfo, Req, error) {
	var none Req
	select {
	case <-s.done:
		return nil, none, status.Error(codes.Unavailable, "control plane shutting down: reconnect")
	default:
	}
	p, err := s.peerOf(stream.Context())
	if err != nil {
		return nil, none, unauthenticated(err)
	}
	first, err := stream.Recv()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, none, nil
		}
		return nil, none, err
	}
	n, err := s.streamNode(stream.Context(), first.GetNodeId(), p)
	if err != nil {
		return nil, none, err
	}
	return n, first, nil
}

// streamNode is the registered node a stream's first message names, which
// must be the caller's own (Watch and Quota both check it). A node this
// server does not know is looked up in the registry (see adopt).
func (s *Server) streamNode(ctx context.Context, id string, p peerIdentity) (*nodeInfo, error) {
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "node_id: required on the first message")
	}
	s.mu.Lock()
	n := s.nodes[id]
	s.mu.Unlock()
	if n == nil {
		var err error
		if n, err = s.adopt(ctx, id, p); err != nil {
			return nil, err
		}
	}
	switch {
	case n == nil:
		return nil, status.Errorf(codes.FailedPrecondition, "node %q is not registered with this control plane: register first", id)
	case n.identity != p.id:
		return nil, status.Errorf(codes.PermissionDenied, "node %q is registered as %s, not %s", n.id, n.identity, p.id)
	}
	return n, nil
}

// adopt takes over a registration made through another replica (or before
// this one restarted): the proxy failed over and keeps its lease, which the
// registry shares. Only an endpoint in the caller's own namespace is
// looked up, and its identity must be the caller's. nil, nil: none.
func (s *Server) adopt(ctx context.Context, id string, p peerIdentity) (*nodeInfo, error) {
	lctx, cancel := context.WithTimeout(ctx, adoptTimeout)
	defer cancel()
	ep, lease, err := s.o.Registry.Lookup(lctx, p.ns, id)
	switch {
	case errors.Is(err, ErrLeaseNotFound):
		return nil, nil
	case err != nil:
		return nil, status.Errorf(codes.Unavailable, "push: node %q: registry: %v", id, err)
	case ep.GetIdentity() != p.id.String():
		return nil, status.Errorf(codes.PermissionDenied, "node %q is registered as %s, not %s", id, ep.GetIdentity(), p.id)
	}
	// ttl 0: another replica granted the lease and knows its TTL; this
	// one answers heart-beats without one.
	n := &nodeInfo{id: id, service: ep.GetService(), namespace: ep.GetNamespace(), identity: p.id,
		lease: lease, lastSeen: time.Now()}
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur := s.nodes[id]; cur != nil {
		return cur, nil // registered here meanwhile
	}
	s.nodes[id], s.leases[lease] = n, n
	s.log.Info("adopted a node registered through another replica", "node", id, "lease", lease)
	return n, nil
}

// adoptTimeout bounds the registry lookup of a failing-over proxy.
const adoptTimeout = 5 * time.Second
