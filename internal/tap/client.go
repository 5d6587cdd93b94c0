package tap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// Stream is a proxy's open Tap stream (the generated client stream).
type Stream interface {
	Send(*meshv1.TapEvents) error
	Recv() (*meshv1.TapRequest, error)
}

// Defaults of ClientOptions.
const (
	DefaultFlush = 100 * time.Millisecond
	// maxBatch bounds the events in one message.
	maxBatch   = 256
	maxBackoff = 5 * time.Second
)

// ClientOptions configure Run.
type ClientOptions struct {
	// NodeID is the proxy's id, as registered.
	NodeID string
	// Open opens a Tap stream, ended with ctx.
	Open func(ctx context.Context) (Stream, error)
	Taps *Taps
	// Flush is how often queued events are sent; default DefaultFlush.
	Flush  time.Duration
	Logger *slog.Logger
}

// Run keeps the proxy's Tap stream open until ctx ends, applying the
// control plane's tap requests and sending the events; it returns ctx's
// error. Whenever the stream is down no tap runs: a tap whose viewer (or
// control plane) is gone must not keep recording.
func Run(ctx context.Context, o ClientOptions) error {
	if o.Flush <= 0 {
		o.Flush = DefaultFlush
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	log := o.Logger.With("component", "tap")
	backoff := 200 * time.Millisecond
	for {
		start := time.Now()
		err := session(ctx, o, log)
		o.Taps.Clear()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Since(start) > maxBackoff {
			backoff = 200 * time.Millisecond // it worked for a while
		}
		log.Debug("tap stream down", "err", err, "retry_in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// session runs one stream until it fails.
func session(ctx context.Context, o ClientOptions, log *slog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := o.Open(ctx)
	if err != nil {
		return fmt.Errorf("tap: open: %w", err)
	}
	if err := st.Send(&meshv1.TapEvents{NodeId: o.NodeID}); err != nil {
		return fmt.Errorf("tap: send: %w", err)
	}
	recvErr := make(chan error, 1)
	go func() {
		for {
			r, err := st.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			if err := o.Taps.Apply(r); err != nil {
				// The control plane checked the request; a refusal here
				// (too many taps) is for the operator, not fatal.
				log.Warn("tap request refused", "tap", r.GetTapId(), "err", err)
				continue
			}
			log.Info("tap", "id", r.GetTapId(), "stop", r.GetStop(), "path", r.GetPathPrefix(), "method", r.GetMethod(), "to", r.GetTo())
		}
	}()
	t := time.NewTicker(o.Flush)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-recvErr:
			if errors.Is(err, context.Canceled) {
				return err
			}
			return fmt.Errorf("tap: receive: %w", err)
		case <-t.C:
		}
		if o.Taps.idle() {
			continue
		}
		for {
			m := o.Taps.Take(maxBatch)
			if len(m.Events) == 0 && len(m.Skipped) == 0 {
				break
			}
			if err := st.Send(m); err != nil {
				return fmt.Errorf("tap: send: %w", err)
			}
			if len(m.Events) < maxBatch {
				break
			}
		}
	}
}
