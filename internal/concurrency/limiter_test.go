package concurrency

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"defaults", Config{}, ""},
		{"max below min", Config{MinLimit: 10, MaxLimit: 5}, "maxLimit 5 is below minLimit 10"},
		{"initial above max", Config{MaxLimit: 20, InitialLimit: 30}, "initialLimit 30 is outside"},
		{"percentile", Config{Percentile: 1.5}, "percentile 1.5"},
		{"buffer", Config{Buffer: -1}, "buffer -1"},
		{"minRTT interval", Config{Interval: time.Second, MinRTTInterval: time.Millisecond}, "shorter than interval"},
		{"jitter", Config{Jitter: 2}, "jitter 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("New: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrConfig)):
				t.Fatalf("New: %v, want ErrConfig containing %q", err, tc.want)
			}
		})
	}
}

// TestInitialLimitFollowsBounds: a small maxLimit caps the default
// initial limit instead of making the defaults invalid.
func TestInitialLimitFollowsBounds(t *testing.T) {
	l, err := New(Config{MaxLimit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if l.Limit() != 10 {
		t.Fatalf("limit %d, want 10", l.Limit())
	}
}

func TestPercentile(t *testing.T) {
	var h histogram
	for i := 1; i <= 1000; i++ {
		h.record(time.Duration(i) * time.Microsecond)
	}
	var c, zero counts
	h.load(&c)
	w := c.minus(&zero)
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{0.5, 500 * time.Microsecond}, {0.9, 900 * time.Microsecond}, {0.99, 990 * time.Microsecond}, {1, time.Millisecond}} {
		got := w.percentile(tc.p)
		if d := float64(got-tc.want) / float64(tc.want); d < -1.0/16 || d > 1.0/16 {
			t.Errorf("p%v = %v, want %v within 1/16", tc.p*100, got, tc.want)
		}
	}
	if got := (&counts{}).percentile(0.9); got != 0 {
		t.Errorf("empty percentile %v, want 0", got)
	}
}

// TestBucketBounds: every value falls in the bucket whose bounds hold it.
func TestBucketBounds(t *testing.T) {
	for _, ns := range []uint64{0, 1, 15, 16, 17, 31, 32, 33, 1000, 1 << 20, 123456789, 1<<40 - 1} {
		i := bucket(ns)
		if lo := lowerBound(i); lo > ns || (i+1 < numBuckets && lowerBound(i+1) <= ns) {
			t.Errorf("%d in bucket %d [%d, %d)", ns, i, lo, lowerBound(i+1))
		}
	}
	if bucket(1<<62) != numBuckets-1 {
		t.Errorf("a huge value is not clamped to the last bucket")
	}
}

// TestAcquireNeverExceedsLimit: concurrent acquirers never hold more
// than the limit, and everything refused is counted as shed.
func TestAcquireNeverExceedsLimit(t *testing.T) {
	l, err := New(Config{MinLimit: 1, InitialLimit: 5, MaxLimit: 5})
	if err != nil {
		t.Fatal(err)
	}
	var toks []Token
	for range 5 {
		tok, ok := l.Acquire()
		if !ok {
			t.Fatalf("refused at %d in flight, limit 5", l.InFlight())
		}
		toks = append(toks, tok)
	}
	if _, ok := l.Acquire(); ok {
		t.Fatal("a sixth request admitted, limit 5")
	}
	for _, tok := range toks {
		l.Release(tok, time.Millisecond, false)
	}
	var held, peak, refused atomic.Int64
	refused.Add(1) // the sixth, above
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for range 2000 {
				tok, ok := l.Acquire()
				if !ok {
					refused.Add(1)
					continue
				}
				n := held.Add(1)
				for {
					p := peak.Load()
					if n <= p || peak.CompareAndSwap(p, n) {
						break
					}
				}
				held.Add(-1)
				l.Release(tok, time.Millisecond, true)
			}
		})
	}
	wg.Wait()
	if peak.Load() > 5 {
		t.Fatalf("%d held at once, limit 5", peak.Load())
	}
	if l.InFlight() != 0 {
		t.Fatalf("in flight %d after all released", l.InFlight())
	}
	if uint64(refused.Load()) != l.Shed() {
		t.Fatalf("shed %d, refused %d", l.Shed(), refused.Load())
	}
}

// TestMinRTTPhase: the limit drops to MinLimit, requests admitted before
// the phase are no samples of it, and the limit comes back once enough
// samples ended it.
func TestMinRTTPhase(t *testing.T) {
	l, err := New(Config{MinLimit: 2, InitialLimit: 40, MinRTTRequests: 3})
	if err != nil {
		t.Fatal(err)
	}
	old, _ := l.Acquire()
	now := time.Unix(0, 0)
	l.Update(now) // starts the phase
	if l.Limit() != 2 {
		t.Fatalf("limit in minRTT phase %d, want 2", l.Limit())
	}
	l.Release(old, time.Second, true) // queued at the old limit: ignored
	for range 3 {
		tok, ok := l.Acquire()
		if !ok {
			t.Fatal("refused below the limit")
		}
		l.Release(tok, 10*time.Millisecond, true)
	}
	l.Update(now.Add(100 * time.Millisecond))
	if got := l.MinRTT(); got < 9*time.Millisecond || got > 11*time.Millisecond {
		t.Fatalf("minRTT %v, want ~10ms (the old request's 1s must not count)", got)
	}
	if l.Limit() != 40 {
		t.Fatalf("limit after the phase %d, want 40 restored", l.Limit())
	}
}

// TestGradient: latency at minRTT grows the limit; latency at twice the
// buffered minRTT halves it (plus headroom); no samples leave it alone.
func TestGradient(t *testing.T) {
	l, err := New(Config{MinLimit: 1, InitialLimit: 100, MinRTTRequests: 1, Buffer: 0.25})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(0, 0)
	feed := func(rtt time.Duration, n int) {
		for range n {
			tok, _ := l.Acquire()
			l.Release(tok, rtt, true)
		}
	}
	l.Update(now)
	feed(10*time.Millisecond, 1)
	now = now.Add(100 * time.Millisecond)
	l.Update(now) // minRTT = 10ms, limit back to 100
	now = now.Add(100 * time.Millisecond)
	l.Update(now) // empty window
	if l.Limit() != 100 {
		t.Fatalf("limit %d after an empty window, want 100", l.Limit())
	}
	feed(25*time.Millisecond, 10) // gradient 12.5/25 = 0.5 → 50 + √50
	now = now.Add(100 * time.Millisecond)
	l.Update(now)
	if got := l.Limit(); got < 55 || got > 59 {
		t.Fatalf("limit %d after a slow window, want ~57", got)
	}
	feed(10*time.Millisecond, 10) // gradient 1.25 → grows
	now = now.Add(100 * time.Millisecond)
	l.Update(now)
	if got := l.Limit(); got < 70 {
		t.Fatalf("limit %d after a fast window, want > 70", got)
	}
}

// app is a service of fixed capacity: workers serve one request each for
// service, the rest wait in an unbounded queue, as a thread pool does.
type app struct {
	workers chan struct{}
	service time.Duration
}

func (a *app) serve() {
	a.workers <- struct{}{}
	time.Sleep(a.service)
	<-a.workers
}

// phase offers rate req/s for d through l to a and returns the limit at
// its end and the admitted requests' worst latency in its second half.
func phase(l *Limiter, a *app, rate int, d time.Duration) (limit uint32, worst time.Duration, admitted, shed int) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for time.Since(start) < d {
		<-tick.C
		sent := time.Now()
		wg.Go(func() {
			tok, ok := l.Acquire()
			if !ok {
				mu.Lock()
				shed++
				mu.Unlock()
				return
			}
			a.serve()
			rtt := time.Since(sent)
			l.Release(tok, rtt, true)
			mu.Lock()
			admitted++
			if sent.Sub(start) > d/2 {
				worst = max(worst, rtt)
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	return l.Limit(), worst, admitted, shed
}

// TestShapeUnderOverload is the controller against an app of 8 workers ×
// 10 ms (800 req/s) on a fake clock: at 3× its capacity the limit drops to
// near the app's concurrency, admitted requests stay under 2× the unloaded
// latency and goodput near capacity; at half its capacity the limit climbs
// back.
func TestShapeUnderOverload(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, err := New(Config{MinLimit: 2, InitialLimit: 100, MaxLimit: 500, MinRTTInterval: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go l.Run(ctx, nil)
		a := &app{workers: make(chan struct{}, 8), service: 10 * time.Millisecond}

		const capacity = 800
		limit, worst, admitted, shed := phase(l, a, 3*capacity, 4*time.Second)
		t.Logf("overload: limit %d, worst %v, admitted %d, shed %d", limit, worst, admitted, shed)
		if limit > 40 {
			t.Errorf("limit %d at 3x overload of an 8-worker app, want <= 40", limit)
		}
		if worst > 20*time.Millisecond {
			t.Errorf("admitted latency %v under overload, want <= 2x the 10ms service time", worst)
		}
		if goodput := float64(admitted) / 4; goodput < 0.9*capacity {
			t.Errorf("goodput %.0f req/s, want >= 90%% of %d", goodput, capacity)
		}
		if shed == 0 {
			t.Errorf("nothing shed at 3x capacity")
		}
		recovered, _, _, _ := phase(l, a, capacity/2, 2*time.Second)
		t.Logf("recovery: limit %d", recovered)
		if recovered <= limit || recovered < 100 {
			t.Errorf("limit %d after the overload ended, want above %d and >= 100", recovered, limit)
		}
		cancel()
	})
}

func BenchmarkAcquireRelease(b *testing.B) {
	l, err := New(Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if tok, ok := l.Acquire(); ok {
				l.Release(tok, time.Millisecond, true)
			}
		}
	})
}
