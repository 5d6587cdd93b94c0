// Package quota shares global rate limits between the proxies enforcing
// them. The control plane runs an Allocator behind the Mesh service's
// Quota stream; each proxy runs a Client that reports the rate offered to
// each of its global policies and applies the share it is granted.
package quota

import (
	"sort"
	"sync"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// Defaults of AllocatorOptions.
const (
	// DefaultFloor is the part of an even share every replica keeps
	// whatever its demand, so a replica that has been quiet can admit its
	// first requests, and report them, before it is granted more.
	DefaultFloor = 0.1
	// DefaultTTL drops a replica that has not reported for this long (it
	// stopped, or its stream is stuck) from its groups.
	DefaultTTL = 3 * time.Second
)

// AllocatorOptions configure an Allocator.
type AllocatorOptions struct {
	// Floor, in [0, 1): each of n replicas gets at least Floor/n of the
	// limit; the rest is shared in proportion to demand. Default
	// DefaultFloor.
	Floor float64
	// TTL: default DefaultTTL.
	TTL time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Allocator grants each replica of a global limit a share proportional to
// the rate offered to it. Replicas share a limit when they report the same
// policy key with the same limit (during a rollout of a changed limit, the
// old and the new are shared apart).
type Allocator struct {
	o AllocatorOptions

	mu     sync.Mutex
	groups map[groupKey]map[string]*member // by member (one quota stream)
}

type groupKey struct {
	policy   string
	requests uint64
	period   time.Duration
}

type member struct {
	rate float64
	seen time.Time
	// expects is how many replicas this one falls back on sharing with.
	expects int
}

// NewAllocator returns an allocator with no replicas.
func NewAllocator(o AllocatorOptions) *Allocator {
	if o.Floor <= 0 || o.Floor >= 1 {
		o.Floor = DefaultFloor
	}
	if o.TTL <= 0 {
		o.TTL = DefaultTTL
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Allocator{o: o, groups: map[groupKey]map[string]*member{}}
}

// Report records the demands of one replica (id: its quota stream) and
// returns its share of each policy.
func (a *Allocator) Report(id string, demands []*meshv1.QuotaDemand) *meshv1.QuotaGrant {
	now := a.o.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.expireLocked(now)
	out := &meshv1.QuotaGrant{}
	reported := map[groupKey]bool{}
	for _, d := range demands {
		k := groupKey{policy: d.GetPolicy(), requests: d.GetLimit().GetRequests(), period: d.GetLimit().GetPeriod().AsDuration()}
		if k.policy == "" || reported[k] {
			continue
		}
		reported[k] = true
		g := a.groups[k]
		if g == nil {
			g = map[string]*member{}
			a.groups[k] = g
		}
		rate := d.GetOfferedRate()
		if rate < 0 || rate != rate {
			rate = 0
		}
		g[id] = &member{rate: rate, seen: now, expects: int(d.GetReplicas())}
		share := a.share(g, id)
		out.Shares = append(out.Shares, &meshv1.QuotaShare{Policy: k.policy, Share: share, Replicas: uint32(len(g))})
	}
	// A policy the replica no longer reports is no longer its.
	for k, g := range a.groups {
		if _, ok := g[id]; ok && !reported[k] {
			a.leaveLocked(k, id)
		}
	}
	sort.Slice(out.Shares, func(i, j int) bool { return out.Shares[i].Policy < out.Shares[j].Policy })
	return out
}

// share is id's part of its group. A replica the group's members expect
// (they divide by it when ungranted) but that does not report is on its
// safe share, 1/expected, so that much is kept free for each; the
// reporters share the rest: Floor/n of it each, plus (1 − Floor) of it in
// proportion to their rates (evenly when no one offers anything).
func (a *Allocator) share(g map[string]*member, id string) float64 {
	n := float64(len(g))
	expected := n
	var sum float64
	for _, m := range g {
		sum += m.rate
		expected = max(expected, float64(m.expects))
	}
	part := n / expected
	if sum == 0 {
		return part / n
	}
	return part * (a.o.Floor/n + (1-a.o.Floor)*g[id].rate/sum)
}

// Forget drops a replica whose stream ended.
func (a *Allocator) Forget(id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, g := range a.groups {
		if _, ok := g[id]; ok {
			a.leaveLocked(k, id)
		}
	}
}

func (a *Allocator) leaveLocked(k groupKey, id string) {
	delete(a.groups[k], id)
	if len(a.groups[k]) == 0 {
		delete(a.groups, k)
	}
}

func (a *Allocator) expireLocked(now time.Time) {
	for k, g := range a.groups {
		for id, m := range g {
			if now.Sub(m.seen) > a.o.TTL {
				a.leaveLocked(k, id)
			}
		}
	}
}

// Replicas is how many replicas share policy's limits now (all groups of
// that policy key).
func (a *Allocator) Replicas(policy string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.expireLocked(a.o.Now())
	n := 0
	for k, g := range a.groups {
		if k.policy == policy {
			n += len(g)
		}
	}
	return n
}
