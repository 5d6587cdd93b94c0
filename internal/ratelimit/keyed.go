package ratelimit

import (
	"strings"
	"sync"
	"time"
)

// Keyed is one bucket per key (a caller's SPIFFE ID, a header's value),
// each with the same limit, over a bounded set of keys.
//
// Past MaxKeys distinct keys, a new key first makes room by dropping idle
// buckets (full token buckets, empty leaky ones: dropping them loses no
// state); if none is idle, the new key shares one overflow bucket with
// every other key that found the set full, under the same limit. So a flood
// of distinct keys cannot grow memory, and together those keys get one
// key's limit — never more than the policy allows, at worst less for them.
type Keyed struct {
	algo    Algorithm
	maxKeys int

	mu        sync.RWMutex
	limit     Limit
	buckets   map[string]Limiter
	overflow  Limiter
	lastSweep int64
}

// DefaultMaxKeys bounds a keyed limiter's set when the policy does not.
const DefaultMaxKeys = 10000

// sweepEvery spaces the sweeps of a full set: a set full of busy keys is
// not walked on every new key.
const sweepEvery = int64(time.Second)

// NewKeyed returns an empty keyed limiter of the algorithm and limit.
func NewKeyed(a Algorithm, l Limit, maxKeys int) *Keyed {
	if maxKeys <= 0 {
		maxKeys = DefaultMaxKeys
	}
	return &Keyed{
		algo:      a,
		maxKeys:   maxKeys,
		limit:     l,
		buckets:   make(map[string]Limiter),
		overflow:  New(a, l),
		lastSweep: -1 << 62,
	}
}

// Decide takes one request of key at now. A key seen before costs a read
// lock and a map lookup; only a new key allocates (its bucket and a copy of
// the key).
func (k *Keyed) Decide(key string, now int64) Decision {
	k.mu.RLock()
	b, ok := k.buckets[key]
	k.mu.RUnlock()
	if !ok {
		b = k.insert(key, now)
	}
	return b.Decide(now)
}

func (k *Keyed) insert(key string, now int64) Limiter {
	k.mu.Lock()
	defer k.mu.Unlock()
	if b, ok := k.buckets[key]; ok {
		return b
	}
	if len(k.buckets) >= k.maxKeys && now-k.lastSweep >= sweepEvery {
		k.lastSweep = now
		for key, b := range k.buckets {
			if b.Idle(now) {
				delete(k.buckets, key)
			}
		}
	}
	if len(k.buckets) >= k.maxKeys {
		return k.overflow
	}
	b := New(k.algo, k.limit)
	// The key may be a view into a request's header: keep a copy.
	k.buckets[strings.Clone(key)] = b
	return b
}

// SetLimit changes every bucket's limit, keeping each one's state.
func (k *Keyed) SetLimit(l Limit, now int64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.limit = l
	for _, b := range k.buckets {
		b.SetLimit(l, now)
	}
	k.overflow.SetLimit(l, now)
}

// Len is the number of keys with their own bucket.
func (k *Keyed) Len() int {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return len(k.buckets)
}
