package ratelimit

import (
	"sync"
)

// Scope is what a policy counts requests by.
type Scope int

// The scopes.
const (
	// ScopeWhole: one bucket for everything the policy covers (a service's
	// inbound traffic, a route's).
	ScopeWhole Scope = iota
	// ScopeIdentity: one bucket per caller SPIFFE ID; callers without one
	// share the bucket of the empty ID.
	ScopeIdentity
	// ScopeHeader: one bucket per value of a request header; requests
	// without it share the bucket of the empty value.
	ScopeHeader
)

// Spec is a compiled policy: what NewPolicy builds buckets from.
type Spec struct {
	Algorithm Algorithm
	Limit     Limit
	Scope     Scope
	// MaxKeys bounds a keyed scope's set (see Keyed); 0: DefaultMaxKeys.
	MaxKeys   int
	Overrides []Override
}

// Override gives named callers their own limit instead of the policy's:
// each identity listed gets its own bucket of that limit, whatever the
// policy's scope (as Linkerd's HTTPLocalRateLimitPolicy overrides do).
type Override struct {
	Identities []string
	Limit      Limit
}

// Policy is a running policy: its buckets and the share of its limit this
// replica holds (1 unless the limit is global).
type Policy struct {
	spec      Spec
	whole     Limiter
	keyed     *Keyed
	overrides map[string]Limiter // read-only after NewPolicy

	mu    sync.Mutex
	share float64
}

// NewPolicy builds a policy's buckets, full, at share 1.
func NewPolicy(s Spec) *Policy {
	p := &Policy{spec: s, share: 1}
	if s.Scope == ScopeWhole {
		p.whole = New(s.Algorithm, s.Limit)
	} else {
		p.keyed = NewKeyed(s.Algorithm, s.Limit, s.MaxKeys)
	}
	for _, o := range s.Overrides {
		for _, id := range o.Identities {
			if p.overrides == nil {
				p.overrides = make(map[string]Limiter)
			}
			p.overrides[id] = New(s.Algorithm, o.Limit)
		}
	}
	return p
}

// Decide takes one request from the caller identity (its SPIFFE ID, "" if
// none) carrying key (the scope's header value; ignored by other scopes) at
// now.
func (p *Policy) Decide(identity, key string, now int64) Decision {
	if p.overrides != nil {
		if b, ok := p.overrides[identity]; ok {
			return b.Decide(now)
		}
	}
	switch p.spec.Scope {
	case ScopeWhole:
		return p.whole.Decide(now)
	case ScopeIdentity:
		return p.keyed.Decide(identity, now)
	}
	return p.keyed.Decide(key, now)
}

// Limit is the policy's whole limit (not this replica's share of it).
func (p *Policy) Limit() Limit { return p.spec.Limit }

// Scope is the policy's scope.
func (p *Policy) Scope() Scope { return p.spec.Scope }

// Share is the part of the limit this replica holds.
func (p *Policy) Share() float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.share
}

// SetShare gives this replica f (0 < f ≤ 1) of every limit of the policy,
// keeping each bucket's state: what a global allocator grants it.
func (p *Policy) SetShare(f float64, now int64) {
	f = min(max(f, 1e-9), 1)
	p.mu.Lock()
	defer p.mu.Unlock()
	if f == p.share {
		return
	}
	p.share = f
	l := p.spec.Limit.Scaled(f)
	if p.whole != nil {
		p.whole.SetLimit(l, now)
	} else {
		p.keyed.SetLimit(l, now)
	}
	for _, o := range p.spec.Overrides {
		ol := o.Limit.Scaled(f)
		for _, id := range o.Identities {
			p.overrides[id].SetLimit(ol, now)
		}
	}
}
