package control

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"trellis.dev/trellis/internal/store"
)

// fakeCompacting is a store whose revision moves on and which records
// compactions.
type fakeCompacting struct {
	mu        sync.Mutex
	rev       int64
	compacted []int64
}

func (f *fakeCompacting) Revision(context.Context) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rev += 100
	return f.rev, nil
}

func (f *fakeCompacting) Compact(_ context.Context, rev int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.compacted = append(f.compacted, rev)
	if rev == 200 {
		return store.ErrCompacted // etcd compacted there itself: no error
	}
	return nil
}

// TestCompactLoopKeepsOneInterval: each tick compacts to the revision read
// one tick earlier, never to the current one.
func TestCompactLoopKeepsOneInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := &Control{log: slog.New(slog.DiscardHandler)}
		f := &fakeCompacting{}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { c.compactLoop(ctx, f, time.Minute); close(done) }()
		time.Sleep(4*time.Minute + time.Second)
		cancel()
		<-done
		f.mu.Lock()
		defer f.mu.Unlock()
		// Ticks read 100, 200, 300, 400; compactions trail by one.
		want := []int64{100, 200, 300}
		if len(f.compacted) != len(want) {
			t.Fatalf("compacted %v, want %v", f.compacted, want)
		}
		for i := range want {
			if f.compacted[i] != want[i] {
				t.Fatalf("compacted %v, want %v", f.compacted, want)
			}
		}
	})
}
