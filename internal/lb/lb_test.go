package lb

import (
	"errors"
	"fmt"
	"math/rand/v2"
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

// latencyFunc gives the simulated service time of one request to addr at
// elapsed time since the simulation started.
type latencyFunc func(addr string, elapsed time.Duration) (time.Duration, error)

// simulate runs a closed loop of workers against p in synctest's fake time
// for dur and returns how many picks each address got at or after from.
// Must run inside a synctest bubble.
func simulate(p Picker, addrs []string, workers int, from, dur time.Duration, lat latencyFunc) map[string]int {
	var (
		mu     sync.Mutex
		counts = make(map[string]int)
		wg     sync.WaitGroup
	)
	start := time.Now()
	for range workers {
		wg.Go(func() {
			for {
				el := time.Since(start)
				if el >= dur {
					return
				}
				i, done := p.Pick(addrs)
				a := addrs[i]
				if el >= from {
					mu.Lock()
					counts[a]++
					mu.Unlock()
				}
				d, err := lat(a, el)
				time.Sleep(d)
				done(err)
			}
		})
	}
	wg.Wait()
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

func fixed(m map[string]time.Duration) latencyFunc {
	return func(a string, _ time.Duration) (time.Duration, error) { return m[a], nil }
}

func TestPeakEWMAAvoidsSlowEndpoint(t *testing.T) {
	tests := []struct {
		name     string
		addrs    []string
		lat      map[string]time.Duration
		slow     string
		maxShare float64 // of the slow endpoint; round robin would give 1/len(addrs)
	}{
		{"2 endpoints 10x", []string{"a", "b"}, map[string]time.Duration{"a": time.Millisecond, "b": 10 * time.Millisecond}, "b", 0.10},
		{"3 endpoints 50x", []string{"a", "b", "c"}, map[string]time.Duration{"a": time.Millisecond, "b": time.Millisecond, "c": 50 * time.Millisecond}, "c", 0.05},
		{"10 endpoints one 20x", []string{"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"}, map[string]time.Duration{
			"0": 2 * time.Millisecond, "1": 2 * time.Millisecond, "2": 2 * time.Millisecond, "3": 2 * time.Millisecond, "4": 2 * time.Millisecond,
			"5": 2 * time.Millisecond, "6": 2 * time.Millisecond, "7": 2 * time.Millisecond, "8": 2 * time.Millisecond, "9": 40 * time.Millisecond,
		}, "9", 0.03},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				counts := simulate(NewPeakEWMA(), tt.addrs, 4, 2*time.Second, 20*time.Second, fixed(tt.lat))
				if s := share(counts, tt.slow); s > tt.maxShare {
					t.Errorf("slow endpoint %s got %.1f%% of traffic, want <= %.1f%% (counts %v)", tt.slow, 100*s, 100*tt.maxShare, counts)
				}
			})
		})
	}
}

func TestPeakEWMAAllEndpointsGetTraffic(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Ten endpoints from 1ms to 10ms: faster ones get more, none starves.
		addrs := make([]string, 10)
		lat := make(map[string]time.Duration)
		for i := range addrs {
			addrs[i] = fmt.Sprint("ep", i)
			lat[addrs[i]] = time.Duration(i+1) * time.Millisecond
		}
		counts := simulate(NewPeakEWMA(), addrs, 8, 2*time.Second, 30*time.Second, fixed(lat))
		for _, a := range addrs {
			if s := share(counts, a); s < 0.005 {
				t.Errorf("endpoint %s (%v) got %.2f%%, want >= 0.5%% (counts %v)", a, lat[a], 100*s, counts)
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
		lat := func(a string, el time.Duration) (time.Duration, error) {
			if a == "b" && el < 20*time.Second {
				return 50 * time.Millisecond, nil
			}
			return time.Millisecond, nil
		}
		p := NewPeakEWMA()
		before := simulate(p, []string{"a", "b"}, 4, 5*time.Second, 20*time.Second, lat)
		if s := share(before, "b"); s > 0.05 {
			t.Fatalf("while slow, b got %.1f%%, want <= 5%% (counts %v)", 100*s, before)
		}
		// Continue with the same picker, b now fast; measure the last 20s of 80s.
		after := simulate(p, []string{"a", "b"}, 4, 60*time.Second, 80*time.Second, func(a string, el time.Duration) (time.Duration, error) {
			return lat(a, el+20*time.Second)
		})
		if s := share(after, "b"); s < 0.35 || s > 0.65 {
			t.Fatalf("after recovering, b got %.1f%%, want 35..65%% (counts %v)", 100*s, after)
		}
	})
}

func TestPeakEWMAErrorPenalty(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// b answers fast but fails every request: without the penalty it
		// would look like the best endpoint.
		lat := func(a string, _ time.Duration) (time.Duration, error) {
			if a == "b" {
				return 100 * time.Microsecond, errors.New("503")
			}
			return time.Millisecond, nil
		}
		counts := simulate(NewPeakEWMA(), []string{"a", "b", "c"}, 4, 2*time.Second, 20*time.Second, lat)
		if s := share(counts, "b"); s > 0.05 {
			t.Fatalf("failing endpoint got %.1f%%, want <= 5%% (counts %v)", 100*s, counts)
		}
		noPenalty := simulate(NewPeakEWMA(WithErrorPenalty(0)), []string{"a", "b", "c"}, 4, 2*time.Second, 20*time.Second, lat)
		if s := share(noPenalty, "b"); s < 0.34 {
			t.Fatalf("with the penalty off, the fast failing endpoint got %.1f%%, want > 34%% (counts %v)", 100*s, noPenalty)
		}
	})
}

func TestPeakEWMAEqualLatencySpreadsEvenly(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		addrs := []string{"a", "b", "c", "d"}
		counts := simulate(NewPeakEWMA(), addrs, 8, time.Second, 10*time.Second, fixed(map[string]time.Duration{
			"a": 5 * time.Millisecond, "b": 5 * time.Millisecond, "c": 5 * time.Millisecond, "d": 5 * time.Millisecond,
		}))
		for _, a := range addrs {
			if s := share(counts, a); s < 0.20 || s > 0.30 {
				t.Errorf("endpoint %s got %.1f%%, want 20..30%% (counts %v)", a, 100*s, counts)
			}
		}
	})
}

func TestPeakEWMAPrefersLessLoaded(t *testing.T) {
	tests := []struct {
		name    string
		sampled bool // give both endpoints an equal latency sample first
	}{
		{"new endpoints", false},
		{"equal latency", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p := NewPeakEWMA()
				addrs := []string{"a", "b"}
				if tt.sampled {
					for range 2 {
						_, d1 := p.Pick(addrs)
						_, d2 := p.Pick(addrs)
						time.Sleep(10 * time.Millisecond)
						d1(nil)
						d2(nil)
					}
				}
				// Hold 10 requests open: with two endpoints P2C always
				// compares both, so in-flight load must alternate them.
				counts := make([]int, 2)
				var dones []func(error)
				for range 10 {
					i, d := p.Pick(addrs)
					counts[i]++
					dones = append(dones, d)
				}
				if counts[0] != 5 || counts[1] != 5 {
					t.Fatalf("in-flight picks = %v, want [5 5]", counts)
				}
				// Load one endpoint more: the next picks go to the other.
				i, d := p.Pick(addrs)
				dones = append(dones, d)
				i2, d2 := p.Pick(addrs)
				dones = append(dones, d2)
				if i2 == i {
					t.Fatalf("picked %d twice although it carried one more request", i)
				}
				for _, d := range dones {
					d(nil)
				}
			})
		})
	}
}

func TestPeakEWMANewEndpointGetsTraffic(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := NewPeakEWMA()
		lat := fixed(map[string]time.Duration{"a": 2 * time.Millisecond, "b": 2 * time.Millisecond, "c": 2 * time.Millisecond})
		simulate(p, []string{"a", "b"}, 4, 0, 10*time.Second, lat)
		counts := simulate(p, []string{"a", "b", "c"}, 4, 0, 5*time.Second, lat)
		if s := share(counts, "c"); s < 0.25 {
			t.Fatalf("new endpoint c got %.1f%%, want >= 25%% (counts %v)", 100*s, counts)
		}
	})
}

func TestPeakEWMASingleEndpointNoRandomness(t *testing.T) {
	p := NewPeakEWMA(WithRand(rand.New(panicSource{})))
	for range 100 {
		i, done := p.Pick([]string{"only"})
		if i != 0 {
			t.Fatalf("Pick = %d, want 0", i)
		}
		done(nil)
	}
}

type panicSource struct{}

func (panicSource) Uint64() uint64 { panic("random choice with one endpoint") }

func TestPeakEWMAStateBoundedUnderChurn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := NewPeakEWMA(WithStateTTL(time.Minute))
		var pending []func(error)
		maxTracked := 0
		// Every call sees a new set of 3 addresses; some requests finish
		// after their address is gone.
		for n := range 5000 {
			addrs := []string{fmt.Sprint("a", n), fmt.Sprint("b", n), fmt.Sprint("c", n)}
			i, done := p.Pick(addrs)
			if i < 0 || i >= len(addrs) {
				t.Fatalf("Pick = %d for %d addrs", i, len(addrs))
			}
			pending = append(pending, done)
			if len(pending) > 50 {
				pending[0](nil)
				pending = pending[1:]
			}
			maxTracked = max(maxTracked, p.tracked())
			if n%100 == 0 {
				time.Sleep(time.Second)
			}
		}
		for _, d := range pending {
			d(errors.New("late"))
		}
		if maxTracked > 2*3+64+2 {
			t.Fatalf("state map grew to %d entries under churn, want bounded near 2*len(addrs)+64", maxTracked)
		}
		// A stable set: stale entries go after the TTL.
		stable := []string{"x", "y"}
		for range 10 {
			_, d := p.Pick(stable)
			d(nil)
		}
		time.Sleep(2 * time.Minute)
		_, d := p.Pick(stable)
		d(nil)
		if got := p.tracked(); got != 2 {
			t.Fatalf("after the TTL, tracked = %d, want 2", got)
		}
	})
}

func TestPickersConcurrent(t *testing.T) {
	sets := [][]string{{"a"}, {"a", "b"}, {"a", "b", "c", "d"}, {"c", "d", "e"}}
	for _, policy := range Policies() {
		t.Run(string(policy), func(t *testing.T) {
			p, err := New(policy)
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			for g := range 8 {
				wg.Go(func() {
					for n := range 2000 {
						addrs := sets[(g+n)%len(sets)]
						i, done := p.Pick(addrs)
						if i < 0 || i >= len(addrs) {
							t.Errorf("Pick = %d for %d addrs", i, len(addrs))
							return
						}
						if n%7 == 0 {
							done(errors.New("x"))
						} else {
							done(nil)
						}
					}
				})
			}
			wg.Wait()
			if pe, ok := p.(*PeakEWMAPicker); ok {
				pe.mu.Lock()
				for a, ep := range pe.eps {
					if ep.inflight != 0 {
						t.Errorf("%s: inflight = %d after all calls finished", a, ep.inflight)
					}
				}
				pe.mu.Unlock()
			}
		})
	}
}

func TestRoundRobinEven(t *testing.T) {
	tests := []struct {
		n, goroutines, perG int
	}{
		{1, 1, 10},
		{3, 1, 300},
		{3, 6, 1000},
		{7, 4, 700},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("n=%d/g=%d", tt.n, tt.goroutines), func(t *testing.T) {
			addrs := make([]string, tt.n)
			p := NewRoundRobin()
			counts := make([]int, tt.n)
			var mu sync.Mutex
			var wg sync.WaitGroup
			for range tt.goroutines {
				wg.Go(func() {
					local := make([]int, tt.n)
					for range tt.perG {
						i, done := p.Pick(addrs)
						local[i]++
						done(nil)
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

func TestRoundRobinCycles(t *testing.T) {
	p := NewRoundRobin()
	addrs := []string{"a", "b", "c"}
	var got []int
	for range 6 {
		i, _ := p.Pick(addrs)
		got = append(got, i)
	}
	if fmt.Sprint(got) != "[0 1 2 0 1 2]" {
		t.Fatalf("order = %v, want [0 1 2 0 1 2]", got)
	}
	// Shrinking the set never yields an index out of range.
	for range 10 {
		if i, _ := p.Pick(addrs[:2]); i > 1 {
			t.Fatalf("Pick = %d for 2 addrs", i)
		}
	}
}

func TestPickAllocations(t *testing.T) {
	addrs := []string{"a", "b", "c", "d"}
	for _, policy := range Policies() {
		p, _ := New(policy)
		for range 10 { // warm the per-address state and the call pool
			_, d := p.Pick(addrs)
			d(nil)
		}
		allocs := testing.AllocsPerRun(1000, func() {
			_, d := p.Pick(addrs)
			d(nil)
		})
		if allocs > 0 {
			t.Errorf("%s: %.1f allocs per Pick+done, want 0", policy, allocs)
		}
	}
}

func benchmarkPicker(b *testing.B, newPicker func() Picker) {
	for _, n := range []int{2, 10, 100} {
		addrs := make([]string, n)
		for i := range addrs {
			addrs[i] = fmt.Sprintf("127.0.%d.%d:8080", i/256, i%256)
		}
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			p := newPicker()
			b.ReportAllocs()
			for b.Loop() {
				_, done := p.Pick(addrs)
				done(nil)
			}
		})
		b.Run(fmt.Sprintf("n=%d/parallel", n), func(b *testing.B) {
			p := newPicker()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					_, done := p.Pick(addrs)
					done(nil)
				}
			})
		})
	}
}

func BenchmarkPeakEWMA(b *testing.B) {
	benchmarkPicker(b, func() Picker { return NewPeakEWMA() })
}

func BenchmarkRoundRobin(b *testing.B) {
	benchmarkPicker(b, func() Picker { return NewRoundRobin() })
}
