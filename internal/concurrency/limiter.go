// Package concurrency is the inbound adaptive concurrency limit: a
// gradient controller in the manner of Envoy's adaptive concurrency filter.
//
// A Limiter admits a request while fewer than its limit are in flight
// (Acquire/Release: atomics only, no lock, no allocation) and records each
// admitted request's round-trip time in a lock-free histogram. A controller
// (Run, or Update driven by a clock in tests) moves the limit:
//
//   - Every MinRTTInterval (jittered) it measures minRTT, the latency of the
//     app when it is not queueing: the limit drops to MinLimit until
//     MinRTTRequests requests that began at that low limit have finished,
//     and minRTT is their Percentile. The limit then returns to where it was.
//   - Every Interval in between it takes the Percentile of the window's
//     samples, sampleRTT, and sets
//     gradient = clamp((minRTT × (1 + Buffer)) / sampleRTT, 0.5, 2)
//     limit    = clamp(limit × gradient + √(limit × gradient), MinLimit, MaxLimit).
//
// When the app queues, sampleRTT grows past the buffered minRTT and the
// limit shrinks toward the concurrency the app serves without queueing
// (plus headroom); when latency is back at minRTT the gradient is > 1 and
// the limit grows again.
package concurrency

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of Config, as documented for ConcurrencyPolicy. Interval, buffer,
// the minRTT request count and jitter are Envoy's; the limits are Envoy's
// min_concurrency (3) and max_concurrency_limit (1000).
const (
	DefaultMinLimit       = 3
	DefaultMaxLimit       = 1000
	DefaultInitialLimit   = 50
	DefaultInterval       = 100 * time.Millisecond
	DefaultPercentile     = 0.9
	DefaultBuffer         = 0.25
	DefaultMinRTTInterval = 30 * time.Second
	DefaultMinRTTRequests = 50
	DefaultJitter         = 0.15
)

// Config is a Limiter's configuration; comparable, so a proxy keeps its
// Limiter (and what it learnt) while the Config is unchanged.
type Config struct {
	MinLimit, MaxLimit uint32
	// InitialLimit is the limit before the first minRTT measurement ends.
	InitialLimit uint32
	// Interval is how often the limit is recomputed from the last window.
	Interval time.Duration
	// Percentile of a window's (and of the minRTT phase's) samples, in (0, 1].
	Percentile float64
	// Buffer is the latency above minRTT, as a fraction of it, still taken
	// as "not queueing".
	Buffer float64
	// MinRTTInterval is how often minRTT is measured again; MinRTTRequests
	// how many samples measure it; Jitter spreads the intervals of many
	// proxies by up to that fraction so they do not all drop at once.
	MinRTTInterval time.Duration
	MinRTTRequests uint32
	Jitter         float64
}

// WithDefaults returns c with each zero field set to its default.
func (c Config) WithDefaults() Config {
	def := func(v *uint32, d uint32) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.MinLimit, DefaultMinLimit)
	def(&c.MaxLimit, DefaultMaxLimit)
	def(&c.MinRTTRequests, DefaultMinRTTRequests)
	if c.InitialLimit == 0 {
		c.InitialLimit = min(max(DefaultInitialLimit, c.MinLimit), c.MaxLimit)
	}
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.Percentile == 0 {
		c.Percentile = DefaultPercentile
	}
	if c.Buffer == 0 {
		c.Buffer = DefaultBuffer
	}
	if c.MinRTTInterval == 0 {
		c.MinRTTInterval = DefaultMinRTTInterval
	}
	if c.Jitter == 0 {
		c.Jitter = DefaultJitter
	}
	return c
}

// ErrConfig is wrapped by every Validate error.
var ErrConfig = errors.New("concurrency: invalid config")

// Validate checks a defaulted Config.
func (c Config) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrConfig}, a...)...)
	}
	switch {
	case c.MinLimit < 1:
		return bad("minLimit must be >= 1")
	case c.MaxLimit < c.MinLimit:
		return bad("maxLimit %d is below minLimit %d", c.MaxLimit, c.MinLimit)
	case c.InitialLimit < c.MinLimit || c.InitialLimit > c.MaxLimit:
		return bad("initialLimit %d is outside [minLimit %d, maxLimit %d]", c.InitialLimit, c.MinLimit, c.MaxLimit)
	case c.Interval <= 0:
		return bad("interval must be > 0")
	case !(c.Percentile > 0 && c.Percentile <= 1):
		return bad("percentile %v must be in (0, 1]", c.Percentile)
	case !(c.Buffer >= 0 && c.Buffer <= 10):
		return bad("buffer %v must be in [0, 10]", c.Buffer)
	case c.MinRTTInterval < c.Interval:
		return bad("minRTTInterval %v is shorter than interval %v", c.MinRTTInterval, c.Interval)
	case c.MinRTTRequests < 1:
		return bad("minRTTRequests must be >= 1")
	case !(c.Jitter >= 0 && c.Jitter <= 1):
		return bad("jitter %v must be in [0, 1]", c.Jitter)
	}
	return nil
}

// Limiter is one service's adaptive concurrency limit. Acquire and Release
// are safe for concurrent use and take no lock; Update (the controller) is
// called from one goroutine at a time.
type Limiter struct {
	cfg Config

	limit    atomic.Int64
	inflight atomic.Int64
	shed     atomic.Uint64
	// epoch changes when a minRTT phase begins or ends: a request admitted
	// in another epoch than the phase's is no sample of it (it began at a
	// higher limit, and queued).
	epoch   atomic.Uint64
	sampled atomic.Bool // in a minRTT phase: only the phase's epoch counts
	hist    histogram

	// The controller's own state (Update).
	mu        sync.Mutex
	last      counts // hist at the end of the last window or phase start
	minRTT    time.Duration
	inMinRTT  bool
	deferred  int64     // the limit to restore after a minRTT phase
	nextMeas  time.Time // when the next minRTT phase begins
	randFloat func() float64
}

// New returns a Limiter for cfg (defaulted and validated). Its first
// Update starts a minRTT phase.
func New(cfg Config) (*Limiter, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	l := &Limiter{cfg: cfg, randFloat: rand.Float64, deferred: int64(cfg.InitialLimit)}
	l.limit.Store(int64(cfg.InitialLimit))
	return l, nil
}

// Config returns the Limiter's defaulted configuration.
func (l *Limiter) Config() Config { return l.cfg }

// Token is one admitted request; Release it exactly once.
type Token struct {
	epoch uint64
}

// Acquire admits a request if fewer than the limit are in flight, and
// counts it as shed otherwise.
func (l *Limiter) Acquire() (Token, bool) {
	for {
		n := l.inflight.Load()
		if n >= l.limit.Load() {
			l.shed.Add(1)
			return Token{}, false
		}
		if l.inflight.CompareAndSwap(n, n+1) {
			return Token{epoch: l.epoch.Load()}, true
		}
	}
}

// Release ends an admitted request that took rtt. sample=false (the
// client went away, the app was never reached) frees the slot without
// teaching the controller anything.
func (l *Limiter) Release(t Token, rtt time.Duration, sample bool) {
	l.inflight.Add(-1)
	if !sample {
		return
	}
	if l.sampled.Load() && t.epoch != l.epoch.Load() {
		return
	}
	l.hist.record(rtt)
}

// Limit is the current limit.
func (l *Limiter) Limit() uint32 { return uint32(l.limit.Load()) }

// InFlight is the number of admitted requests not yet released.
func (l *Limiter) InFlight() int64 { return l.inflight.Load() }

// Shed is how many requests Acquire refused since New.
func (l *Limiter) Shed() uint64 { return l.shed.Load() }

// MinRTT is the last measured minRTT (0 before the first).
func (l *Limiter) MinRTT() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.minRTT
}

// Run drives Update every Interval until ctx ends, calling updated (if
// not nil) with the limit after each (to export it as a metric).
func (l *Limiter) Run(ctx context.Context, updated func(limit uint32)) {
	t := time.NewTicker(l.cfg.Interval)
	defer t.Stop()
	now := time.Now()
	for {
		l.Update(now)
		if updated != nil {
			updated(l.Limit())
		}
		select {
		case <-ctx.Done():
			return
		case now = <-t.C:
		}
	}
}

// Update runs the controller at now: it starts or ends a minRTT phase when
// due, or recomputes the limit from the samples since the last Update.
func (l *Limiter) Update(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.inMinRTT:
		l.endMinRTT(now)
	case l.nextMeas.IsZero() || !now.Before(l.nextMeas):
		l.startMinRTT()
	default:
		l.adjust()
	}
}

// startMinRTT drops the limit to MinLimit and starts counting samples of
// requests admitted from now on.
func (l *Limiter) startMinRTT() {
	l.inMinRTT = true
	l.deferred = l.limit.Load()
	l.epoch.Add(1)
	l.sampled.Store(true)
	l.limit.Store(int64(l.cfg.MinLimit))
	l.hist.load(&l.last)
}

// endMinRTT ends the phase once it has enough samples: minRTT is their
// percentile and the limit goes back to where it was.
func (l *Limiter) endMinRTT(now time.Time) {
	var cur counts
	l.hist.load(&cur)
	w := cur.minus(&l.last)
	if w.total < uint64(l.cfg.MinRTTRequests) {
		return
	}
	l.minRTT = w.percentile(l.cfg.Percentile)
	l.inMinRTT = false
	l.sampled.Store(false)
	l.epoch.Add(1)
	l.limit.Store(l.deferred)
	l.last = cur
	jitter := 1 + l.cfg.Jitter*l.randFloat()
	l.nextMeas = now.Add(time.Duration(float64(l.cfg.MinRTTInterval) * jitter))
}

// adjust applies the gradient to the limit from the window's samples; a
// window without samples leaves the limit alone.
func (l *Limiter) adjust() {
	var cur counts
	l.hist.load(&cur)
	w := cur.minus(&l.last)
	l.last = cur
	if w.total == 0 {
		return
	}
	sample := float64(w.percentile(l.cfg.Percentile))
	buffered := float64(l.minRTT) * (1 + l.cfg.Buffer)
	gradient := min(max(buffered/sample, 0.5), 2)
	next := float64(l.limit.Load()) * gradient
	next += math.Sqrt(next) // headroom for bursts, and to probe upward
	l.limit.Store(int64(min(max(next, float64(l.cfg.MinLimit)), float64(l.cfg.MaxLimit))))
}
