package lb

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"testing/synctest"
	"time"
)

// TestSlowStartRamp: a new endpoint's share grows linearly with its age
// over the window, from 10% of a full share, then stays full; the mature
// endpoints share the rest evenly.
func TestSlowStartRamp(t *testing.T) {
	const window = time.Minute
	for _, policy := range []Policy{Random, RoundRobin, LeastRequest, PeakEWMA} {
		t.Run(string(policy), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				eps := numbered("old", 4)
				time.Sleep(window) // the old ones are past their window
				young := NewEndpoint("young")
				eps = append(eps, young)
				p := mustPicker(t, Config{Policy: policy, SlowStart: window}, eps)
				start := time.Now()
				for _, age := range []time.Duration{0, window / 20, window / 4, window / 2, 3 * window / 4, window, 2 * window} {
					time.Sleep(time.Until(start.Add(age)))
					w := min(1, max(0.1, float64(age)/float64(window)))
					want := w / (4 + w)
					got := youngShare(p, eps, young, 8000)
					if math.Abs(got-want) > 0.25*want+0.01 {
						t.Fatalf("at age %v the new endpoint drew %.3f of picks, want %.3f (weight %.2f)", age, got, want, w)
					}
				}
			})
		})
	}
}

func youngShare(p Picker, eps []*Endpoint, young *Endpoint, n int) float64 {
	hits := 0
	for range n {
		c, _ := p.Pick(nil, eps, nil)
		if c.Endpoint() == young {
			hits++
		}
		c.Done(Abandoned)
	}
	return float64(hits) / float64(n)
}

// TestSlowStartHashing: under a hashing picker a new endpoint takes its keys
// over gradually (about weight × its keys at each age), a key it took stays
// with it, and no other key moves.
func TestSlowStartHashing(t *testing.T) {
	const window = time.Minute
	rs := keyed(20000)
	ages := []time.Duration{0, window / 4, window / 2, 3 * window / 4, window}
	for _, policy := range []Policy{RingHash, Maglev} {
		t.Run(string(policy), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				eps := numbered("10.0.0.", 4)
				time.Sleep(window)
				young := NewEndpoint("10.0.0.9")
				eps = append(eps, young)
				p := mustPicker(t, Config{Policy: policy, Hash: HashKey{HashHeader, "x-user"}, SlowStart: window}, eps)
				start := time.Now()
				at := make([][]string, len(ages))
				for i, age := range ages {
					time.Sleep(time.Until(start.Add(age)))
					at[i] = assign(t, p, eps, rs)
				}
				final := at[len(at)-1]
				own := 0
				for _, a := range final {
					if a == young.Addr() {
						own++
					}
				}
				for j, age := range ages[:len(ages)-1] {
					held := 0
					for i, a := range at[j] {
						switch {
						case a == young.Addr():
							held++
							if at[j+1][i] != a {
								t.Fatalf("at age %v key %d is on the new endpoint, then leaves it", age, i)
							}
						case final[i] != young.Addr() && a != final[i]:
							t.Fatalf("at age %v key %d is on %s, later on %s", age, i, a, final[i])
						}
					}
					w := max(0.1, float64(age)/float64(window))
					if f := float64(held) / float64(own); math.Abs(f-w) > 0.05 {
						t.Fatalf("at age %v the new endpoint holds %.3f of its keys, want %.2f", age, f, w)
					}
				}
			})
		})
	}
}

// TestSlowStartTogether: endpoints that joined together (a proxy's first
// view of a service, a deploy that replaced every replica) share evenly at
// once; only one younger than the rest is held back, relative to them.
func TestSlowStartTogether(t *testing.T) {
	const window = time.Minute
	for _, policy := range []Policy{Random, RoundRobin, LeastRequest, PeakEWMA} {
		t.Run(string(policy), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				eps := numbered("new", 4)
				p := mustPicker(t, Config{Policy: policy, SlowStart: window}, eps)
				for _, e := range eps {
					if got := youngShare(p, eps, e, 8000); math.Abs(got-0.25) > 0.03 {
						t.Fatalf("%s drew %.3f of picks, want 0.25: they joined together", e.Addr(), got)
					}
				}
				time.Sleep(window / 2)
				late := append(slices.Clone(eps), NewEndpoint("late"))
				// Weight 0.1 against 0.5 each: 0.2/(4+0.2).
				if got, want := youngShare(p, late, late[4], 8000), 0.2/4.2; math.Abs(got-want) > 0.25*want+0.01 {
					t.Fatalf("the late endpoint drew %.3f, want %.3f", got, want)
				}
			})
		})
	}
}

// TestSlowStartTogetherCheap: endpoints ramping together cost no extra
// draws: a pick draws once, as without slow start, instead of rejecting
// most draws (and scanning) because every weight is small.
func TestSlowStartTogetherCheap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		eps := numbered("new", 100)
		p := mustPicker(t, Config{Policy: Random, SlowStart: time.Minute}, eps).(*RandomPicker)
		draws := 0
		p.s.intN = func(n int) int { draws++; return rand.IntN(n) }
		for range 1000 {
			c, _ := p.Pick(nil, eps, nil)
			c.Done(Abandoned)
		}
		if draws > 1000 {
			t.Fatalf("1000 picks made %d random draws, want 1000", draws)
		}
	})
}
