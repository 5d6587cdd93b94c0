package lb

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
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
		{"3 endpoints 1ms to 50ms", 3, ms, 50 * ms, 8},
		{"3 endpoints 1ms to 10ms", 3, ms, 10 * ms, 8},
		{"10 endpoints 2ms to 40ms", 10, 2 * ms, 40 * ms, 8},
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
