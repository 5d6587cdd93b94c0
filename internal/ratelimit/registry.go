package ratelimit

import (
	"slices"
	"sort"
	"sync"
	"sync/atomic"
)

// Registry holds a proxy's running policies across configuration changes,
// by key (where the policy applies: inbound, or a route), so a policy
// unchanged by a new snapshot keeps its buckets; and it holds the shares of
// the global ones: granted by the control plane, or the safe local share
// (the limit divided by the replicas) when there is no grant.
type Registry struct {
	clock func() int64

	mu       sync.Mutex
	entries  map[string]*Entry
	replicas int
}

// Entry is one running policy at one place. Decide is its hot path.
type Entry struct {
	key     string
	spec    Spec
	global  bool
	policy  *Policy
	offered atomic.Int64
	granted bool // under Registry.mu: its share is the control plane's
}

// NewRegistry returns an empty registry reading clock (monotonic
// nanoseconds, the proxy's) when shares change.
func NewRegistry(clock func() int64) *Registry {
	return &Registry{clock: clock, entries: map[string]*Entry{}, replicas: 1}
}

// Bind returns the entry of key running spec: the existing one when its
// spec and mode are unchanged (buckets kept), else a new one with full
// buckets and, if global, the safe local share.
func (r *Registry) Bind(key string, spec Spec, global bool) *Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.entries[key]; e != nil && e.global == global && e.spec.equal(spec) {
		return e
	}
	e := &Entry{key: key, spec: spec, global: global, policy: NewPolicy(spec)}
	if global {
		e.policy.SetShare(1/float64(r.replicas), r.clock())
	}
	r.entries[key] = e
	return e
}

// Keep makes live (by key) the registry's entries: those the live
// configuration runs. Others are dropped, and an entry a refused
// configuration bound in the meantime is replaced by the live one.
func (r *Registry) Keep(live map[string]*Entry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	clear(r.entries)
	for k, e := range live {
		r.entries[k] = e
	}
}

// SetReplicas sets how many replicas share each global limit when there is
// no grant (the proxy's service's endpoints in its last snapshot; at least
// 1) and re-applies that share to the global entries without one.
func (r *Registry) SetReplicas(n int) {
	n = max(n, 1)
	r.mu.Lock()
	defer r.mu.Unlock()
	if n == r.replicas {
		return
	}
	r.replicas = n
	now := r.clock()
	for _, e := range r.entries {
		if e.global && !e.granted {
			e.policy.SetShare(1/float64(n), now)
		}
	}
}

// Demand is one global entry's report: its key, whole limit, and the
// requests offered to it so far (a counter: the reporter takes rates).
type Demand struct {
	Key     string
	Limit   Limit
	Offered int64
	// Replicas is what the safe local share divides the limit by.
	Replicas int
}

// Demands lists the global entries, sorted by key.
func (r *Registry) Demands() []Demand {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Demand
	for _, e := range r.entries {
		if e.global {
			out = append(out, Demand{Key: e.key, Limit: e.spec.Limit, Offered: e.offered.Load(), Replicas: r.replicas})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

// Grant applies the control plane's shares by key. A global entry the
// grant does not name falls back to the safe local share.
func (r *Registry) Grant(shares map[string]float64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.clock()
	for k, e := range r.entries {
		if !e.global {
			continue
		}
		if s, ok := shares[k]; ok && s > 0 {
			e.policy.SetShare(s, now)
			e.granted = true
		} else {
			e.policy.SetShare(1/float64(r.replicas), now)
			e.granted = false
		}
	}
}

// Degrade puts every global entry back on the safe local share: the quota
// stream is down.
func (r *Registry) Degrade() { r.Grant(nil) }

// Key is where the entry applies.
func (e *Entry) Key() string { return e.key }

// Policy is the entry's running policy.
func (e *Entry) Policy() *Policy { return e.policy }

// Decide counts the request as offered and decides it (see Policy.Decide).
func (e *Entry) Decide(identity, key string, now int64) Decision {
	e.offered.Add(1)
	return e.policy.Decide(identity, key, now)
}

func (s Spec) equal(o Spec) bool {
	return s.Algorithm == o.Algorithm && s.Limit == o.Limit && s.Scope == o.Scope && s.MaxKeys == o.MaxKeys &&
		slices.EqualFunc(s.Overrides, o.Overrides, func(a, b Override) bool {
			return a.Limit == b.Limit && slices.Equal(a.Identities, b.Identities)
		})
}
