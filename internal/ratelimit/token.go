package ratelimit

import (
	"sync"
	"time"
)

// TokenBucket admits bursts up to its capacity and refills at its rate.
//
// It is kept as the generic cell rate algorithm (GCRA, virtual scheduling)
// rather than a token count: one number, the theoretical arrival time tat
// of the next request if the bucket were drained at exactly the rate. A
// request at now is admitted when tat+interval-now ≤ capacity·interval,
// i.e. the debt it would leave fits in the bucket. Refill needs no timer
// and no floating point.
type TokenBucket struct {
	mu       sync.Mutex
	interval int64 // ns per token
	window   int64 // capacity · interval: the debt a full burst leaves
	tat      int64
	limit    Limit
}

// NewTokenBucket returns a full bucket. A Burst of 0 is a capacity of 1:
// no bursts, one request per interval.
func NewTokenBucket(l Limit) *TokenBucket {
	b := &TokenBucket{}
	b.set(l)
	b.tat = -1 << 62 // far in the past: full
	return b
}

func (b *TokenBucket) set(l Limit) {
	l.Burst = max(l.Burst, 1)
	b.limit = l
	b.interval = l.interval()
	b.window = l.Burst * b.interval
}

// Decide implements Limiter.
func (b *TokenBucket) Decide(now int64) Decision {
	b.mu.Lock()
	tat := max(b.tat, now)
	next := tat + b.interval
	debt := next - now
	if debt > b.window {
		// Refused: tat stays, so refused requests cost nothing.
		d := Decision{
			RetryAfter: time.Duration(debt - b.window),
			Reset:      time.Duration(tat - now),
		}
		b.mu.Unlock()
		return d
	}
	b.tat = next
	d := Decision{
		Allowed:   true,
		Remaining: (b.window - debt) / b.interval,
		Reset:     time.Duration(debt),
	}
	b.mu.Unlock()
	return d
}

// SetLimit implements Limiter: the tokens spent stay spent (at most the new
// capacity), refilled from now at the new rate.
func (b *TokenBucket) SetLimit(l Limit, now int64) {
	b.mu.Lock()
	spent := float64(max(b.tat-now, 0)) / float64(b.interval)
	b.set(l)
	spent = min(spent, float64(b.limit.Burst))
	b.tat = now + int64(spent*float64(b.interval))
	b.mu.Unlock()
}

// Limit implements Limiter.
func (b *TokenBucket) Limit() Limit {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.limit
}

// Idle implements Limiter: full again.
func (b *TokenBucket) Idle(now int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.tat <= now
}
