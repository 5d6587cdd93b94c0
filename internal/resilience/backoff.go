package resilience

import "time"

// Backoff is exponential backoff with full jitter (the AWS architecture
// blog's "full jitter", as Envoy does): before retry n (1-based) the wait is
// uniform in [0, min(Max, Base·2^(n-1))]. Full jitter spreads the retries
// of many clients that failed together, so they do not arrive in waves.
type Backoff struct {
	Base, Max time.Duration
}

// Default backoff bounds, Envoy's: 25 ms base, 10× that at most.
const (
	DefaultBackoffBase = 25 * time.Millisecond
	DefaultBackoffMax  = 250 * time.Millisecond
)

// Delay is the wait before retry n (1-based). randN returns a uniform
// number in [0, n) for n > 0 (math/rand/v2's Int64N).
func (b Backoff) Delay(n int, randN func(int64) int64) time.Duration {
	if b.Base <= 0 || n <= 0 {
		return 0
	}
	ceil := b.Base
	for i := 1; i < n && ceil < b.Max; i++ {
		ceil *= 2
	}
	if b.Max > 0 && ceil > b.Max {
		ceil = b.Max
	}
	return time.Duration(randN(int64(ceil) + 1))
}
