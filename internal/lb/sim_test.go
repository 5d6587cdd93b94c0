package lb

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

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

// or makes a fixed behaviour answer d for addresses it does not list.
func (f behaviour) or(d time.Duration) behaviour {
	return func(a string, el time.Duration) (time.Duration, Outcome) {
		if got, o := f(a, el); got > 0 {
			return got, o
		}
		return d, Success
	}
}
