package health

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// ReasonStarting is the reason of an endpoint whose app has passed no
// check yet: it registers unhealthy and takes no traffic until one passes.
const ReasonStarting = "no check passed yet"

// Status is the checker's verdict.
type Status struct {
	Healthy bool
	// Reason is why the app is unhealthy (the last failed check's); ""
	// while healthy.
	Reason string
}

// Metrics is what the checker records; internal/telemetry implements it.
type Metrics interface {
	// Checked counts one check of a type ("tcp", "http", "grpc") that
	// passed or failed, and how long it took.
	Checked(check string, passed bool, d time.Duration)
	// State is the verdict now.
	State(healthy bool)
}

type nopMetrics struct{}

func (nopMetrics) Checked(string, bool, time.Duration) {}
func (nopMetrics) State(bool)                          {}

// Options configure a Checker.
type Options struct {
	// OnChange is called (on the checker's goroutine) whenever the
	// verdict or its reason changes.
	OnChange func(Status)
	Metrics  Metrics
	Logger   *slog.Logger
}

// Checker runs one app's checks and holds the verdict. The thresholds
// count consecutive results: UnhealthyThreshold failures turn a healthy
// app unhealthy, HealthyThreshold passes turn it back — except the very
// first pass, which is enough on its own (as Envoy at startup), so a
// starting app joins as soon as it answers.
type Checker struct {
	o   Options
	log *slog.Logger

	mu        sync.Mutex
	spec      Spec
	probe     probe
	reconf    chan struct{} // buffer 1: the spec changed
	makeProbe func(Spec) (probe, error)
	st        Status
	passed    bool // any check ever passed
	successes int
	failures  int
}

// New returns a checker of s (defaults filled), unhealthy until its first
// check passes. Run starts the checks.
func New(s Spec, o Options) (*Checker, error) {
	s = s.WithDefaults()
	if err := s.Validate(); err != nil {
		return nil, err
	}
	pr, err := newProbe(s)
	if err != nil {
		return nil, err
	}
	if o.Metrics == nil {
		o.Metrics = nopMetrics{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Checker{o: o, log: o.Logger.With("component", "health"), spec: s, probe: pr,
		reconf: make(chan struct{}, 1), st: Status{Reason: ReasonStarting}, makeProbe: newProbe}
	o.Metrics.State(false)
	return c, nil
}

// Status is the verdict now.
func (c *Checker) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st
}

// Spec is the check being run (defaults filled).
func (c *Checker) Spec() Spec {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.spec
}

// Configure switches to a new spec (a pushed healthCheck changed). The
// verdict and the counts carry over, so a config change does not flap the
// endpoint; the next check runs at once.
func (c *Checker) Configure(s Spec) error {
	s = s.WithDefaults()
	if err := s.Validate(); err != nil {
		return err
	}
	c.mu.Lock()
	if s == c.spec {
		c.mu.Unlock()
		return nil
	}
	pr, err := c.makeProbe(s)
	if err != nil {
		c.mu.Unlock()
		return err
	}
	old := c.probe
	c.spec, c.probe = s, pr
	c.mu.Unlock()
	old.close()
	select {
	case c.reconf <- struct{}{}:
	default:
	}
	c.log.Info("health check changed", "type", s.Type.String(), "address", s.Addr, "path", s.Path, "interval", s.Interval)
	return nil
}

// Run checks at once, then every interval (every StartInterval, if
// shorter, until a check passes), until ctx ends.
func (c *Checker) Run(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	defer func() {
		c.mu.Lock()
		c.probe.close()
		c.mu.Unlock()
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.reconf:
			t.Stop()
		case <-t.C:
		}
		t.Reset(c.checkOnce(ctx))
	}
}

// checkOnce runs one check, records it and returns the wait until the next.
func (c *Checker) checkOnce(ctx context.Context) time.Duration {
	c.mu.Lock()
	s, pr := c.spec, c.probe
	c.mu.Unlock()
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, s.Timeout)
	reason := pr.check(cctx)
	cancel()
	if ctx.Err() != nil {
		return s.Interval // stopping; not a verdict on the app
	}
	c.o.Metrics.Checked(s.Type.String(), reason == "", time.Since(start))
	st, changed, passed := c.record(reason)
	if changed {
		c.o.Metrics.State(st.Healthy)
		if st.Healthy {
			c.log.Info("app healthy", "check", s.Type.String(), "address", s.Addr)
		} else {
			c.log.Warn("app unhealthy", "check", s.Type.String(), "address", s.Addr, "reason", st.Reason)
		}
		if c.o.OnChange != nil {
			c.o.OnChange(st)
		}
	}
	if !passed {
		return min(s.Interval, StartInterval)
	}
	return s.Interval
}

// record applies one result ("" passed) to the thresholds.
func (c *Checker) record(reason string) (st Status, changed, everPassed bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	prev := c.st
	if reason == "" {
		c.successes++
		c.failures = 0
		if !c.st.Healthy && (!c.passed || c.successes >= c.spec.HealthyThreshold) {
			c.st = Status{Healthy: true}
		}
		c.passed = true
	} else {
		c.failures++
		c.successes = 0
		switch {
		case c.st.Healthy && c.failures >= c.spec.UnhealthyThreshold:
			c.st = Status{Reason: reason}
		case !c.st.Healthy:
			c.st.Reason = reason // the latest reason
		}
	}
	return c.st, c.st != prev, c.passed
}
