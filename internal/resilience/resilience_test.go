package resilience

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"
)

func TestBackoffFullJitter(t *testing.T) {
	b := Backoff{Base: 25 * time.Millisecond, Max: 250 * time.Millisecond}
	top := func(n int64) int64 { return n - 1 } // the largest draw
	for _, tc := range []struct {
		n    int
		want time.Duration
	}{{1, 25 * time.Millisecond}, {2, 50 * time.Millisecond}, {3, 100 * time.Millisecond}, {4, 200 * time.Millisecond}, {5, 250 * time.Millisecond}, {40, 250 * time.Millisecond}} {
		if got := b.Delay(tc.n, top); got != tc.want {
			t.Errorf("Delay(%d) max = %v, want %v", tc.n, got, tc.want)
		}
	}
	if got := b.Delay(3, func(int64) int64 { return 0 }); got != 0 {
		t.Errorf("Delay lowest draw = %v, want 0 (full jitter starts at 0)", got)
	}
	if got := (Backoff{}).Delay(3, top); got != 0 {
		t.Errorf("zero backoff = %v", got)
	}
}

// TestBudgetBoundsRetries: a backend failing every request under steady
// load gets at most ratio × requests + min/s × ttl retries per window.
func TestBudgetBoundsRetries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewBudget(0.2, 10, 10*time.Second)
		requests, retries := 0, 0
		// 100 req/s for 10 s, each wanting 2 retries.
		for range 1000 {
			requests++
			b.Deposit()
			for range 2 {
				if b.Withdraw() {
					retries++
				}
			}
			time.Sleep(10 * time.Millisecond)
		}
		limit := int(0.2*float64(requests)) + 10*10
		if retries > limit {
			t.Fatalf("%d retries for %d requests, budget allows %d", retries, requests, limit)
		}
		if retries < limit-5 {
			t.Fatalf("%d retries for %d requests: the budget should allow about %d", retries, requests, limit)
		}
	})
}

// TestBudgetReserveRefills: the minimum rate is per second, not once: spent
// withdrawals expire after ttl.
func TestBudgetReserveRefills(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewBudget(0, 2, time.Second)
		n := 0
		for b.Withdraw() {
			n++
		}
		if n != 2 {
			t.Fatalf("reserve gave %d retries, want 2", n)
		}
		time.Sleep(1100 * time.Millisecond)
		if !b.Withdraw() {
			t.Fatal("reserve not refilled after ttl")
		}
	})
}

// TestBudgetDepositsExpire: deposits older than ttl stop paying for retries.
func TestBudgetDepositsExpire(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewBudget(1, 0, time.Second)
		for range 5 {
			b.Deposit()
		}
		time.Sleep(1100 * time.Millisecond)
		if b.Withdraw() {
			t.Fatal("a deposit older than ttl paid for a retry")
		}
		b.Deposit()
		if !b.Withdraw() || b.Withdraw() {
			t.Fatal("one fresh deposit at ratio 1 should pay for exactly one retry")
		}
	})
}

func TestBreakerMaxRequests(t *testing.T) {
	b := NewBreaker(Limits{MaxRequests: 2})
	ctx := context.Background()
	for i := range 2 {
		if err := b.Acquire(ctx, false); err != nil {
			t.Fatalf("request %d under a limit of 2: %v", i+1, err)
		}
	}
	if err := b.Acquire(ctx, false); !errors.Is(err, ErrMaxRequests) {
		t.Fatalf("third request: %v, want ErrMaxRequests", err)
	}
	b.Release(false)
	if err := b.Acquire(ctx, false); err != nil {
		t.Fatalf("after a release: %v", err)
	}
}

// TestBreakerPending: over MaxConnections a request waits as pending, at
// most MaxPending of them; beyond that it fails fast; a freed connection
// admits a waiter.
func TestBreakerPending(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewBreaker(Limits{MaxConnections: 1, MaxPending: 1})
		ctx := context.Background()
		if err := b.Acquire(ctx, true); err != nil {
			t.Fatal(err)
		}
		if err := b.Acquire(ctx, false); err != nil {
			t.Fatalf("a multiplexed request needs no connection of its own: %v", err)
		}
		got := make(chan error, 1)
		go func() { got <- b.Acquire(ctx, true) }()
		synctest.Wait()
		if err := b.Acquire(ctx, true); !errors.Is(err, ErrMaxPending) {
			t.Fatalf("second waiter: %v, want ErrMaxPending", err)
		}
		select {
		case err := <-got:
			t.Fatalf("waiter returned %v before a connection freed", err)
		default:
		}
		b.Release(true)
		if err := <-got; err != nil {
			t.Fatalf("waiter after release: %v", err)
		}
		tctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		if err := b.Acquire(tctx, true); !errors.Is(err, ErrMaxConnections) {
			t.Fatalf("waiter whose context ended: %v, want ErrMaxConnections", err)
		}
	})
}

type fakeEp struct{ until time.Time }

func (e *fakeEp) Eject(until time.Time)      { e.until = until }
func (e *fakeEp) Ejected(now time.Time) bool { return now.Before(e.until) }

func hosts(n int) ([]*Host, []*fakeEp) {
	var hs []*Host
	var eps []*fakeEp
	for range n {
		e := &fakeEp{}
		eps = append(eps, e)
		hs = append(hs, NewHost(e))
	}
	return hs, eps
}

func testOutlier() OutlierConfig {
	return OutlierConfig{Consecutive5xx: 5, ConsecutiveGatewayErrors: 3, BaseEjection: 30 * time.Second, MaxEjection: 75 * time.Second, MaxEjectionPercent: 50}
}

// TestDetectorConsecutive: the fifth 5xx in a row ejects; a success in
// between starts the count again; the ejection ends on its own.
func TestDetectorConsecutive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := NewDetector(testOutlier())
		hs, eps := hosts(4)
		for range 4 {
			d.Observe(hs[0], hs, 500, false)
		}
		d.Observe(hs[0], hs, 200, false)
		for i := range 4 {
			if d.Observe(hs[0], hs, 500, false) {
				t.Fatalf("ejected after %d 5xx following a success", i+1)
			}
		}
		if !d.Observe(hs[0], hs, 500, false) {
			t.Fatal("not ejected after 5 consecutive 5xx")
		}
		if !eps[0].Ejected(time.Now()) {
			t.Fatal("endpoint not ejected")
		}
		time.Sleep(30*time.Second + time.Millisecond)
		if eps[0].Ejected(time.Now()) {
			t.Fatal("still ejected after the base ejection time")
		}
	})
}

func TestDetectorGatewayErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := NewDetector(testOutlier())
		hs, _ := hosts(4)
		d.Observe(hs[0], hs, 502, true)
		d.Observe(hs[0], hs, 500, false) // not a gateway error: that run ends
		d.Observe(hs[0], hs, 502, true)
		d.Observe(hs[0], hs, 0, true)
		if !d.Observe(hs[0], hs, 503, true) {
			t.Fatal("not ejected after 3 consecutive gateway errors")
		}
	})
}

// TestDetectorGrowingEjection: each ejection lasts base × times, capped at
// max; time back healthy forgives.
func TestDetectorGrowingEjection(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := NewDetector(testOutlier())
		hs, eps := hosts(4)
		trip := func() time.Duration {
			for range 5 {
				d.Observe(hs[0], hs, 503, false)
			}
			return time.Until(eps[0].until).Round(time.Second)
		}
		for i, want := range []time.Duration{30 * time.Second, 60 * time.Second, 75 * time.Second} {
			if got := trip(); got != want {
				t.Fatalf("ejection %d lasted %v, want %v", i+1, got, want)
			}
			time.Sleep(time.Until(eps[0].until))
		}
		time.Sleep(10 * time.Minute)
		if got := trip(); got != 30*time.Second {
			t.Fatalf("after a long healthy spell the ejection lasted %v, want the base 30s", got)
		}
	})
}

// TestDetectorMaxPercent: at most max percent of the endpoints are ejected
// at once, though one always may be.
func TestDetectorMaxPercent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := testOutlier()
		cfg.MaxEjectionPercent = 10
		d := NewDetector(cfg)
		hs, _ := hosts(3)
		fail := func(h *Host) bool {
			var ej bool
			for range 5 {
				ej = d.Observe(h, hs, 503, false)
			}
			return ej
		}
		if !fail(hs[0]) {
			t.Fatal("the first ejection refused: one endpoint may always be ejected")
		}
		if fail(hs[1]) {
			t.Fatal("a second of 3 endpoints ejected under a 10% cap")
		}
		cfg.MaxEjectionPercent = 70
		d = NewDetector(cfg)
		hs, _ = hosts(3)
		if !fail(hs[0]) || !fail(hs[1]) {
			t.Fatal("two of 3 endpoints (67%) not ejected under a 70% cap")
		}
		if fail(hs[2]) {
			t.Fatal("every endpoint ejected under a 70% cap")
		}
	})
}
