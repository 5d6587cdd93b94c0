package quota

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/ratelimit"
)

// Limits is what the client needs of the proxy's running rate limits
// (ratelimit.Registry implements it).
type Limits interface {
	Demands() []ratelimit.Demand
	Grant(shares map[string]float64)
	Degrade()
}

// Stream is one open Quota stream (the generated client stream).
type Stream interface {
	Send(*meshv1.QuotaReport) error
	Recv() (*meshv1.QuotaGrant, error)
}

// Defaults of ClientOptions.
const (
	DefaultInterval = 500 * time.Millisecond
	// staleAfter intervals without a grant, the shares are not trusted:
	// the proxy falls back to its safe local shares though the stream is
	// open (a control plane that accepts but does not answer).
	staleAfter = 4
	maxBackoff = 2 * time.Second
)

// ClientOptions configure Run.
type ClientOptions struct {
	// NodeID is the proxy's id, as registered.
	NodeID string
	// Open opens a Quota stream, ended with ctx.
	Open   func(ctx context.Context) (Stream, error)
	Limits Limits
	// Interval between reports; default DefaultInterval.
	Interval time.Duration
	Logger   *slog.Logger
}

// Run reports demand and applies grants until ctx ends; it returns ctx's
// error. While the proxy has no global policy it opens no stream. Whenever
// the stream is down, or its grants are stale, the limits run on their
// safe local shares; they return to granted shares with the next grant.
func Run(ctx context.Context, o ClientOptions) error {
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	c := &client{o: o, log: o.Logger.With("component", "quota"), prev: map[string]sample{}}
	backoff := o.Interval
	for {
		if err := c.waitForDemand(ctx); err != nil {
			return err
		}
		err := c.session(ctx)
		o.Limits.Degrade()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if c.granted.Load() {
			backoff = o.Interval // it worked for a while: retry soon
		}
		c.log.Debug("quota stream down; enforcing local shares", "err", err, "retry_in", backoff)
		if !sleep(ctx, backoff) {
			return ctx.Err()
		}
		// Capped low: while the stream is down the proxy enforces less
		// than its share, so a control plane that is back should be
		// found soon.
		backoff = min(2*backoff, maxBackoff)
	}
}

type client struct {
	o       ClientOptions
	log     *slog.Logger
	prev    map[string]sample // the previous report's counts, by policy key
	granted atomic.Bool       // the last session got a grant
}

type sample struct {
	offered int64
	at      time.Time
}

// waitForDemand returns once the proxy has a global policy.
func (c *client) waitForDemand(ctx context.Context) error {
	t := time.NewTicker(c.o.Interval)
	defer t.Stop()
	for len(c.o.Limits.Demands()) == 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// session runs one stream until it fails or the proxy has no global
// policy left.
func (c *client) session(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c.granted.Store(false)
	st, err := c.o.Open(ctx)
	if err != nil {
		return fmt.Errorf("quota: open: %w", err)
	}
	var lastGrant atomic.Int64 // unix nanoseconds
	lastGrant.Store(time.Now().UnixNano())
	recvErr := make(chan error, 1)
	done := make(chan struct{})
	// The stream ends with ctx; no grant is applied after session returns
	// (Run then degrades).
	defer func() { cancel(); <-done }()
	go func() {
		defer close(done)
		for {
			g, err := st.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			shares := make(map[string]float64, len(g.GetShares()))
			for _, s := range g.GetShares() {
				shares[s.GetPolicy()] = s.GetShare()
			}
			if ctx.Err() != nil {
				recvErr <- ctx.Err()
				return
			}
			c.o.Limits.Grant(shares)
			lastGrant.Store(time.Now().UnixNano())
			c.granted.Store(true)
		}
	}()
	t := time.NewTicker(c.o.Interval)
	defer t.Stop()
	first := true
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-recvErr:
			return fmt.Errorf("quota: receive: %w", err)
		case <-t.C:
		}
		report := c.report(time.Now())
		if len(report.Demands) == 0 {
			return errors.New("quota: no global policy left")
		}
		if first {
			report.NodeId, first = c.o.NodeID, false
		}
		if err := st.Send(report); err != nil {
			return fmt.Errorf("quota: send: %w", err)
		}
		if time.Since(time.Unix(0, lastGrant.Load())) > staleAfter*c.o.Interval {
			c.o.Limits.Degrade()
		}
	}
}

// report turns the proxy's counters into offered rates since the previous
// report.
func (c *client) report(now time.Time) *meshv1.QuotaReport {
	ds := c.o.Limits.Demands()
	r := &meshv1.QuotaReport{Demands: make([]*meshv1.QuotaDemand, 0, len(ds))}
	next := make(map[string]sample, len(ds))
	for _, d := range ds {
		p, ok := c.prev[d.Key]
		if !ok || d.Offered < p.offered {
			// New (or rebuilt) policy: its counter started about one
			// interval ago.
			p = sample{offered: 0, at: now.Add(-c.o.Interval)}
		}
		rate := 0.0
		if dt := now.Sub(p.at).Seconds(); dt > 0 {
			rate = float64(d.Offered-p.offered) / dt
		}
		next[d.Key] = sample{offered: d.Offered, at: now}
		r.Demands = append(r.Demands, &meshv1.QuotaDemand{
			Policy:      d.Key,
			OfferedRate: rate,
			Limit:       &meshv1.RateLimitValue{Requests: uint64(d.Limit.Requests), Period: durationpb.New(d.Limit.Period), Burst: uint64(d.Limit.Burst)},
			Replicas:    uint32(max(d.Replicas, 0)),
		})
	}
	c.prev = next
	return r
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
