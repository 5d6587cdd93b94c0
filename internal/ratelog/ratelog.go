// Package ratelog bounds how many log lines a flood of refusals can write:
// each reason (a bad token, a denied policy, a failed handshake...) has a
// token bucket of lines, the lines past it are counted, and one summary
// line per reason says how many were left out. Counters (metrics) stay
// exact: this limits only the log.
package ratelog

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"trellis.dev/trellis/internal/ratelimit"
)

// Options configure New; zero values take the defaults.
type Options struct {
	// PerSecond lines of one reason after the first Burst (default 5, 10).
	PerSecond, Burst int64
	// Summary is how long after the first suppressed line of a reason its
	// summary line is written (default 10s).
	Summary time.Duration
	// MaxReasons bounds the reasons kept (default 64); past it new reasons
	// share the bucket OtherReason, so hostile input naming reasons cannot
	// grow the map.
	MaxReasons int
}

// OtherReason is the shared bucket of reasons past MaxReasons.
const OtherReason = "other"

// Limiter decides which refusal lines are written. Safe for concurrent use.
type Limiter struct {
	log *slog.Logger
	o   Options

	mu      sync.Mutex
	reasons map[string]*reason
	timer   *time.Timer // armed while a summary is due
}

type reason struct {
	bucket     *ratelimit.TokenBucket
	suppressed int64 // since the last line or summary
}

// New returns a Limiter writing its summary lines to log.
func New(log *slog.Logger, o Options) *Limiter {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.PerSecond <= 0 {
		o.PerSecond = 5
	}
	if o.Burst <= 0 {
		o.Burst = 10
	}
	if o.Summary <= 0 {
		o.Summary = 10 * time.Second
	}
	if o.MaxReasons <= 0 {
		o.MaxReasons = 64
	}
	return &Limiter{log: log, o: o, reasons: map[string]*reason{}}
}

// Allow reports whether a line for reason may be written now, and how many
// lines of that reason were left out since the last one (log it as
// "suppressed"; the summary will not count them again). It allocates
// nothing once the reason is known, so a hot path can call it per refusal
// and build the line only when allowed.
func (l *Limiter) Allow(why string) (ok bool, suppressed int64) {
	now := time.Now().UnixNano()
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.reasons[why]
	if r == nil {
		if len(l.reasons) >= l.o.MaxReasons {
			why = OtherReason
			r = l.reasons[why]
		}
		if r == nil {
			r = &reason{bucket: ratelimit.NewTokenBucket(ratelimit.Limit{Requests: l.o.PerSecond, Period: time.Second, Burst: l.o.Burst})}
			l.reasons[why] = r
		}
	}
	if !r.bucket.Decide(now).Allowed {
		r.suppressed++
		if l.timer == nil {
			l.timer = time.AfterFunc(l.o.Summary, l.summarize)
		}
		return false, 0
	}
	n := r.suppressed
	r.suppressed = 0
	return true, n
}

// summarize writes one line per reason with suppressed lines.
func (l *Limiter) summarize() {
	type due struct {
		why string
		n   int64
	}
	var out []due
	l.mu.Lock()
	l.timer = nil
	for why, r := range l.reasons {
		if r.suppressed > 0 {
			out = append(out, due{why, r.suppressed})
			r.suppressed = 0
		}
	}
	l.mu.Unlock()
	for _, d := range out {
		l.log.LogAttrs(context.Background(), slog.LevelWarn, "log lines suppressed (rate-limited); the refusal counters have every one",
			slog.String("reason", d.why), slog.Int64("suppressed", d.n), slog.Duration("within", l.o.Summary))
	}
}

// Stop cancels a pending summary (at shutdown).
func (l *Limiter) Stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
	}
}
