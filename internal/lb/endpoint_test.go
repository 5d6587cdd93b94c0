package lb

import (
	"math"
	"slices"
	"testing"
	"testing/synctest"
	"time"
)

// TestFailureScore pins the documented penalty: cost is divided by
// (1-score)², a failure moves the score half way to 1, a success half way
// to 0, and an idle endpoint's score decays with tau.
func TestFailureScore(t *testing.T) {
	tests := []struct {
		name     string
		outcomes []Outcome
		idle     time.Duration // after the outcomes
		want     float64       // cost multiplier
	}{
		{"none", nil, 0, 1},
		{"one success", []Outcome{Success}, 0, 1},
		{"one failure", []Outcome{Failure}, 0, 4},
		{"three failures", []Outcome{Failure, Failure, Failure}, 0, 64},
		{"three failures, one success", []Outcome{Failure, Failure, Failure, Success}, 0, 1 / (0.5625 * 0.5625)},
		{"abandoned is not charged", []Outcome{Failure, Abandoned, Abandoned}, 0, 4},
		{"unknown outcome is not charged", []Outcome{Failure, Outcome(9)}, 0, 4},
		{"many failures stay finite", slices.Repeat([]Outcome{Failure}, 100), 0, 1 / ((1 - maxFail) * (1 - maxFail))},
		{"decays when idle", []Outcome{Failure}, DefaultDecay, 1 / ((1 - 0.5/math.E) * (1 - 0.5/math.E))},
		{"forgotten when small", []Outcome{Failure}, 4 * DefaultDecay, 1},
		{"small after successes", []Outcome{Failure, Success, Success, Success, Success, Success, Success}, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p := NewPeakEWMA()
				e := NewEndpoint("a")
				for _, o := range tt.outcomes {
					// No time passes, so nothing decays between outcomes.
					c, _ := p.Pick(nil, []*Endpoint{e}, nil)
					c.Done(o)
				}
				time.Sleep(tt.idle)
				f := e.failScore(e.since(time.Now()), p.learn.tau)
				if got := cost(e, 1, f); math.Abs(got-tt.want) > 1e-9*tt.want {
					t.Fatalf("cost multiplier = %v, want %v", got, tt.want)
				}
			})
		})
	}
}

// TestAbandonedNotCharged: an abandoned attempt, however long, leaves no
// latency sample and no failure; it only releases its in-flight slot.
func TestAbandonedNotCharged(t *testing.T) {
	for _, policy := range Policies() {
		t.Run(string(policy), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p, _ := New(policy)
				e := NewEndpoint("a")
				c, _ := p.Pick(nil, []*Endpoint{e}, nil)
				time.Sleep(2 * time.Millisecond)
				c.Done(Success)
				rtt, stamp := e.rtt.Load(), e.rttStamp.Load()
				c, _ = p.Pick(nil, []*Endpoint{e}, nil)
				if got := e.inflight.Load(); got != 1 {
					t.Fatalf("in flight = %d, want 1", got)
				}
				time.Sleep(time.Minute)
				c.Done(Abandoned)
				if got := e.inflight.Load(); got != 0 {
					t.Fatalf("in flight after Done = %d, want 0", got)
				}
				if e.rtt.Load() != rtt || e.rttStamp.Load() != stamp || e.fail.Load() != 0 {
					t.Fatalf("an abandoned call changed the estimate or the failure score")
				}
			})
		})
	}
}

func TestZeroCallDone(t *testing.T) {
	var c Call
	c.Done(Failure) // must not panic
	if c.Endpoint() != nil {
		t.Fatal("zero Call has an endpoint")
	}
}

// TestStateSurvivesSwap: a new snapshot's slice holds the same *Endpoint
// for a kept address, in another order, next to a new one; what it learnt
// stays, for the same picker and for a new one (the proxy recreating it).
func TestStateSurvivesSwap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		eps := newEps("a", "slow")
		lat := fixed(map[string]time.Duration{"a": time.Millisecond, "slow": 50 * time.Millisecond})
		// Two workers on two endpoints: both always busy, so slow is
		// sampled however much P2C avoids it.
		simulate(t, NewPeakEWMA(seeded(12)), eps, 2, 0, time.Second, lat)
		slow := eps[1]
		before, ok := slow.latency(slow.since(time.Now()), float64(DefaultDecay))
		if !ok || before < float64(40*time.Millisecond) {
			t.Fatalf("after round robin, slow's estimate = %v (sampled %v), want ~50ms", time.Duration(before), ok)
		}
		swapped := []*Endpoint{NewEndpoint("new"), slow, eps[0]}
		after, ok := slow.latency(slow.since(time.Now()), float64(DefaultDecay))
		if !ok || after != before {
			t.Fatalf("swap changed slow's estimate: %v -> %v", time.Duration(before), time.Duration(after))
		}
		lat = fixed(map[string]time.Duration{"a": time.Millisecond, "new": time.Millisecond, "slow": 50 * time.Millisecond})
		counts := simulate(t, NewPeakEWMA(seeded(9)), swapped, 4, 0, 5*time.Second, lat)
		if s := share(counts, "slow"); s > 0.02 {
			t.Fatalf("after the swap, slow got %.1f%%, want <= 2%%: its estimate must carry over (counts %v)", 100*s, counts)
		}
	})
}
