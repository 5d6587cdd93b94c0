package stats

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// DefaultInterval is how often a proxy reports.
const DefaultInterval = 5 * time.Second

// maxBackoff caps the wait between attempts to open the stream.
const maxBackoff = 30 * time.Second

// Stream is one open Report stream (the generated client stream).
type Stream interface {
	Send(*meshv1.StatsReport) error
	Recv() (*meshv1.StatsAck, error)
}

// ReporterOptions configure Report.
type ReporterOptions struct {
	// NodeID is the proxy's id, as registered.
	NodeID string
	// Open opens a Report stream, ended with ctx.
	Open     func(ctx context.Context) (Stream, error)
	Recorder *Recorder
	// Interval between reports; default DefaultInterval.
	Interval time.Duration
	Logger   *slog.Logger
}

// Report rolls the recorder's windows and sends the closed ones to the
// control plane every interval until ctx ends; it returns ctx's error. A
// stream that breaks is reopened with backoff; a new stream first sends
// every window kept, so the control plane fills what it missed.
func Report(ctx context.Context, o ReporterOptions) error {
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	log := o.Logger.With("component", "stats")
	backoff := o.Interval
	for {
		acked, err := session(ctx, o)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if acked {
			backoff = o.Interval
		}
		log.Debug("stats report stream down", "err", err, "retry_in", backoff)
		if !rollWhile(ctx, o, backoff) {
			return ctx.Err()
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// rollWhile keeps rolling windows for d while no stream is open; false
// when ctx ended.
func rollWhile(ctx context.Context, o ReporterOptions, d time.Duration) bool {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	t := time.NewTicker(o.Interval)
	defer t.Stop()
	for {
		o.Recorder.Roll(time.Now())
		select {
		case <-ctx.Done():
			return false
		case <-deadline.C:
			return true
		case <-t.C:
		}
	}
}

// session runs one stream until it fails; acked says the control plane
// answered at least once.
func session(ctx context.Context, o ReporterOptions) (acked bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := o.Open(ctx)
	if err != nil {
		return false, fmt.Errorf("stats: open: %w", err)
	}
	var got atomic.Bool
	recvErr := make(chan error, 1)
	go func() {
		for {
			if _, err := st.Recv(); err != nil {
				recvErr <- err
				return
			}
			got.Store(true)
		}
	}()
	t := time.NewTicker(o.Interval)
	defer t.Stop()
	var sent int64 // the newest window start sent on this stream
	for first := true; ; first = false {
		now := time.Now()
		o.Recorder.Roll(now)
		r := &meshv1.StatsReport{Windows: o.Recorder.Windows(now, sent)}
		if first {
			r.NodeId = o.NodeID
		}
		if first || len(r.Windows) > 0 {
			if err := st.Send(r); err != nil {
				return got.Load(), fmt.Errorf("stats: send: %w", err)
			}
		}
		if n := len(r.Windows); n > 0 {
			sent = r.Windows[n-1].GetStartUnix()
		}
		select {
		case <-ctx.Done():
			return got.Load(), ctx.Err()
		case err := <-recvErr:
			return got.Load(), fmt.Errorf("stats: receive: %w", err)
		case <-t.C:
		}
	}
}
