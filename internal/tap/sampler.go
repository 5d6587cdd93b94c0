package tap

import (
	"sync/atomic"
	"time"

	"trellis.dev/trellis/internal/ratelimit"
)

// Sampler bounds a tap's events per second on one proxy: a token bucket
// of rps per second with a burst of one second's worth, so a tap shows the
// start of a burst and then a steady sample. What it refuses it counts, so
// the viewer learns how much it did not see.
type Sampler struct {
	bucket  *ratelimit.TokenBucket
	skipped atomic.Uint64
}

// NewSampler returns a full sampler of rps events per second (rps > 0).
func NewSampler(rps uint32) *Sampler {
	n := int64(rps)
	return &Sampler{bucket: ratelimit.NewTokenBucket(ratelimit.Limit{Requests: n, Period: time.Second, Burst: n})}
}

// Admit takes one event at now (monotonic nanoseconds); false means skip
// it, and it is counted.
func (s *Sampler) Admit(now int64) bool {
	if s.bucket.Decide(now).Allowed {
		return true
	}
	s.skipped.Add(1)
	return false
}

// Skip counts one event dropped after it was admitted (a full queue).
func (s *Sampler) Skip() { s.skipped.Add(1) }

// TakeSkipped returns the count since the last call and resets it.
func (s *Sampler) TakeSkipped() uint64 { return s.skipped.Swap(0) }
