package stats

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// fakeStream records what a session sends and acks each report; broken
// makes the next Send fail.
type fakeStream struct {
	mu     sync.Mutex
	sent   []*meshv1.StatsReport
	acks   chan *meshv1.StatsAck
	broken bool
}

func (f *fakeStream) Send(r *meshv1.StatsReport) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.broken {
		return errors.New("broken")
	}
	f.sent = append(f.sent, r)
	f.acks <- &meshv1.StatsAck{}
	return nil
}

func (f *fakeStream) Recv() (*meshv1.StatsAck, error) {
	a, ok := <-f.acks
	if !ok {
		return nil, errors.New("closed")
	}
	return a, nil
}

func starts(r *meshv1.StatsReport) []int64 {
	var out []int64
	for _, w := range r.GetWindows() {
		out = append(out, w.GetStartUnix())
	}
	return out
}

// TestReportSendsEachClosedWindowOnce: the first report names the node and
// carries every kept window; later ones only windows closed since; after
// the stream breaks, the new stream resends every kept window.
func TestReportSendsEachClosedWindowOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := NewRecorder()
		c := rec.Cell(ordersIn)
		t0 := time.Now().Unix()
		c.Record(time.Now(), 200, time.Millisecond)
		time.Sleep(Width) // window t0 closed
		var mu sync.Mutex
		var streams []*fakeStream
		ctx, cancel := context.WithCancel(t.Context())
		defer func() { // end the reporter and the streams' receivers, pass or fail
			cancel()
			mu.Lock()
			defer mu.Unlock()
			for _, s := range streams {
				close(s.acks)
			}
		}()
		done := make(chan error, 1)
		go func() {
			done <- Report(ctx, ReporterOptions{NodeID: "orders-1", Recorder: rec, Open: func(context.Context) (Stream, error) {
				mu.Lock()
				defer mu.Unlock()
				s := &fakeStream{acks: make(chan *meshv1.StatsAck, 100)}
				streams = append(streams, s)
				return s, nil
			}})
		}()
		synctest.Wait()
		c.Record(time.Now(), 200, time.Millisecond) // in window t0+10
		time.Sleep(2 * DefaultInterval)             // t0+10 closes, reported once
		synctest.Wait()

		mu.Lock()
		first := streams[0]
		mu.Unlock()
		first.mu.Lock()
		sent := first.sent
		first.mu.Unlock()
		if len(sent) < 2 || sent[0].GetNodeId() != "orders-1" || len(starts(sent[0])) != 1 || starts(sent[0])[0] != t0 {
			t.Fatalf("first report %v: want node orders-1 and window %d", sent[0], t0)
		}
		var later []int64
		for _, r := range sent[1:] {
			if r.GetNodeId() != "" {
				t.Errorf("a later report names the node again")
			}
			later = append(later, starts(r)...)
		}
		if len(later) != 1 || later[0] != t0+10 {
			t.Fatalf("later reports carried windows %v, want [%d] once", later, t0+10)
		}

		// Break the stream: the next one starts over with every kept window.
		first.mu.Lock()
		first.broken = true
		first.mu.Unlock()
		c.Record(time.Now(), 200, time.Millisecond) // a window to send: its send fails
		time.Sleep(Width + 2*DefaultInterval)       // backoff, then a new stream
		synctest.Wait()
		mu.Lock()
		n := len(streams)
		var second *fakeStream
		if n > 1 {
			second = streams[1]
		}
		mu.Unlock()
		if second == nil {
			t.Fatalf("%d streams opened, want a second after the break", n)
		}
		second.mu.Lock()
		resent := starts(second.sent[0])
		second.mu.Unlock()
		if len(resent) != 3 || resent[0] != t0 || resent[1] != t0+10 || resent[2] != t0+20 {
			t.Fatalf("new stream's first report carried %v, want [%d %d %d]", resent, t0, t0+10, t0+20)
		}
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("Report returned %v", err)
		}
	})
}
