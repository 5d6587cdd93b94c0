package ratelimit

import (
	"sync"
	"time"
)

// LeakyBucket releases requests at a constant rate: each admitted request
// is given the next free slot, slots one interval apart, and waits (Delay)
// until it. At most Burst requests wait at once; one that would be the
// (Burst+1)th is refused. Its output therefore has no burst above the rate:
// however requests arrive, two released requests are at least one interval
// apart. It is a queue bound, not a burst allowance: a quiet bucket does
// not save up slots.
//
// As the token bucket, it is one number: next, the time of the next free
// slot. A Burst of 0 admits only requests that find a free slot now (a
// pure spacer); arrivals that jitter then lose slots, so a queue of at
// least a few keeps the output at the rate.
type LeakyBucket struct {
	mu       sync.Mutex
	interval int64
	window   int64 // queue · interval: the longest wait allowed
	next     int64
	limit    Limit
}

// NewLeakyBucket returns an empty bucket.
func NewLeakyBucket(l Limit) *LeakyBucket {
	b := &LeakyBucket{}
	b.set(l)
	b.next = -1 << 62
	return b
}

func (b *LeakyBucket) set(l Limit) {
	b.limit = l
	b.interval = l.interval()
	b.window = l.Burst * b.interval
}

// Decide implements Limiter.
func (b *LeakyBucket) Decide(now int64) Decision {
	b.mu.Lock()
	slot := max(b.next, now)
	wait := slot - now
	if wait > b.window {
		d := Decision{
			RetryAfter: time.Duration(wait - b.window),
			Reset:      time.Duration(wait),
		}
		b.mu.Unlock()
		return d
	}
	b.next = slot + b.interval
	d := Decision{
		Allowed:   true,
		Delay:     time.Duration(wait),
		Remaining: (b.window - wait) / b.interval,
		Reset:     time.Duration(wait + b.interval),
	}
	b.mu.Unlock()
	return d
}

// SetLimit implements Limiter: the requests queued keep their slots (they
// are already waiting for them), slots after the last one are spaced at the
// new rate. Moving next earlier would release new requests among the
// queued ones, a burst above either rate.
func (b *LeakyBucket) SetLimit(l Limit, _ int64) {
	b.mu.Lock()
	b.set(l)
	b.mu.Unlock()
}

// Limit implements Limiter.
func (b *LeakyBucket) Limit() Limit {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.limit
}

// Idle implements Limiter: nobody waiting.
func (b *LeakyBucket) Idle(now int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.next <= now
}
