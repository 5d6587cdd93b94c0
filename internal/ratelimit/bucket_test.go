package ratelimit

import (
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

const ms = int64(time.Millisecond)

func perSecond(n, burst int64) Limit { return Limit{Requests: n, Period: time.Second, Burst: burst} }

func TestTokenBucketBurstThenRefill(t *testing.T) {
	b := NewTokenBucket(perSecond(10, 5)) // 100 ms per token
	now := int64(1000 * ms)
	for i := range 5 {
		d := b.Decide(now)
		if !d.Allowed {
			t.Fatalf("request %d of the burst refused", i)
		}
		if d.Remaining != int64(4-i) {
			t.Errorf("request %d: remaining %d, want %d", i, d.Remaining, 4-i)
		}
	}
	d := b.Decide(now)
	if d.Allowed {
		t.Fatal("6th request of a burst of 5 allowed")
	}
	if d.RetryAfter != 100*time.Millisecond {
		t.Errorf("retry after %v, want 100ms", d.RetryAfter)
	}
	if d.Reset != 500*time.Millisecond {
		t.Errorf("reset %v, want 500ms (5 tokens at 100ms)", d.Reset)
	}
	if b.Decide(now + 99*ms).Allowed {
		t.Error("allowed 99 ms later, before a token refilled")
	}
	if !b.Decide(now + 100*ms).Allowed {
		t.Error("refused 100 ms later, a token refilled")
	}
	// A long idle time refills to the capacity, not beyond.
	later := now + 60_000*ms
	n := 0
	for b.Decide(later).Allowed {
		n++
	}
	if n != 5 {
		t.Errorf("after a minute idle admitted %d at once, want the capacity 5", n)
	}
}

func TestTokenBucketRefusedCostNothing(t *testing.T) {
	b := NewTokenBucket(perSecond(10, 1))
	if !b.Decide(0).Allowed {
		t.Fatal("first refused")
	}
	for i := int64(1); i < 100; i++ {
		b.Decide(i * ms) // refused, for 99 ms
	}
	if !b.Decide(100 * ms).Allowed {
		t.Error("refused requests delayed the next token")
	}
}

func TestTokenBucketSetLimitKeepsState(t *testing.T) {
	b := NewTokenBucket(perSecond(10, 10))
	for range 10 {
		b.Decide(0)
	}
	// Empty; at double the rate the spent tokens stay spent and refill at 50 ms.
	b.SetLimit(perSecond(20, 10), 0)
	if b.Decide(0).Allowed {
		t.Fatal("SetLimit refilled an empty bucket")
	}
	if !b.Decide(50 * ms).Allowed {
		t.Error("not refilled at the new rate")
	}
	if got := b.Limit().Requests; got != 20 {
		t.Errorf("limit %d, want 20", got)
	}
}

func TestLeakyBucketQueueAndSpacing(t *testing.T) {
	b := NewLeakyBucket(perSecond(10, 3)) // a slot every 100 ms, 3 waiting
	var delays []time.Duration
	for {
		d := b.Decide(0)
		if !d.Allowed {
			if d.RetryAfter != 100*time.Millisecond {
				t.Errorf("retry after %v, want 100ms", d.RetryAfter)
			}
			break
		}
		delays = append(delays, d.Delay)
	}
	want := []time.Duration{0, 100 * time.Millisecond, 200 * time.Millisecond, 300 * time.Millisecond}
	if len(delays) != len(want) {
		t.Fatalf("admitted %d at once (%v), want one now and 3 queued", len(delays), delays)
	}
	for i := range want {
		if delays[i] != want[i] {
			t.Errorf("request %d delay %v, want %v", i, delays[i], want[i])
		}
	}
	// A quiet bucket does not save slots: after idling, one at a time.
	d := b.Decide(10_000 * ms)
	if !d.Allowed || d.Delay != 0 {
		t.Fatalf("after idle: %+v", d)
	}
	if d := b.Decide(10_000 * ms); d.Delay != 100*time.Millisecond {
		t.Errorf("second after idle delayed %v, want a full interval", d.Delay)
	}
}

func TestLeakyBucketNoQueueIsASpacer(t *testing.T) {
	b := NewLeakyBucket(perSecond(10, 0))
	if !b.Decide(0).Allowed {
		t.Fatal("first refused")
	}
	if b.Decide(50 * ms).Allowed {
		t.Error("allowed before its slot with no queue")
	}
	if !b.Decide(100 * ms).Allowed {
		t.Error("refused at its slot")
	}
}

// TestLeakyBucketOutputNeverAboveRate sends irregular bursts and checks the
// release times (arrival + delay): in arrival order, never closer than one
// interval, whatever the arrivals.
func TestLeakyBucketOutputNeverAboveRate(t *testing.T) {
	const interval = 2 * ms // 500/s
	b := NewLeakyBucket(perSecond(500, 20))
	now, last := int64(0), int64(-1<<62)
	admitted := 0
	for i := range 20000 {
		// Bursts of 40 every 10 ms, with gaps of up to 30 ms.
		if i%40 == 0 {
			now += 10*ms + int64(i%7)*3*ms
		}
		d := b.Decide(now)
		if !d.Allowed {
			continue
		}
		admitted++
		release := now + int64(d.Delay)
		if release-last < interval {
			t.Fatalf("request %d released %v after the previous, below the interval", i, time.Duration(release-last))
		}
		last = release
	}
	if admitted == 0 {
		t.Fatal("nothing admitted")
	}
}

func TestLeakyBucketSetLimitKeepsQueuedSlots(t *testing.T) {
	b := NewLeakyBucket(perSecond(10, 5))
	for range 4 {
		b.Decide(0) // slots 0, 100, 200, 300 ms
	}
	b.SetLimit(perSecond(100, 50), 0)
	d := b.Decide(0)
	if d.Delay != 400*time.Millisecond {
		t.Errorf("after a faster SetLimit the next slot is at %v, want 400ms (after the queued ones)", d.Delay)
	}
	if d := b.Decide(0); d.Delay != 410*time.Millisecond {
		t.Errorf("then %v, want 410ms at the new rate", d.Delay)
	}
}

// TestLeakyBucketSynctest runs real waiting goroutines in a synctest
// bubble: each sleeps its Delay, as the proxy does; the bucket must
// release them in arrival order, one interval apart, none early.
func TestLeakyBucketSynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		epoch := time.Now()
		clock := func() int64 { return int64(time.Since(epoch)) }
		b := NewLeakyBucket(perSecond(50, 10)) // 20 ms slots
		var mu sync.Mutex
		var order []int
		var times []time.Duration
		var wg sync.WaitGroup
		refused := 0
		for i := range 15 {
			d := b.Decide(clock())
			if !d.Allowed {
				refused++
				continue
			}
			wg.Go(func() {
				time.Sleep(d.Delay)
				mu.Lock()
				order = append(order, i)
				times = append(times, time.Since(epoch))
				mu.Unlock()
			})
			synctest.Wait() // let it reach its sleep before the next arrives
		}
		wg.Wait()
		if refused != 4 {
			t.Errorf("refused %d of 15 at once, want 4 (1 now + 10 queued)", refused)
		}
		for i := range order {
			if order[i] != i {
				t.Fatalf("released out of order: %v", order)
			}
			if want := time.Duration(i) * 20 * time.Millisecond; times[i] != want {
				t.Errorf("request %d released at %v, want %v", i, times[i], want)
			}
		}
	})
}

// TestTokenBucketSynctestRate drives a bucket with a fixed arrival schedule
// over 10 s of fake time and checks the admitted rate.
func TestTokenBucketSynctestRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		epoch := time.Now()
		b := NewTokenBucket(perSecond(500, 50))
		admitted := 0
		for range 20000 { // 2,000/s for 10 s
			if b.Decide(int64(time.Since(epoch))).Allowed {
				admitted++
			}
			time.Sleep(500 * time.Microsecond)
		}
		t.Logf("token bucket: offered 2000/s for 10 s, admitted %d (%.1f/s)", admitted, float64(admitted)/10)
		// 10 s at 500/s plus the initial burst of 50.
		if admitted < 5000 || admitted > 5051 {
			t.Errorf("admitted %d in 10 s, want 5000..5051", admitted)
		}
	})
}

func TestLimitValidate(t *testing.T) {
	for _, tc := range []struct {
		l    Limit
		want bool
	}{
		{perSecond(1, 0), true},
		{Limit{Requests: 0, Period: time.Second}, false},
		{Limit{Requests: 1, Period: 0}, false},
		{Limit{Requests: 1, Period: time.Second, Burst: -1}, false},
		{Limit{Requests: 2e9, Period: time.Second}, false},
	} {
		if err := tc.l.Validate(); (err == nil) != tc.want {
			t.Errorf("%+v: err %v, want ok=%v", tc.l, err, tc.want)
		}
	}
}

func TestLimitScaled(t *testing.T) {
	l := perSecond(500, 100).Scaled(0.7)
	if got := l.PerSecond(); got < 349.9 || got > 350.1 {
		t.Errorf("0.7 of 500/s is %v/s", got)
	}
	if l.Burst != 70 {
		t.Errorf("burst %d, want 70", l.Burst)
	}
	if got := perSecond(10, 1).Scaled(0.01).Burst; got != 1 {
		t.Errorf("a tiny share's burst is %d, want at least 1", got)
	}
}

// TestLeakyBucketSynctestRate: 2,000/s offered for 10 s of fake time to a
// 500/s leaky bucket: the admitted rate, and the most released (arrival +
// delay) in any 100 ms window.
func TestLeakyBucketSynctestRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		epoch := time.Now()
		b := NewLeakyBucket(perSecond(500, 10))
		var released []int64
		for range 20000 {
			now := int64(time.Since(epoch))
			if d := b.Decide(now); d.Allowed {
				released = append(released, now+int64(d.Delay))
			}
			time.Sleep(500 * time.Microsecond)
		}
		// 10 s at 500/s, plus the queue of 10 and the one at t=0.
		if n := len(released); n < 5000 || n > 5011 {
			t.Errorf("admitted %d in 10 s, want 5000..5011", n)
		}
		most, j := 0, 0
		for i := range released {
			for released[i]-released[j] >= int64(100*time.Millisecond) {
				j++
			}
			most = max(most, i-j+1)
		}
		t.Logf("admitted %d in 10 s (%.1f/s); at most %d released in any 100 ms", len(released), float64(len(released))/10, most)
		if most > 50 {
			t.Errorf("%d released in a 100 ms window, want ≤ 50 (500/s)", most)
		}
	})
}
