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

// TestLatencyEstimate pins the peak-EWMA arithmetic on one endpoint.
func TestLatencyEstimate(t *testing.T) {
	ms := float64(time.Millisecond)
	tau := float64(DefaultDecay)
	type sample struct {
		at     time.Duration // when the call ended
		rtt    float64
		failed bool
	}
	tests := []struct {
		name    string
		samples []sample
		at      time.Duration // when the estimate is read
		want    float64       // 0: not sampled
	}{
		{"none", nil, 0, 0},
		{"first", []sample{{0, 10 * ms, false}}, 0, 10 * ms},
		{"peak", []sample{{0, 10 * ms, false}, {time.Millisecond, 50 * ms, false}}, time.Millisecond, 50 * ms},
		{"faster sample moves by the elapsed weight", []sample{{0, 50 * ms, false}, {DefaultDecay, 10 * ms, false}}, DefaultDecay,
			50*ms/math.E + 10*ms*(1-1/math.E)},
		{"idle decay", []sample{{0, 10 * ms, false}}, DefaultDecay, 10 * ms / math.E},
		{"decays to the floor", []sample{{0, 10 * ms, false}}, 100 * DefaultDecay, minCost},
		{"failure alone is no sample", []sample{{0, 5 * ms, true}}, 0, 0},
		{"fast failure does not lower", []sample{{0, 10 * ms, false}, {0, 0.1 * ms, true}}, 0, 10 * ms},
		{"a failure run holds the estimate", []sample{{0, 10 * ms, false}, {DefaultDecay, 0.1 * ms, true}, {3 * DefaultDecay, 0.1 * ms, true}}, 3 * DefaultDecay, 10 * ms / math.E},
		{"it decays between failures (probes come)", []sample{{0, 10 * ms, false}, {DefaultDecay, 0.1 * ms, true}}, 2 * DefaultDecay, 10 * ms / math.E / math.E},
		{"a success ends the run", []sample{{0, 10 * ms, false}, {DefaultDecay, 0.1 * ms, true}, {DefaultDecay, 10 * ms / math.E, false}, {2 * DefaultDecay, 0.1 * ms, true}}, 2 * DefaultDecay, 10 * ms / math.E / math.E},
		{"an old peak does not come back", []sample{{0, 100 * ms, false}, {6 * DefaultDecay, 0.1 * ms, true}}, 6 * DefaultDecay, 100 * ms * math.Exp(-6)},
		{"slow failure raises", []sample{{0, ms, false}, {time.Second, 1000 * ms, true}}, time.Second, 1000 * ms},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := NewEndpoint("a")
			l := &learning{tau: tau, failWeight: DefaultFailureWeight}
			for _, s := range tt.samples {
				e.observe(int64(s.at), s.rtt, s.failed, l)
			}
			got, ok := e.latency(int64(tt.at), tau)
			if ok != (tt.want != 0) || math.Abs(got-tt.want) > 1e-9*tt.want {
				t.Fatalf("estimate = %v (sampled %v), want %v", time.Duration(got), ok, time.Duration(tt.want))
			}
		})
	}
}

// TestDecaySeries: the short series decay uses for small steps matches
// math.Exp to 1e-9, on both sides of where it switches.
func TestDecaySeries(t *testing.T) {
	tau := float64(DefaultDecay)
	for _, x := range []float64{1e-9, 1e-6, 1e-4, 5e-4, 9.99e-4, 1e-3, 1.01e-3, 0.5, 3} {
		elapsed := int64(x * tau)
		want := math.Exp(-float64(elapsed) / tau)
		if got := decay(elapsed, tau); math.Abs(got-want) > 1e-9*want {
			t.Errorf("decay at x=%g: %v, want %v", x, got, want)
		}
	}
}
