package tap

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// fakeStream is a Tap stream in memory: reqs are what the control plane
// sends, sent what the proxy sent.
type fakeStream struct {
	reqs chan *meshv1.TapRequest
	sent chan *meshv1.TapEvents
	ctx  context.Context
}

func (f *fakeStream) Send(m *meshv1.TapEvents) error {
	f.sent <- m
	return nil
}

func (f *fakeStream) Recv() (*meshv1.TapRequest, error) {
	select {
	case r, ok := <-f.reqs:
		if !ok {
			return nil, errors.New("stream closed")
		}
		return r, nil
	case <-f.ctx.Done():
		return nil, f.ctx.Err()
	}
}

// TestClientRun: the first message names the node; a start request runs
// the tap; events are flushed; when the stream breaks every tap stops and
// the client reconnects.
func TestClientRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		ts := NewTaps(nil)
		streams := make(chan *fakeStream, 2)
		done := make(chan error, 1)
		go func() {
			done <- Run(ctx, ClientOptions{NodeID: "orders-1", Taps: ts, Open: func(ctx context.Context) (Stream, error) {
				f := &fakeStream{reqs: make(chan *meshv1.TapRequest), sent: make(chan *meshv1.TapEvents, 16), ctx: ctx}
				streams <- f
				return f, nil
			}})
		}()
		f := <-streams
		if m := <-f.sent; m.GetNodeId() != "orders-1" {
			t.Fatalf("first message %v, want node_id", m)
		}
		f.reqs <- &meshv1.TapRequest{TapId: "t1", MaxRps: 2}
		synctest.Wait()
		set := ts.Load()
		if set == nil {
			t.Fatal("start request did not start the tap")
		}
		tp := set.Taps()[0]
		for range 3 {
			if tp.Want("GET", "/", "orders.default", time.Now().UnixNano()) {
				ts.Emit(tp, &meshv1.TapEvent{Path: "/"})
			}
		}
		time.Sleep(DefaultFlush)
		synctest.Wait()
		m := <-f.sent
		if len(m.Events) != 2 || len(m.Skipped) != 1 || m.Skipped[0].GetCount() != 1 {
			t.Fatalf("flush: %d events, skipped %v; want 2 and 1", len(m.Events), m.Skipped)
		}
		close(f.reqs) // the control plane went away
		synctest.Wait()
		if ts.Load() != nil {
			t.Fatal("taps still run after the stream broke")
		}
		f2 := <-streams // reconnected after a backoff
		if m := <-f2.sent; m.GetNodeId() != "orders-1" {
			t.Fatalf("first message after reconnect %v", m)
		}
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("Run: %v", err)
		}
	})
}
