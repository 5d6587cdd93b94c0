package lb

import (
	"slices"
	"testing"
	"testing/synctest"
	"time"
)

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

func TestPeakEWMAOptions(t *testing.T) {
	tests := []struct {
		name     string
		opts     []PeakEWMAOption
		tau      time.Duration
		failWght float64
	}{
		{"defaults", nil, DefaultDecay, DefaultFailureWeight},
		{"decay", []PeakEWMAOption{WithDecay(time.Second)}, time.Second, DefaultFailureWeight},
		{"zero decay keeps the default", []PeakEWMAOption{WithDecay(0)}, DefaultDecay, DefaultFailureWeight},
		{"negative decay keeps the default", []PeakEWMAOption{WithDecay(-time.Second)}, DefaultDecay, DefaultFailureWeight},
		{"failure weight", []PeakEWMAOption{WithFailureWeight(0.25)}, DefaultDecay, 0.25},
		{"failure weight off", []PeakEWMAOption{WithFailureWeight(0)}, DefaultDecay, 0},
		{"failure weight 1 keeps the default", []PeakEWMAOption{WithFailureWeight(1)}, DefaultDecay, DefaultFailureWeight},
		{"negative failure weight keeps the default", []PeakEWMAOption{WithFailureWeight(-0.1)}, DefaultDecay, DefaultFailureWeight},
		{"nil rand keeps the default", []PeakEWMAOption{WithRand(nil)}, DefaultDecay, DefaultFailureWeight},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewPeakEWMA(tt.opts...)
			if p.learn.tau != float64(tt.tau) || p.learn.failWeight != tt.failWght || p.s.intN == nil {
				t.Fatalf("tau %v, failure weight %v (rand set %v); want %v, %v", time.Duration(p.learn.tau), p.learn.failWeight, p.s.intN != nil, tt.tau, tt.failWght)
			}
		})
	}
}

// TestPeakEWMAFailureWeightOff shows what the failure score is for: without
// it, an endpoint failing as fast as its peers answer keeps its full share.
func TestPeakEWMAFailureWeightOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		eps := numbered("ep", 3)
		bh := func(a string, _ time.Duration) (time.Duration, Outcome) {
			if a == "ep0" {
				return 900 * time.Microsecond, Failure
			}
			return time.Millisecond, Success
		}
		counts := simulate(t, NewPeakEWMA(seeded(14), WithFailureWeight(0)), eps, 4, 2*time.Second, 20*time.Second, bh)
		if s := share(counts, "ep0"); s < 0.25 {
			t.Fatalf("with the failure score off, the failing endpoint got %.1f%%, want its ~33%% (counts %v)", 100*s, counts)
		}
	})
}

// TestPeakEWMAPassedClock: a pick at Request.Now and a DoneAt charge the
// latency between the two readings given, not the clock's: the proxy
// passes readings it made anyway.
func TestPeakEWMAPassedClock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := NewEndpoint("a:1")
		p := NewPeakEWMA()
		start := time.Now().Add(time.Second) // not the clock's time
		c, ok := p.Pick(&Request{Now: start}, []*Endpoint{e}, nil)
		if !ok {
			t.Fatal("no pick")
		}
		c.DoneAt(Success, start.Add(40*time.Millisecond))
		got, ok := e.latency(e.since(start.Add(40*time.Millisecond)), p.learn.tau)
		if !ok || got < float64(39*time.Millisecond) || got > float64(41*time.Millisecond) {
			t.Fatalf("estimate %v after a 40ms call between passed readings, want 40ms", time.Duration(got))
		}
	})
}

// TestGatePassedClock: an ejection is judged at Request.Now, for every
// picker: before its end the endpoint is passed over, after it it is not.
func TestGatePassedClock(t *testing.T) {
	for _, pol := range Policies() {
		t.Run(string(pol), func(t *testing.T) {
			eps := numbered("ep", 2)
			p, err := NewPicker(Config{Policy: pol}, eps)
			if err != nil {
				t.Fatal(err)
			}
			until := time.Now().Add(time.Hour)
			eps[0].Eject(until)
			for range 50 {
				c, _ := p.Pick(&Request{Now: until.Add(-time.Second)}, eps, nil)
				c.Done(Abandoned)
				if c.Endpoint() == eps[0] {
					t.Fatalf("picked ejected ep0 at a Now before its ejection ends")
				}
			}
			seen := false
			for range 200 {
				c, _ := p.Pick(&Request{Now: until.Add(time.Second)}, eps, nil)
				c.Done(Abandoned)
				seen = seen || c.Endpoint() == eps[0]
			}
			if !seen {
				t.Fatalf("ep0 never picked at a Now after its ejection ended")
			}
		})
	}
}
