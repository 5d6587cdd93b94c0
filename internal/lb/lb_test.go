package lb

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

func TestNew(t *testing.T) {
	tests := []struct {
		policy  Policy
		want    string
		wantErr string
	}{
		{policy: PeakEWMA, want: "*lb.PeakEWMAPicker"},
		{policy: "", want: "*lb.PeakEWMAPicker"},
		{policy: RoundRobin, want: "*lb.RoundRobinPicker"},
		{policy: "random", wantErr: `unknown policy "random" (valid: p2c-ewma, round-robin)`},
		{policy: "P2C-EWMA", wantErr: "unknown policy"},
	}
	for _, tt := range tests {
		t.Run(string(tt.policy), func(t *testing.T) {
			p, err := New(tt.policy)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("New(%q) error = %v, want containing %q", tt.policy, err, tt.wantErr)
				}
				if p != nil {
					t.Fatalf("New(%q) returned a picker with an error", tt.policy)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := fmt.Sprintf("%T", p); got != tt.want {
				t.Fatalf("New(%q) = %s, want %s", tt.policy, got, tt.want)
			}
		})
	}
}

// newEps returns one new Endpoint per address.
func newEps(addrs ...string) []*Endpoint {
	eps := make([]*Endpoint, len(addrs))
	for i, a := range addrs {
		eps[i] = NewEndpoint(a)
	}
	return eps
}

// numbered returns n endpoints named prefix0, prefix1, ...
func numbered(prefix string, n int) []*Endpoint {
	addrs := make([]string, n)
	for i := range addrs {
		addrs[i] = fmt.Sprint(prefix, i)
	}
	return newEps(addrs...)
}

// seeded returns a deterministic random source for WithRand. It is not safe
// for concurrent use, which simulate does not need.
func seeded(seed uint64) PeakEWMAOption {
	return WithRand(rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)).IntN)
}

// behaviour gives the service time and outcome of one attempt on addr that
// starts at elapsed time since the simulation started.
type behaviour func(addr string, elapsed time.Duration) (time.Duration, Outcome)

// fixed is a behaviour where every endpoint succeeds after its own latency.
func fixed(m map[string]time.Duration) behaviour {
	return func(a string, _ time.Duration) (time.Duration, Outcome) { return m[a], Success }
}

// simulate runs a closed loop of workers against p for dur of synctest's fake
// time, starting at its current time, and returns how many picks each
// address got at or after from. It runs in one goroutine, advancing the
// clock from one completion to the next, so with a seeded picker every run is
// the same. Must run inside a synctest bubble; latencies must be > 0.
func simulate(t *testing.T, p Picker, eps []*Endpoint, workers int, from, dur time.Duration, bh behaviour) map[string]int {
	t.Helper()
	type job struct {
		c   Call
		end time.Duration
		o   Outcome
	}
	counts := make(map[string]int)
	start := time.Now()
	jobs := make([]job, workers)
	launch := func(k int) {
		el := time.Since(start)
		c, ok := p.Pick(nil, eps, nil)
		if !ok {
			t.Fatalf("Pick found nothing in %d endpoints", len(eps))
		}
		if el >= from {
			counts[c.Endpoint().Addr()]++
		}
		d, o := bh(c.Endpoint().Addr(), el)
		jobs[k] = job{c: c, end: el + d, o: o}
	}
	for k := range jobs {
		launch(k)
	}
	for {
		k := 0
		for i := range jobs {
			if jobs[i].end < jobs[k].end {
				k = i
			}
		}
		if jobs[k].end >= dur {
			break
		}
		time.Sleep(jobs[k].end - time.Since(start))
		jobs[k].c.Done(jobs[k].o)
		launch(k)
	}
	// Let the last calls finish so their state is complete.
	time.Sleep(dur - time.Since(start))
	for _, j := range jobs {
		j.c.Done(Abandoned)
	}
	return counts
}

func share(counts map[string]int, addr string) float64 {
	total := 0
	for _, c := range counts {
		total += c
	}
	if total == 0 {
		return 0
	}
	return float64(counts[addr]) / float64(total)
}

func TestPeakEWMAAvoidsSlowEndpoint(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name     string
		lat      map[string]time.Duration
		slow     string
		maxShare float64 // of the slow endpoint; round robin would give 1/len(lat)
	}{
		{"2 endpoints 10x", map[string]time.Duration{"a": ms, "b": 10 * ms}, "b", 0.10},
		{"3 endpoints 50x", map[string]time.Duration{"a": ms, "b": ms, "c": 50 * ms}, "c", 0.05},
		{"10 endpoints one 20x", map[string]time.Duration{
			"0": 2 * ms, "1": 2 * ms, "2": 2 * ms, "3": 2 * ms, "4": 2 * ms,
			"5": 2 * ms, "6": 2 * ms, "7": 2 * ms, "8": 2 * ms, "9": 40 * ms,
		}, "9", 0.03},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var addrs []string
				for a := range tt.lat {
					addrs = append(addrs, a)
				}
				slices.Sort(addrs)
				counts := simulate(t, NewPeakEWMA(seeded(1)), newEps(addrs...), 4, 2*time.Second, 20*time.Second, fixed(tt.lat))
				if s := share(counts, tt.slow); s > tt.maxShare {
					t.Errorf("slow endpoint %s got %.1f%% of traffic, want <= %.1f%% (counts %v)", tt.slow, 100*s, 100*tt.maxShare, counts)
				}
			})
		})
	}
}

// TestPeakEWMAPeak makes a fast endpoint slow and checks that traffic leaves
// it within a few requests: the first slow answer must replace the estimate
// at once. A plain moving average (weight exp(-elapsed/tau), elapsed ~1ms)
// would need thousands of slow samples to notice.
func TestPeakEWMAPeak(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name     string
		n        int
		fast     time.Duration
		slow     time.Duration
		maxPicks int // of the turned endpoint in the 2s after it turned
	}{
		{"3 endpoints 1ms to 50ms", 3, ms, 50 * ms, 4},
		{"3 endpoints 1ms to 10ms", 3, ms, 10 * ms, 4},
		{"10 endpoints 2ms to 40ms", 10, 2 * ms, 40 * ms, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				eps := numbered("ep", tt.n)
				turn := 5 * time.Second
				bh := func(a string, el time.Duration) (time.Duration, Outcome) {
					if a == "ep0" && el >= turn {
						return tt.slow, Success
					}
					return tt.fast, Success
				}
				p := NewPeakEWMA(seeded(2))
				before := simulate(t, p, eps, 4, 0, turn, bh)
				if s := share(before, "ep0"); s < 0.5/float64(tt.n) {
					t.Fatalf("while fast, ep0 got %.1f%%, want its share (counts %v)", 100*s, before)
				}
				after := simulate(t, p, eps, 4, 0, 2*time.Second, func(a string, el time.Duration) (time.Duration, Outcome) {
					return bh(a, el+turn)
				})
				if after["ep0"] > tt.maxPicks {
					t.Fatalf("after turning slow, ep0 got %d picks in 2s, want <= %d (counts %v)", after["ep0"], tt.maxPicks, after)
				}
			})
		})
	}
}

func TestPeakEWMAAllEndpointsGetTraffic(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Ten endpoints from 1ms to 10ms: faster ones get more, none starves.
		eps := numbered("ep", 10)
		lat := make(map[string]time.Duration)
		for i, e := range eps {
			lat[e.Addr()] = time.Duration(i+1) * time.Millisecond
		}
		counts := simulate(t, NewPeakEWMA(seeded(3)), eps, 8, 2*time.Second, 30*time.Second, fixed(lat))
		for _, e := range eps {
			if s := share(counts, e.Addr()); s < 0.005 {
				t.Errorf("endpoint %s (%v) got %.2f%%, want >= 0.5%% (counts %v)", e.Addr(), lat[e.Addr()], 100*s, counts)
			}
		}
		if counts["ep0"] <= 3*counts["ep9"] {
			t.Errorf("1ms endpoint got %d picks, 10ms endpoint %d: want the fast one well ahead", counts["ep0"], counts["ep9"])
		}
	})
}

func TestPeakEWMARecoversWhenEndpointSpeedsUp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// b is 50x slower for the first 20s, then as fast as a.
		eps := newEps("a", "b")
		slow := func(a string, _ time.Duration) (time.Duration, Outcome) {
			if a == "b" {
				return 50 * time.Millisecond, Success
			}
			return time.Millisecond, Success
		}
		p := NewPeakEWMA(seeded(4))
		before := simulate(t, p, eps, 4, 5*time.Second, 20*time.Second, slow)
		if s := share(before, "b"); s > 0.05 {
			t.Fatalf("while slow, b got %.1f%%, want <= 5%% (counts %v)", 100*s, before)
		}
		// Continue with the same state, b now fast; measure the last 20s of 60s.
		after := simulate(t, p, eps, 4, 40*time.Second, 60*time.Second, fixed(map[string]time.Duration{"a": time.Millisecond, "b": time.Millisecond}))
		if s := share(after, "b"); s < 0.35 || s > 0.65 {
			t.Fatalf("after recovering, b got %.1f%%, want 35..65%% (counts %v)", 100*s, after)
		}
	})
}

// TestPeakEWMAFailure: an endpoint that fails (fast, as a peer proxy's 503
// for a dead app, or slowly, as a timeout) draws well under 1/(2n) of the
// traffic once it has failed a few times, and gets its share back once it
// succeeds again.
func TestPeakEWMAFailure(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name     string
		n        int
		peer     time.Duration // healthy endpoints' latency
		fail     time.Duration // the failing endpoint's time to fail
		maxShare float64
		healed   time.Duration // how long after healing its share is back
	}{
		// The case: with three replicas, a fast 503 drew 17 of 30.
		{"fast 503 among 3", 3, ms, 100 * time.Microsecond, 0.01, 10 * time.Second},
		// Slow peers: an additive latency penalty (100ms) would lose here.
		// Little traffic (13 req/s), so the probes of the failing endpoint,
		// one every few seconds, weigh more.
		{"fast 503 among 3 slow peers", 3, 300 * ms, ms, 0.03, 10 * time.Second},
		// A timeout is a latency sample too: the 1s peak takes about
		// tau*ln(1s/peer cost) to decay after the endpoint heals.
		{"timeouts among 3", 3, ms, time.Second, 0.01, 60 * time.Second},
		{"fast 503 among 10", 10, 2 * ms, 100 * time.Microsecond, 0.01, 10 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				eps := numbered("ep", tt.n)
				healAt := 30 * time.Second
				bh := func(a string, el time.Duration) (time.Duration, Outcome) {
					if a != "ep0" {
						return tt.peer, Success
					}
					if el < healAt {
						return tt.fail, Failure
					}
					return tt.peer, Success
				}
				p := NewPeakEWMA(seeded(5))
				// A warm-up where every endpoint succeeds, so the failing
				// one starts with a good latency estimate.
				simulate(t, p, eps, 4, 0, 2*time.Second, fixed(nil).or(tt.peer))
				sick := simulate(t, p, eps, 4, 2*time.Second, healAt, bh)
				if s := share(sick, "ep0"); s > tt.maxShare {
					t.Errorf("failing endpoint got %.2f%% (1/(2n) = %.1f%%), want <= %.1f%% (counts %v)", 100*s, 50/float64(tt.n), 100*tt.maxShare, sick)
				}
				healed := simulate(t, p, eps, 4, tt.healed, tt.healed+20*time.Second, fixed(nil).or(tt.peer))
				if s, fair := share(healed, "ep0"), 1/float64(tt.n); s < 0.7*fair || s > 1.3*fair {
					t.Errorf("healed endpoint got %.1f%%, want about %.1f%% (counts %v)", 100*s, 100*fair, healed)
				}
			})
		})
	}
}

// or makes a fixed behaviour answer d for addresses it does not list.
func (f behaviour) or(d time.Duration) behaviour {
	return func(a string, el time.Duration) (time.Duration, Outcome) {
		if got, o := f(a, el); got > 0 {
			return got, o
		}
		return d, Success
	}
}

// TestPeakEWMADeadReplicaSerial is the report: three replicas, one
// whose app died (its proxy answers 503 at once), 30 requests one after the
// other. It used to draw 17 of them.
func TestPeakEWMADeadReplicaSerial(t *testing.T) {
	for seed := range uint64(20) {
		synctest.Test(t, func(t *testing.T) {
			eps := newEps("a", "b", "dead")
			bh := func(a string, _ time.Duration) (time.Duration, Outcome) {
				if a == "dead" {
					return 200 * time.Microsecond, Failure
				}
				return 2 * time.Millisecond, Success
			}
			p := NewPeakEWMA(seeded(seed))
			got := 0
			for range 30 {
				c, _ := p.Pick(nil, eps, nil)
				d, o := bh(c.Endpoint().Addr(), 0)
				if c.Endpoint().Addr() == "dead" {
					got++
				}
				time.Sleep(d)
				c.Done(o)
			}
			if got > 2 {
				t.Errorf("seed %d: the dead replica drew %d of 30 requests, want <= 2", seed, got)
			}
		})
	}
}

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

func TestPeakEWMAEqualLatencySpreadsEvenly(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		eps := newEps("a", "b", "c", "d")
		counts := simulate(t, NewPeakEWMA(seeded(6)), eps, 8, time.Second, 10*time.Second, fixed(nil).or(5*time.Millisecond))
		for _, e := range eps {
			if s := share(counts, e.Addr()); s < 0.20 || s > 0.30 {
				t.Errorf("endpoint %s got %.1f%%, want 20..30%% (counts %v)", e.Addr(), 100*s, counts)
			}
		}
	})
}

func TestPeakEWMAPrefersLessLoaded(t *testing.T) {
	tests := []struct {
		name    string
		sampled int // how many of the two get a 10ms latency sample first
	}{
		{"new endpoints", 0},
		// The new one borrows its rival's estimate, so load decides;
		// with no estimate of its own it must not look infinitely fast.
		{"one new", 1},
		{"equal latency", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p := NewPeakEWMA(seeded(7))
				eps := newEps("a", "b")
				for _, e := range eps[:tt.sampled] {
					c, _ := p.Pick(nil, []*Endpoint{e}, nil)
					time.Sleep(10 * time.Millisecond)
					c.Done(Success)
				}
				// Hold 10 calls open: with two endpoints P2C always
				// compares both, so in-flight load must alternate them.
				counts := map[string]int{}
				var calls []Call
				for range 10 {
					c, _ := p.Pick(nil, eps, nil)
					counts[c.Endpoint().Addr()]++
					calls = append(calls, c)
				}
				if counts["a"] != 5 || counts["b"] != 5 {
					t.Fatalf("in-flight picks = %v, want 5 each", counts)
				}
				// Load one endpoint more: the next pick goes to the other.
				c1, _ := p.Pick(nil, eps, nil)
				c2, _ := p.Pick(nil, eps, nil)
				calls = append(calls, c1, c2)
				if c1.Endpoint() == c2.Endpoint() {
					t.Fatalf("picked %s twice although it carried one more call", c1.Endpoint().Addr())
				}
				for _, c := range calls {
					c.Done(Success)
				}
			})
		})
	}
}

func TestPeakEWMANewEndpointGetsTraffic(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := NewPeakEWMA(seeded(8))
		eps := newEps("a", "b")
		lat := fixed(nil).or(2 * time.Millisecond)
		simulate(t, p, eps, 4, 0, 10*time.Second, lat)
		counts := simulate(t, p, append(eps, NewEndpoint("c")), 4, 0, 5*time.Second, lat)
		if s := share(counts, "c"); s < 0.25 {
			t.Fatalf("new endpoint c got %.1f%%, want >= 25%% (counts %v)", 100*s, counts)
		}
	})
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

// TestTriedExcluded: neither picker returns an endpoint in tried, and each
// says ok=false when nothing is left.
func TestTriedExcluded(t *testing.T) {
	eps := newEps("a", "b", "c", "d")
	a, b, c, d := eps[0], eps[1], eps[2], eps[3]
	stranger := NewEndpoint("a") // same address, other state: not tried
	tests := []struct {
		name   string
		eps    []*Endpoint
		tried  []*Endpoint
		want   []*Endpoint // every one of these is picked, nothing else; none: ok=false
		picker []string    // limit to these policies; all when empty
	}{
		{name: "empty", eps: nil, want: nil},
		{name: "empty with tried", eps: []*Endpoint{}, tried: []*Endpoint{a}, want: nil},
		{name: "single", eps: []*Endpoint{a}, want: []*Endpoint{a}},
		{name: "single tried", eps: []*Endpoint{a}, tried: []*Endpoint{a}, want: nil},
		{name: "all tried", eps: eps, tried: []*Endpoint{d, b, a, c}, want: nil},
		{name: "none tried", eps: eps, want: eps},
		{name: "one tried", eps: eps, tried: []*Endpoint{b}, want: []*Endpoint{a, c, d}},
		{name: "first tried", eps: eps, tried: []*Endpoint{a}, want: []*Endpoint{b, c, d}},
		{name: "last tried", eps: eps, tried: []*Endpoint{d}, want: []*Endpoint{a, b, c}},
		{name: "one left", eps: eps, tried: []*Endpoint{a, b, d}, want: []*Endpoint{c}},
		{name: "two left", eps: eps, tried: []*Endpoint{c, a}, want: []*Endpoint{b, d}},
		{name: "tried twice", eps: eps, tried: []*Endpoint{c, c}, want: []*Endpoint{a, b, d}},
		{name: "tried not in eps", eps: []*Endpoint{a, b}, tried: []*Endpoint{stranger, c}, want: []*Endpoint{a, b}},
	}
	for _, tt := range tests {
		for _, policy := range Policies() {
			t.Run(tt.name+"/"+string(policy), func(t *testing.T) {
				p := newSeeded(policy, 10)
				got := map[*Endpoint]int{}
				for range 400 {
					c, ok := p.Pick(nil, tt.eps, tt.tried)
					if ok != (len(tt.want) > 0) {
						t.Fatalf("ok = %v, want %v", ok, len(tt.want) > 0)
					}
					if !ok {
						if c.Endpoint() != nil {
							t.Fatalf("ok=false with endpoint %s", c.Endpoint().Addr())
						}
						return
					}
					got[c.Endpoint()]++
					// Not charged, so the endpoints stay equal and P2C
					// must reach every one.
					c.Done(Abandoned)
				}
				for e := range got {
					if !slices.Contains(tt.want, e) {
						t.Fatalf("picked %s (tried %v)", e.Addr(), addrsOf(tt.tried))
					}
				}
				for _, e := range tt.want {
					if got[e] == 0 {
						t.Fatalf("never picked %s among %v (tried %v)", e.Addr(), addrsOf(tt.eps), addrsOf(tt.tried))
					}
				}
			})
		}
	}
}

// newSeeded returns a picker for policy, deterministic for PeakEWMA.
func newSeeded(policy Policy, seed uint64) Picker {
	if policy == PeakEWMA {
		return NewPeakEWMA(seeded(seed))
	}
	p, _ := New(policy)
	return p
}

func addrsOf(eps []*Endpoint) []string {
	var s []string
	for _, e := range eps {
		s = append(s, e.Addr())
	}
	return s
}

// TestPeakEWMATriedCandidatesDistinct: on a retry P2C still compares two
// distinct untried endpoints; the worse of them is never picked.
func TestPeakEWMATriedCandidatesDistinct(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		eps := newEps("tried", "fast", "slow")
		p := NewPeakEWMA(seeded(11))
		// Give slow a high estimate and fast a low one.
		for _, x := range []struct {
			e *Endpoint
			d time.Duration
		}{{eps[1], time.Millisecond}, {eps[2], 100 * time.Millisecond}} {
			c, _ := p.Pick(nil, []*Endpoint{x.e}, nil)
			time.Sleep(x.d)
			c.Done(Success)
		}
		for range 200 {
			c, _ := p.Pick(nil, eps, eps[:1])
			if c.Endpoint() != eps[1] {
				t.Fatalf("retry picked %s, want fast (the only sensible pair is fast vs slow)", c.Endpoint().Addr())
			}
			c.Done(Abandoned)
		}
	})
}

func TestRoundRobinEven(t *testing.T) {
	tests := []struct {
		n, goroutines, perG int
	}{
		{1, 1, 10},
		{3, 1, 300},
		{3, 6, 1000},
		{7, 4, 700},
		{100, 4, 1000},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("n=%d/g=%d", tt.n, tt.goroutines), func(t *testing.T) {
			eps := numbered("ep", tt.n)
			index := map[*Endpoint]int{}
			for i, e := range eps {
				index[e] = i
			}
			p := NewRoundRobin()
			counts := make([]int, tt.n)
			var mu sync.Mutex
			var wg sync.WaitGroup
			for range tt.goroutines {
				wg.Go(func() {
					local := make([]int, tt.n)
					for range tt.perG {
						c, _ := p.Pick(nil, eps, nil)
						local[index[c.Endpoint()]]++
						c.Done(Success)
					}
					mu.Lock()
					for i, c := range local {
						counts[i] += c
					}
					mu.Unlock()
				})
			}
			wg.Wait()
			total := tt.goroutines * tt.perG
			for i, c := range counts {
				// The counter hands out each value once, so the split is
				// exact up to the remainder.
				if c < total/tt.n || c > total/tt.n+1 {
					t.Fatalf("endpoint %d got %d of %d picks: %v", i, c, total, counts)
				}
			}
		})
	}
}

func TestRoundRobinOrder(t *testing.T) {
	eps := newEps("a", "b", "c", "d")
	tests := []struct {
		name  string
		eps   []*Endpoint
		tried []*Endpoint
		want  string
	}{
		{"cycles", eps, nil, "a b c d a b c d"},
		{"skips one", eps, eps[1:2], "a c c d a c c d"},
		{"skips the last, wrapping", eps, eps[3:], "a b c a a b c a"},
		{"skips a run", eps, eps[1:3], "a d d d a d d d"},
		{"one left", eps, []*Endpoint{eps[0], eps[2], eps[3]}, "b b b b b b b b"},
		{"shrunk set", eps[:2], nil, "a b a b a b a b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewRoundRobin()
			var got []string
			for range 8 {
				c, ok := p.Pick(nil, tt.eps, tt.tried)
				if !ok {
					t.Fatal("ok = false")
				}
				got = append(got, c.Endpoint().Addr())
				c.Done(Success)
			}
			if s := strings.Join(got, " "); s != tt.want {
				t.Fatalf("order = %s, want %s", s, tt.want)
			}
		})
	}
}

func TestPeakEWMASingleEndpointNoRandomness(t *testing.T) {
	p := NewPeakEWMA(WithRand(func(int) int { panic("random choice with one endpoint") }))
	eps := newEps("only", "tried")
	for range 100 {
		for _, tried := range [][]*Endpoint{nil, eps[1:]} {
			c, ok := p.Pick(nil, eps[:1+len(tried)], tried)
			if !ok || c.Endpoint() != eps[0] {
				t.Fatalf("Pick = %v, %v; want only", c.Endpoint(), ok)
			}
			c.Done(Success)
		}
	}
}

// TestPickersConcurrent runs many goroutines picking from changing slices,
// with retries and every outcome, under -race; afterwards no call is left
// in flight.
func TestPickersConcurrent(t *testing.T) {
	all := numbered("ep", 6)
	sets := [][]*Endpoint{all[:1], all[:2], all[:4], all[3:], all}
	for _, policy := range Policies() {
		t.Run(string(policy), func(t *testing.T) {
			p, err := New(policy)
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			for g := range 8 {
				wg.Go(func() {
					var tried []*Endpoint
					for n := range 3000 {
						eps := sets[(g+n)%len(sets)]
						if n%5 == 0 {
							tried = tried[:0]
						}
						c, ok := p.Pick(nil, eps, tried)
						if !ok {
							tried = tried[:0]
							continue
						}
						if isTried(tried, c.Endpoint()) || !slices.Contains(eps, c.Endpoint()) {
							t.Errorf("picked %s from %v, tried %v", c.Endpoint().Addr(), addrsOf(eps), addrsOf(tried))
							return
						}
						tried = append(tried, c.Endpoint())
						c.Done(Outcome(n % 3))
					}
				})
			}
			wg.Wait()
			for _, e := range all {
				if n := e.inflight.Load(); n != 0 {
					t.Errorf("%s: in flight = %d after every call finished", e.Addr(), n)
				}
			}
		})
	}
}

func TestPickAllocations(t *testing.T) {
	eps := numbered("ep", 4)
	tried := eps[1:2]
	for _, policy := range Policies() {
		p, _ := New(policy)
		for _, tr := range [][]*Endpoint{nil, tried} {
			allocs := testing.AllocsPerRun(1000, func() {
				c, _ := p.Pick(nil, eps, tr)
				c.Done(Success)
			})
			if allocs > 0 {
				t.Errorf("%s (tried %d): %.1f allocs per Pick+Done, want 0", policy, len(tr), allocs)
			}
		}
	}
}

func benchmarkPicker(b *testing.B, newPicker func() Picker) {
	for _, n := range []int{3, 100} {
		eps := make([]*Endpoint, n)
		for i := range eps {
			eps[i] = NewEndpoint(fmt.Sprintf("127.0.%d.%d:8080", i/256, i%256))
		}
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			p := newPicker()
			b.ReportAllocs()
			for b.Loop() {
				c, _ := p.Pick(nil, eps, nil)
				c.Done(Success)
			}
		})
		b.Run(fmt.Sprintf("n=%d/parallel", n), func(b *testing.B) {
			p := newPicker()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					c, _ := p.Pick(nil, eps, nil)
					c.Done(Success)
				}
			})
		})
		b.Run(fmt.Sprintf("n=%d/retry", n), func(b *testing.B) {
			p := newPicker()
			tried := eps[:1]
			b.ReportAllocs()
			for b.Loop() {
				c, _ := p.Pick(nil, eps, tried)
				c.Done(Failure)
			}
		})
	}
}

func BenchmarkPeakEWMA(b *testing.B) {
	benchmarkPicker(b, func() Picker { return NewPeakEWMA() })
}

func BenchmarkRoundRobin(b *testing.B) {
	benchmarkPicker(b, func() Picker { return NewRoundRobin() })
}

// TestPeakEWMAProbesFailedNewEndpoint: an endpoint that failed its first
// call (connect refused while it started) and is healthy since is probed
// again after a while even under serial traffic, where its rivals never
// carry load: it borrows their estimate, so only its failure score holds it
// back, and that must fade out.
func TestPeakEWMAProbesFailedNewEndpoint(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		eps := newEps("a", "b", "late")
		first := true
		bh := func(a string, _ time.Duration) (time.Duration, Outcome) {
			if a == "late" && first {
				first = false
				return 100 * time.Microsecond, Failure
			}
			return time.Millisecond, Success
		}
		p := NewPeakEWMA(seeded(13))
		counts := simulate(t, p, eps, 1, 60*time.Second, 70*time.Second, bh)
		if first {
			t.Fatal("late was never picked")
		}
		if s := share(counts, "late"); s < 0.2 {
			t.Fatalf("a minute after its only failure, late got %.1f%%, want >= 20%% (counts %v)", 100*s, counts)
		}
	})
}
