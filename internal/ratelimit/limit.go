package ratelimit

import (
	"errors"
	"fmt"
	"time"
)

// Limit is a rate, Requests per Period, and the bucket's slack: a token
// bucket's capacity (the burst it admits at once) or a leaky bucket's queue
// bound (the requests it holds waiting for their slot).
type Limit struct {
	Requests int64
	Period   time.Duration
	Burst    int64
}

// ErrLimit is wrapped by every error Limit.Validate returns.
var ErrLimit = errors.New("ratelimit: invalid limit")

// Validate refuses a limit no bucket can enforce.
func (l Limit) Validate() error {
	switch {
	case l.Requests <= 0:
		return fmt.Errorf("%w: requests %d must be > 0", ErrLimit, l.Requests)
	case l.Period <= 0:
		return fmt.Errorf("%w: period %s must be > 0", ErrLimit, l.Period)
	case l.Burst < 0:
		return fmt.Errorf("%w: burst %d must be >= 0", ErrLimit, l.Burst)
	case l.Period/time.Duration(l.Requests) <= 0:
		return fmt.Errorf("%w: %d per %s is faster than one per nanosecond", ErrLimit, l.Requests, l.Period)
	}
	return nil
}

// interval is the time one request costs at this rate: the emission
// interval of the generic cell rate algorithm. Integer nanoseconds: the
// rounding is below one part in a million for any rate under 1,000/ms.
func (l Limit) interval() int64 { return int64(l.Period) / l.Requests }

// PerSecond is the rate in requests per second.
func (l Limit) PerSecond() float64 { return float64(l.Requests) / l.Period.Seconds() }

// Scaled is f of this limit (a replica's part of a global limit): the rate
// times f, by stretching the period (so "10 per minute" keeps its
// precision at any share), and the slack times f, at least one where the
// limit had any.
func (l Limit) Scaled(f float64) Limit {
	out := l
	out.Period = time.Duration(float64(l.Period) / f)
	if l.Burst > 0 {
		out.Burst = max(1, int64(float64(l.Burst)*f+0.5))
	}
	return out
}

// Decision is the outcome of one request against a limiter, by value so a
// decision allocates nothing.
type Decision struct {
	// Allowed: the request may go on (after Delay, for a leaky bucket).
	Allowed bool
	// Delay is how long an allowed request waits for its slot (leaky
	// bucket); 0 for a token bucket.
	Delay time.Duration
	// RetryAfter is, for a refused request, how long until the same request
	// would be allowed.
	RetryAfter time.Duration
	// Remaining is what is left after this request: tokens in a token
	// bucket, free queue places in a leaky bucket.
	Remaining int64
	// Reset is how long until the limiter is back to its full quota.
	Reset time.Duration
}

// Limiter is one bucket: a token bucket or a leaky bucket.
type Limiter interface {
	// Decide takes one request at now (monotonic nanoseconds).
	Decide(now int64) Decision
	// SetLimit changes the rate and slack at now, keeping what has been
	// spent: a bucket half empty stays half empty.
	SetLimit(l Limit, now int64)
	// Limit is the limit in force.
	Limit() Limit
	// Idle reports whether the bucket at now is as a new one would be, so
	// dropping it loses nothing.
	Idle(now int64) bool
}

// Algorithm names a bucket kind.
type Algorithm int

// The algorithms.
const (
	TokenBucketAlgorithm Algorithm = iota
	LeakyBucketAlgorithm
)

// New returns a bucket of the algorithm, full (token) or empty (leaky).
func New(a Algorithm, l Limit) Limiter {
	if a == LeakyBucketAlgorithm {
		return NewLeakyBucket(l)
	}
	return NewTokenBucket(l)
}
