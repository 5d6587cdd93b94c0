// Package view is the control plane's one mesh view: every resource
// (decoded, defaulted and validated config.Objects) and every registered
// endpoint, in memory, following the store.
//
// A View lists the store, then watches it from the listed revision, applying
// each revision's batch of events at once, so a reader never sees half of a
// transaction. When the watch closes (a slow watcher, a compacted revision, a
// store restart) it lists again; store errors are retried.
//
// Readers never lock the view. State returns an immutable State: one
// revision's resources and endpoints, shared by every reader that loads it
// and never modified afterwards (a new revision is a new State). A reader
// loads a State once and uses it to the end of its work, as a proxy request
// uses one config snapshot:
//
//	st := v.State()          // or: st, err := v.WaitFor(ctx, rev)
//	for _, r := range st.Resources() { ... r.Object ... }
//	for _, ep := range st.Endpoints() { ... }
//
// Subscribe tells a reader that a new State is there (buffer 1, latest wins;
// readers debounce if they want to). A state whose Generation equals the
// previous one moved the revision only (a write outside the mesh view): a
// reader can skip rebuilding, yet still learn the view is current at it. WaitFor blocks until the view has caught
// up with a store revision, e.g. the one an apply returned.
//
// The compiler is such a reader; the DNS server and the xDS adapter read the
// same view the same way (load a State per query or per push, subscribe to
// rebuild their own indexes) and never list the store themselves.
package view

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/config"
	"trellis.dev/trellis/internal/registry"
	"trellis.dev/trellis/internal/store"
)

// Source is what the view needs of the store.
type Source interface {
	List(ctx context.Context, prefix string) ([]store.KV, int64, error)
	Watch(ctx context.Context, prefix string, fromRev int64) (<-chan []store.Event, error)
}

// watchPrefix is the common prefix of resources and endpoints: one List and
// one Watch over both, so the view moves one store revision at a time and
// its revision means the same for both. Other keys under it are skipped.
const watchPrefix = "/"

// Options configure a View.
type Options struct {
	// RetryInterval is the wait before listing again after a store error.
	// Default 500ms.
	RetryInterval time.Duration
	// Logger receives skipped records (warn) and store errors. Nil discards.
	Logger *slog.Logger
}

// View follows the store. Run feeds it; every other method is safe for
// concurrent use.
type View struct {
	src  Source
	opts Options
	log  *slog.Logger

	state atomic.Pointer[State]
	ready chan struct{} // closed after the first full listing

	mu      sync.Mutex
	subs    map[uint64]chan struct{}
	nextSub uint64
	moved   chan struct{} // closed (and replaced) whenever the revision moves
}

// New returns a view of src. It is empty, at revision 0, until Run has
// listed the store once (Ready).
func New(src Source, o Options) *View {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.RetryInterval <= 0 {
		o.RetryInterval = 500 * time.Millisecond
	}
	v := &View{
		src:   src,
		opts:  o,
		log:   o.Logger.With("component", "view"),
		ready: make(chan struct{}),
		subs:  map[uint64]chan struct{}{},
		moved: make(chan struct{}),
	}
	v.state.Store(emptyState())
	return v
}

// Run follows the store until ctx ends: List, then Watch from the listed
// revision; on a closed watch it lists again, on a store error it waits
// RetryInterval first. It always returns ctx's error.
func (v *View) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		kvs, rev, err := v.src.List(ctx, watchPrefix)
		if err != nil {
			v.retry(ctx, "list", err)
			continue
		}
		v.reset(kvs, rev)
		events, err := v.src.Watch(ctx, watchPrefix, rev+1)
		if err != nil {
			v.retry(ctx, "watch", err)
			continue
		}
		for batch := range events {
			v.apply(batch)
		}
		if ctx.Err() == nil {
			v.log.Debug("watch closed, listing again", "revision", v.Revision())
		}
	}
	return ctx.Err()
}

func (v *View) retry(ctx context.Context, what string, err error) {
	if ctx.Err() != nil || errors.Is(err, context.Canceled) {
		return
	}
	v.log.Warn("store "+what+" failed, retrying", "err", err, "in", v.opts.RetryInterval)
	t := time.NewTimer(v.opts.RetryInterval)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// Ready is closed once the view holds a full listing of the store.
func (v *View) Ready() <-chan struct{} { return v.ready }

// State is the current state. It is never nil (empty at revision 0 before
// the first listing) and never changes; later revisions are new States.
func (v *View) State() *State { return v.state.Load() }

// Revision is the store revision the view reflects.
func (v *View) Revision() int64 { return v.State().revision }

// WaitFor blocks until the view reflects revision rev or later, and returns
// that state. A revision that wrote nothing under the view's prefix is
// passed at the next one that does.
func (v *View) WaitFor(ctx context.Context, rev int64) (*State, error) {
	for {
		v.mu.Lock()
		moved := v.moved
		v.mu.Unlock()
		if st := v.State(); st.revision >= rev {
			return st, nil
		}
		select {
		case <-moved:
		case <-ctx.Done():
			return nil, fmt.Errorf("view: wait for revision %d (at %d): %w", rev, v.Revision(), ctx.Err())
		}
	}
}

// Subscribe returns a channel that receives (buffer 1, never blocking the
// view) whenever the view moved to a new state, and a cancel func.
func (v *View) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	v.mu.Lock()
	id := v.nextSub
	v.nextSub++
	v.subs[id] = ch
	v.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			v.mu.Lock()
			delete(v.subs, id)
			v.mu.Unlock()
		})
	}
}

// reset replaces the state with a full listing.
func (v *View) reset(kvs []store.KV, rev int64) {
	st := &State{revision: rev, generation: v.State().generation + 1,
		resources: map[string]Resource{}, endpoints: map[string]*meshv1.Endpoint{}}
	for _, kv := range kvs {
		v.put(st, kv)
	}
	v.publish(st)
	select {
	case <-v.ready:
	default:
		close(v.ready)
	}
}

// apply makes one revision's batch the next state. Only the maps the batch
// touches are copied; the rest is shared with the previous state.
func (v *View) apply(batch []store.Event) {
	prev := v.State()
	st := &State{revision: batch[0].KV.ModRevision, generation: prev.generation,
		resources: prev.resources, endpoints: prev.endpoints}
	var resCopied, epCopied bool
	for _, ev := range batch {
		key := ev.KV.Key
		switch {
		case strings.HasPrefix(key, config.ResourcePrefix):
			if !resCopied {
				st.resources, resCopied = maps.Clone(prev.resources), true
			}
		case strings.HasPrefix(key, registry.EndpointPrefix):
			if !epCopied {
				st.endpoints, epCopied = maps.Clone(prev.endpoints), true
			}
		default:
			continue // not part of the mesh view (CA, fences, ...)
		}
		if ev.Type == store.EventDelete {
			// Only the map just cloned holds key: the other may be shared.
			if strings.HasPrefix(key, config.ResourcePrefix) {
				delete(st.resources, key)
			} else {
				delete(st.endpoints, key)
			}
			continue
		}
		v.put(st, ev.KV)
	}
	if resCopied || epCopied {
		st.generation++
	}
	v.publish(st)
}

// put decodes kv into st (being built, not yet published). A record that
// does not decode is left out, with a warning: the view holds only what the
// compiler can use.
func (v *View) put(st *State, kv store.KV) {
	switch {
	case strings.HasPrefix(kv.Key, config.ResourcePrefix):
		delete(st.resources, kv.Key)
		ref, err := config.ParseStoreKey(kv.Key)
		if err != nil {
			v.log.Warn("skipping resource with bad key", "key", kv.Key, "err", err)
			return
		}
		obj, err := config.DecodeStored(ref.Kind, kv.Value)
		if err != nil {
			v.log.Warn("skipping undecodable resource", "key", kv.Key, "err", err)
			return
		}
		st.resources[kv.Key] = Resource{Object: obj, Key: kv.Key, CreateRevision: kv.CreateRevision, ModRevision: kv.ModRevision}
	case strings.HasPrefix(kv.Key, registry.EndpointPrefix):
		delete(st.endpoints, kv.Key)
		ep, err := registry.Decode(kv.Value)
		if err != nil {
			v.log.Warn("skipping undecodable endpoint", "key", kv.Key, "err", err)
			return
		}
		st.endpoints[kv.Key] = ep
	}
}

// publish makes st current, wakes WaitFor callers and notifies subscribers.
func (v *View) publish(st *State) {
	v.state.Store(st)
	v.mu.Lock()
	defer v.mu.Unlock()
	close(v.moved)
	v.moved = make(chan struct{})
	for _, ch := range v.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// Resource is one stored resource.
type Resource struct {
	// Object is decoded, defaulted and valid. It is shared: never modify it.
	Object config.Object
	// Key is the store key.
	Key string
	// CreateRevision orders resources by creation where timestamps tie
	// (Gateway API route precedence).
	CreateRevision int64
	ModRevision    int64
}

// State is the mesh at one store revision. It is immutable, and so is
// everything it returns: share it, never modify it.
type State struct {
	revision   int64
	generation uint64
	resources  map[string]Resource         // by store key
	endpoints  map[string]*meshv1.Endpoint // by store key

	sortOnce  sync.Once
	sortedRes []Resource
	sortedEps []*meshv1.Endpoint
}

func emptyState() *State {
	return &State{resources: map[string]Resource{}, endpoints: map[string]*meshv1.Endpoint{}}
}

// Revision is the store revision this state reflects.
func (s *State) Revision() int64 { return s.revision }

// Generation changes whenever the resources or endpoints do. Two states of
// one view with the same generation hold the same content, whatever their
// revisions: a reader's index built from one serves the other.
func (s *State) Generation() uint64 { return s.generation }

// Resources returns every resource, in store key order (by kind, namespace,
// name).
func (s *State) Resources() []Resource {
	s.sort()
	return s.sortedRes
}

// Resource returns the resource ref names.
func (s *State) Resource(ref config.Ref) (Resource, bool) {
	r, ok := s.resources[config.StoreKey(ref)]
	return r, ok
}

// Endpoints returns every registered endpoint, in store key order (by
// namespace, service, id).
func (s *State) Endpoints() []*meshv1.Endpoint {
	s.sort()
	return s.sortedEps
}

// sort builds the ordered lists on first use: many states are never read
// whole (a burst of registrations between two compiles).
func (s *State) sort() {
	s.sortOnce.Do(func() {
		for _, k := range slices.Sorted(maps.Keys(s.resources)) {
			s.sortedRes = append(s.sortedRes, s.resources[k])
		}
		for _, k := range slices.Sorted(maps.Keys(s.endpoints)) {
			s.sortedEps = append(s.sortedEps, s.endpoints[k])
		}
	})
}
