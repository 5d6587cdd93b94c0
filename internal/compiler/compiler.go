// Package compiler turns the mesh view (internal/view: endpoints and
// resources) into per-proxy snapshots. It compiles for each proxy only what
// that proxy needs: its own service's inbound ports, and the routes and
// endpoints of the services it subscribed to plus every service their routes
// send to. What a resource contributes is the resource kind's own hook
// (config.Declarer, config.Attacher); the compiler knows no kind by type.
package compiler

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/meshname"
	"trellis.dev/trellis/internal/view"
)

// View is what the compiler needs of the mesh view.
type View interface {
	Ready() <-chan struct{}
	State() *view.State
	Subscribe() (<-chan struct{}, func())
}

// Options configure a Compiler.
type Options struct {
	// TrustDomain and Domain are copied into every snapshot.
	TrustDomain string
	Domain      string
	// Bundle returns the current trust bundle (DER roots). It is read on
	// every snapshot, so a rotated bundle shows up at the next Notify.
	Bundle func() [][]byte
	// Debounce coalesces bursts of view changes into one notification.
	// Default 10ms; kept small because a change must reach proxies fast.
	Debounce time.Duration
	Logger   *slog.Logger
	// DefaultAuthorization decides requests to a workload no ALLOW
	// AuthorizationPolicy applies to; the zero value allows.
	DefaultAuthorization meshv1.AuthzAction
}

// Node is the proxy a snapshot is compiled for.
type Node struct {
	ID        string
	Service   string
	Namespace string
	// Subscriptions name services as "name.namespace" (also accepted:
	// "name", meaning the node's namespace, and "name.namespace.svc.<domain>").
	Subscriptions []string
}

// Compiler compiles snapshots from view states. It implements the push
// server's snapshot source (Snapshot + Subscribe).
type Compiler struct {
	v    View
	opts Options
	log  *slog.Logger

	mu       sync.Mutex
	idx      *index      // compiled from idxState; services cached inside
	idxState *view.State // the state idx was built from
	subs     map[uint64]chan struct{}
	nextSub  uint64
	kick     chan struct{}
	bundleFn func() [][]byte
}

// New returns a compiler reading v. Call Run to relay v's changes to
// subscribers.
func New(v View, o Options) *Compiler {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Debounce <= 0 {
		o.Debounce = 10 * time.Millisecond
	}
	bundle := o.Bundle
	if bundle == nil {
		bundle = func() [][]byte { return nil }
	}
	return &Compiler{
		v:        v,
		opts:     o,
		log:      o.Logger.With("component", "compiler"),
		subs:     map[uint64]chan struct{}{},
		kick:     make(chan struct{}, 1),
		bundleFn: bundle,
	}
}

// Run relays the view's changes, debounced, to subscribers until ctx ends.
// It always returns ctx's error.
func (c *Compiler) Run(ctx context.Context) error {
	changes, cancel := c.v.Subscribe()
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-changes:
				c.poke()
			}
		}
	})
	wg.Go(func() { c.notifier(ctx) })
	wg.Wait()
	return ctx.Err()
}

// Notify tells subscribers to recompile, e.g. after the trust bundle
// changed (the bundle is read per snapshot, so no cache needs dropping).
func (c *Compiler) Notify() { c.poke() }

// Subscribe returns a channel that receives (buffer 1, never blocking the
// compiler) whenever snapshots may have changed, and a cancel func.
func (c *Compiler) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	c.mu.Lock()
	id := c.nextSub
	c.nextSub++
	c.subs[id] = ch
	c.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			c.mu.Lock()
			delete(c.subs, id)
			c.mu.Unlock()
		})
	}
}

func (c *Compiler) poke() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// notifier turns pokes into debounced notifications.
func (c *Compiler) notifier(ctx context.Context) {
	t := time.NewTimer(0)
	<-t.C
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.kick:
		}
		t.Reset(c.opts.Debounce)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		// Changes poked during the wait are in the view's current state.
		select {
		case <-c.kick:
		default:
		}
		c.mu.Lock()
		for _, ch := range c.subs {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
		c.mu.Unlock()
	}
}

// Snapshot compiles the snapshot of node n from the view's current state,
// and carries that state's revision. It waits for the view's first full
// listing of the store, so a proxy never gets an empty snapshot at startup.
// The Services and Endpoints inside the result are shared with other
// snapshots and must not be modified; the top-level message is the caller's.
func (c *Compiler) Snapshot(ctx context.Context, n Node) (*meshv1.Snapshot, error) {
	if n.Service == "" || n.Namespace == "" {
		return nil, fmt.Errorf("compiler: snapshot for node %q: service and namespace required", n.ID)
	}
	select {
	case <-c.v.Ready():
	case <-ctx.Done():
		return nil, fmt.Errorf("compiler: snapshot for node %q: %w", n.ID, ctx.Err())
	}
	bundle := c.bundleFn()

	c.mu.Lock()
	// Concurrent callers may load states out of order; never go back. A
	// newer state with the same content keeps the index (and its cached
	// services) and only moves the revision snapshots carry.
	if st := c.v.State(); c.idxState == nil || st.Revision() > c.idxState.Revision() {
		if c.idxState == nil || st.Generation() != c.idxState.Generation() {
			c.idx = buildIndex(st, c.log, c.opts.DefaultAuthorization)
		}
		c.idxState = st
	}
	idx, st := c.idx, c.idxState
	own := svcKey{ns: n.Namespace, name: n.Service}
	inbound := idx.inbound(own)
	// Breadth-first over route backends: subscriptions, then what they route to.
	seen := map[svcKey]bool{own: true}
	queue := []svcKey{own}
	for _, s := range n.Subscriptions {
		k, ok := c.parseSubscription(s, n.Namespace)
		if !ok {
			c.log.Debug("ignoring malformed subscription", "node", n.ID, "subscription", s)
			continue
		}
		if !seen[k] {
			seen[k] = true
			queue = append(queue, k)
		}
	}
	var services []*compiled
	for len(queue) > 0 {
		k := queue[0]
		queue = queue[1:]
		cs := idx.service(k)
		services = append(services, cs)
		for _, d := range cs.deps {
			if !seen[d] {
				seen[d] = true
				queue = append(queue, d)
			}
		}
	}
	c.mu.Unlock()

	sort.Slice(services, func(i, j int) bool { return services[i].key.less(services[j].key) })
	h := sha256.New()
	writeField(h, c.opts.TrustDomain)
	writeField(h, c.opts.Domain)
	for _, b := range bundle {
		writeField(h, string(b))
	}
	h.Write(inbound.hash[:])
	snap := &meshv1.Snapshot{
		TrustDomain: c.opts.TrustDomain,
		Domain:      c.opts.Domain,
		TrustBundle: bundle,
		Inbound:     inbound.svc,
		// Policies sort by namespace/name as the Refs they came from.
		InboundPolicy: inbound.policy,
		Services:      make([]*meshv1.Service, 0, len(services)),
		// Not hashed into Version: a change elsewhere in the mesh moves
		// the revision but must not resend an unchanged snapshot.
		Revision: st.Revision(),
	}
	for _, cs := range services {
		h.Write(cs.hash[:])
		snap.Services = append(snap.Services, cs.svc)
	}
	idx.contributeProxy(snap, own, h)
	idx.contributeEgress(snap, h)
	snap.Version = hex.EncodeToString(h.Sum(nil)[:12])
	return snap, nil
}

type hashWriter interface{ Write([]byte) (int, error) }

// writeField writes a length-prefixed field so that adjacent fields cannot
// run into each other.
func writeField(h hashWriter, s string) {
	var n [8]byte
	l := len(s)
	for i := range n {
		n[i] = byte(l >> (8 * i))
	}
	h.Write(n[:])
	h.Write([]byte(s))
}

// parseSubscription accepts the host forms meshname.ParseHost does:
// "name" (in defaultNS), "name.namespace", "name.namespace.svc" and
// "name.namespace.svc.<domain>".
func (c *Compiler) parseSubscription(s, defaultNS string) (svcKey, bool) {
	domain := c.opts.Domain
	if domain == "" {
		domain = meshname.DefaultDomain
	}
	name, ns, ok := meshname.ParseHost(s, defaultNS, domain)
	if !ok {
		return svcKey{}, false
	}
	return svcKey{ns: ns, name: name}, true
}
