package resilience

import (
	"context"
	"errors"
	"sync"
)

// Limits are a circuit breaker's three limits, Envoy's (and Istio's
// connectionPool): at most MaxRequests requests in flight to the backend; at
// most MaxConnections of them holding a connection of their own (HTTP/1.1:
// one request per connection; multiplexed HTTP/2 requests share one and do
// not count); beyond that, at most MaxPending requests waiting for such a
// connection. Zero means no limit.
type Limits struct {
	MaxConnections, MaxPending, MaxRequests uint32
}

// DefaultLimit is Istio's default for every limit: 2^32-1, high enough never
// to bite by surprise.
const DefaultLimit = 1<<32 - 1

// The reasons Acquire refuses, for the overflow counter's label.
var (
	ErrMaxRequests    = errors.New("max requests reached")
	ErrMaxPending     = errors.New("max pending requests reached")
	ErrMaxConnections = errors.New("max connections reached")
)

// Breaker enforces Limits for one backend of one proxy. Overflow fails fast:
// the caller answers 503 at once rather than queue without bound.
type Breaker struct {
	lim Limits

	mu       sync.Mutex
	requests uint32
	conns    uint32
	pending  uint32
	freed    chan struct{} // closed and replaced when a connection frees
}

// NewBreaker returns a breaker with lim.
func NewBreaker(lim Limits) *Breaker {
	return &Breaker{lim: lim, freed: make(chan struct{})}
}

// Limits returns the breaker's limits.
func (b *Breaker) Limits() Limits { return b.lim }

// Acquire admits one request, which needs a connection of its own when
// ownConn (HTTP/1.1). It fails fast with ErrMaxRequests or ErrMaxPending;
// a request over MaxConnections waits for a connection (as a pending one)
// until ctx ends, then fails with ErrMaxConnections. Every nil return must
// be paired with one Release(ownConn).
func (b *Breaker) Acquire(ctx context.Context, ownConn bool) error {
	b.mu.Lock()
	if over(b.requests, b.lim.MaxRequests) {
		b.mu.Unlock()
		return ErrMaxRequests
	}
	if !ownConn || !over(b.conns, b.lim.MaxConnections) {
		b.take(ownConn)
		b.mu.Unlock()
		return nil
	}
	if over(b.pending, b.lim.MaxPending) {
		b.mu.Unlock()
		return ErrMaxPending
	}
	b.pending++
	defer func() { b.pending--; b.mu.Unlock() }()
	for over(b.conns, b.lim.MaxConnections) {
		freed := b.freed
		b.mu.Unlock()
		select {
		case <-freed:
		case <-ctx.Done():
			b.mu.Lock()
			return ErrMaxConnections
		}
		b.mu.Lock()
		if over(b.requests, b.lim.MaxRequests) {
			return ErrMaxRequests
		}
	}
	b.take(true)
	return nil
}

func (b *Breaker) take(ownConn bool) {
	b.requests++
	if ownConn {
		b.conns++
	}
}

// Release ends a request Acquire admitted.
func (b *Breaker) Release(ownConn bool) {
	b.mu.Lock()
	b.requests--
	if ownConn {
		b.conns--
		if b.pending > 0 {
			close(b.freed)
			b.freed = make(chan struct{})
		}
	}
	b.mu.Unlock()
}

// over reports whether n has reached limit (0: none).
func over(n, limit uint32) bool { return limit != 0 && n >= limit }
