// Package compiler turns the registry (endpoints) and the resources (Services,
// HTTPRoutes) into per-proxy snapshots. It keeps an in-memory view of both,
// fed by store List + Watch, and compiles for each proxy only what that proxy
// needs: its own service's inbound ports, and the routes and endpoints of the
// services it subscribed to plus every service their routes send to.
package compiler

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/config"
	"trellis.dev/trellis/internal/registry"
	"trellis.dev/trellis/internal/store"
)

// Source is what the compiler needs of the store.
type Source interface {
	List(ctx context.Context, prefix string) ([]store.KV, int64, error)
	Watch(ctx context.Context, prefix string, fromRev int64) (<-chan []store.Event, error)
}

// Options configure a Compiler.
type Options struct {
	// TrustDomain and Domain are copied into every snapshot.
	TrustDomain string
	Domain      string
	// Bundle returns the current trust bundle (DER roots). It is read on
	// every snapshot, so a rotated bundle shows up at the next Notify.
	Bundle func() [][]byte
	// Debounce coalesces bursts of store events into one notification.
	// Default 10ms; kept small because a change must reach proxies fast.
	Debounce time.Duration
	// RetryInterval is the wait before re-listing after a store error. Default 500ms.
	RetryInterval time.Duration
	Logger        *slog.Logger
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

// Compiler keeps the view and compiles snapshots. It implements the push
// server's snapshot source (Snapshot + Subscribe).
type Compiler struct {
	src  Source
	opts Options
	log  *slog.Logger

	mu        sync.Mutex
	resources map[string]resource         // by store key
	endpoints map[string]*meshv1.Endpoint // by store key
	loaded    map[string]bool             // prefix → listed at least once
	idx       *index                      // nil when the view changed since it was built
	ready     chan struct{}               // closed once every prefix was listed
	subs      map[uint64]chan struct{}    // notification channels
	nextSub   uint64
	kick      chan struct{}
	bundleFn  func() [][]byte
}

type resource struct {
	obj       config.Object
	createRev int64
}

// New returns a compiler reading src. Call Run to feed it.
func New(src Source, o Options) *Compiler {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Debounce <= 0 {
		o.Debounce = 10 * time.Millisecond
	}
	if o.RetryInterval <= 0 {
		o.RetryInterval = 500 * time.Millisecond
	}
	bundle := o.Bundle
	if bundle == nil {
		bundle = func() [][]byte { return nil }
	}
	return &Compiler{
		src:       src,
		opts:      o,
		log:       o.Logger.With("component", "compiler"),
		resources: map[string]resource{},
		endpoints: map[string]*meshv1.Endpoint{},
		loaded:    map[string]bool{},
		ready:     make(chan struct{}),
		subs:      map[uint64]chan struct{}{},
		kick:      make(chan struct{}, 1),
		bundleFn:  bundle,
	}
}

// Run follows the store until ctx ends. It always returns ctx's error.
func (c *Compiler) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, prefix := range []string{config.ResourcePrefix, registry.EndpointPrefix} {
		wg.Go(func() { c.follow(ctx, prefix) })
	}
	wg.Go(func() { c.notifier(ctx) })
	wg.Wait()
	return ctx.Err()
}

// Ready is closed once the view holds a full listing of the store.
func (c *Compiler) Ready() <-chan struct{} { return c.ready }

// Notify tells subscribers to recompile, e.g. after the trust bundle changed.
func (c *Compiler) Notify() {
	c.mu.Lock()
	c.idx = nil
	c.mu.Unlock()
	c.poke()
}

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
		// Changes poked during the wait are already in the view.
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

// follow keeps the view of one prefix current: List, then Watch from the
// listed revision; on a closed watch (slow, compacted, store restarted) it
// lists again.
func (c *Compiler) follow(ctx context.Context, prefix string) {
	for ctx.Err() == nil {
		kvs, rev, err := c.src.List(ctx, prefix)
		if err != nil {
			c.retry(ctx, "list", prefix, err)
			continue
		}
		c.reset(prefix, kvs)
		events, err := c.src.Watch(ctx, prefix, rev+1)
		if err != nil {
			c.retry(ctx, "watch", prefix, err)
			continue
		}
		for batch := range events {
			c.apply(batch)
		}
		if ctx.Err() == nil {
			c.log.Debug("watch closed, listing again", "prefix", prefix)
		}
	}
}

func (c *Compiler) retry(ctx context.Context, what, prefix string, err error) {
	if ctx.Err() != nil || errors.Is(err, context.Canceled) {
		return
	}
	c.log.Warn("store "+what+" failed, retrying", "prefix", prefix, "err", err)
	t := time.NewTimer(c.opts.RetryInterval)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func (c *Compiler) reset(prefix string, kvs []store.KV) {
	c.mu.Lock()
	if prefix == config.ResourcePrefix {
		c.resources = map[string]resource{}
	} else {
		c.endpoints = map[string]*meshv1.Endpoint{}
	}
	for _, kv := range kvs {
		c.putLocked(kv)
	}
	c.loaded[prefix] = true
	c.idx = nil
	first := len(c.loaded) == 2
	c.mu.Unlock()
	if first {
		select {
		case <-c.ready:
		default:
			close(c.ready)
		}
	}
	c.poke()
}

func (c *Compiler) apply(batch []store.Event) {
	c.mu.Lock()
	for _, ev := range batch {
		switch ev.Type {
		case store.EventPut:
			c.putLocked(ev.KV)
		case store.EventDelete:
			delete(c.resources, ev.KV.Key)
			delete(c.endpoints, ev.KV.Key)
		}
	}
	c.idx = nil
	c.mu.Unlock()
	c.poke()
}

func (c *Compiler) putLocked(kv store.KV) {
	switch {
	case strings.HasPrefix(kv.Key, config.ResourcePrefix):
		ref, err := config.ParseStoreKey(kv.Key)
		if err != nil {
			c.log.Warn("skipping resource with bad key", "key", kv.Key, "err", err)
			return
		}
		obj, err := config.DecodeStored(ref.Kind, kv.Value)
		if err != nil {
			c.log.Warn("skipping undecodable resource", "key", kv.Key, "err", err)
			delete(c.resources, kv.Key)
			return
		}
		c.resources[kv.Key] = resource{obj: obj, createRev: kv.CreateRevision}
	case strings.HasPrefix(kv.Key, registry.EndpointPrefix):
		ep, err := registry.Decode(kv.Value)
		if err != nil {
			c.log.Warn("skipping undecodable endpoint", "key", kv.Key, "err", err)
			delete(c.endpoints, kv.Key)
			return
		}
		c.endpoints[kv.Key] = ep
	}
}

// Snapshot compiles the snapshot of node n. It waits for the first full
// listing of the store, so a proxy never gets an empty snapshot at startup.
// The Services and Endpoints inside the result are shared with other
// snapshots and must not be modified; the top-level message is the caller's.
func (c *Compiler) Snapshot(ctx context.Context, n Node) (*meshv1.Snapshot, error) {
	if n.Service == "" || n.Namespace == "" {
		return nil, fmt.Errorf("compiler: snapshot for node %q: service and namespace required", n.ID)
	}
	select {
	case <-c.ready:
	case <-ctx.Done():
		return nil, fmt.Errorf("compiler: snapshot for node %q: %w", n.ID, ctx.Err())
	}
	bundle := c.bundleFn()

	c.mu.Lock()
	if c.idx == nil {
		c.idx = c.buildIndex()
	}
	idx := c.idx
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
		Services:    make([]*meshv1.Service, 0, len(services)),
	}
	for _, cs := range services {
		h.Write(cs.hash[:])
		snap.Services = append(snap.Services, cs.svc)
	}
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

// parseSubscription accepts "name", "name.namespace" and
// "name.namespace.svc.<domain>"; name and namespace must be DNS labels.
func (c *Compiler) parseSubscription(s, defaultNS string) (svcKey, bool) {
	s = strings.TrimSuffix(s, ".")
	if c.opts.Domain != "" {
		s = strings.TrimSuffix(s, ".svc."+c.opts.Domain)
	}
	parts := strings.Split(s, ".")
	switch {
	case len(parts) == 1 && isLabel(parts[0]):
		return svcKey{ns: defaultNS, name: parts[0]}, true
	case len(parts) == 2 && isLabel(parts[0]) && isLabel(parts[1]):
		return svcKey{ns: parts[1], name: parts[0]}, true
	}
	return svcKey{}, false
}

// isLabel reports whether s is an RFC 1123 DNS label (what names and
// namespaces are).
func isLabel(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		if !(b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '-') {
			return false
		}
	}
	return true
}
