package lb

import (
	"math/rand/v2"
	"sync/atomic"
	"time"
)

// minWeight is the share a brand-new endpoint draws under slow start, as a
// fraction of a full one (Envoy's min_weight_percent default, 10%): enough
// to warm it up, not enough to flood it.
const minWeight = 0.1

// maxDraws bounds the random draws of one candidate before the sampler
// counts what is left: eight misses in a row mean few endpoints are left
// (a retry over a small set, most ejected) and scanning is cheaper.
const maxDraws = 8

// sampler draws random candidates, in proportion to their slow-start
// weight. Zero window: every endpoint weighs the same and no clock is read.
type sampler struct {
	intN   func(n int) int // in [0, n); safe for concurrent use
	window time.Duration
	// ages caches the oldest and youngest birth of the last endpoint set
	// picked from (with slow start only), so that weights are relative to
	// the heaviest endpoint without a scan per pick.
	ages atomic.Pointer[setAges]
}

// setAges is what slow start knows of one endpoint slice, recognised by
// the address of its first element and its length: the proxy never changes
// a snapshot's slice, it builds a new one.
type setAges struct {
	first            **Endpoint
	n                int
	oldest, youngest time.Time
}

func newSampler(window time.Duration) sampler {
	return sampler{intN: rand.IntN, window: window}
}

// agesOf returns the birth range of eps (non-empty).
func (s *sampler) agesOf(eps []*Endpoint) *setAges {
	if a := s.ages.Load(); a != nil && a.first == &eps[0] && a.n == len(eps) {
		return a
	}
	a := &setAges{first: &eps[0], n: len(eps), oldest: eps[0].born, youngest: eps[0].born}
	for _, e := range eps[1:] {
		if e.born.Before(a.oldest) {
			a.oldest = e.born
		}
		if e.born.After(a.youngest) {
			a.youngest = e.born
		}
	}
	s.ages.Store(a)
	return a
}

// weight returns the slow-start weight of an endpoint born at born, at now,
// in [minWeight, 1]: linear in its age over the window (Envoy's aggression
// 1.0).
func (s *sampler) weight(born, now time.Time) float64 {
	age := now.Sub(born)
	if age >= s.window {
		return 1
	}
	return max(minWeight, float64(age)/float64(s.window))
}

// share returns e's weight relative to the heaviest (oldest) endpoint of
// the pick's set, in (0, 1]: endpoints that joined together share evenly,
// however young, and once the youngest is past the window no endpoint is
// ramping and share is 1 without a look at e. The gate keeps what it
// learnt of the set for the rest of the pick.
func (s *sampler) share(e *Endpoint, g *gate) float64 {
	if s.window <= 0 || len(g.eps) == 0 {
		return 1
	}
	now := g.clock()
	if g.heaviest == 0 {
		a := s.agesOf(g.eps)
		if now.Sub(a.youngest) >= s.window {
			g.heaviest = -1 // nobody is ramping
		} else {
			g.heaviest = s.weight(a.oldest, now)
		}
	}
	if g.heaviest < 0 {
		return 1
	}
	return min(1, s.weight(e.born, now)/g.heaviest)
}

// admit lets a drawn endpoint through with probability its share, so that
// rejection sampling draws each in proportion to it.
func (s *sampler) admit(e *Endpoint, g *gate) bool {
	if s.window <= 0 {
		return true
	}
	w := s.share(e, g)
	return w >= 1 || float64(s.intN(1<<24)) < w*(1<<24)
}

// one returns a random endpoint of eps (g's set) other than x that g lets
// through, drawn in proportion to its share; nil if none is left.
func (s *sampler) one(eps []*Endpoint, g *gate, x *Endpoint) *Endpoint {
	// Draws need two candidates at least: with one left, no randomness.
	if len(eps) >= len(g.tried)+2 {
		for range maxDraws {
			if e := eps[s.intN(len(eps))]; e != x && g.ok(e) && s.admit(e, g) {
				return e
			}
		}
	}
	return s.scan(eps, g, x)
}

// scan is one when tried may leave a single endpoint, or when draws keep
// missing (most are tried or ejected, or young): it counts what is left and
// draws among that, with no randomness when one is left.
func (s *sampler) scan(eps []*Endpoint, g *gate, x *Endpoint) *Endpoint {
	m := 0
	for _, e := range eps {
		if e != x && g.ok(e) {
			m++
		}
	}
	switch m {
	case 0:
		return nil
	case 1:
		return s.nth(eps, g, x, 0)
	}
	for range maxDraws {
		if e := s.nth(eps, g, x, s.intN(m)); s.admit(e, g) {
			return e
		}
	}
	return s.nth(eps, g, x, s.intN(m)) // every one is young: unweighted
}

// nth returns the k-th endpoint of eps (from 0) other than x that g lets
// through.
func (s *sampler) nth(eps []*Endpoint, g *gate, x *Endpoint, k int) *Endpoint {
	for _, e := range eps {
		if e != x && g.ok(e) {
			if k == 0 {
				return e
			}
			k--
		}
	}
	return nil
}

// first returns one candidate, entering g's panic mode when every endpoint
// is ejected or tried.
func (s *sampler) first(eps []*Endpoint, g *gate) *Endpoint {
	if e := s.one(eps, g, nil); e != nil || g.panicked {
		return e
	}
	g.panicked = true
	return s.one(eps, g, nil)
}

// pair returns two distinct candidates for power-of-two-choices: b is nil
// when a is the only one left, both when none is.
func (s *sampler) pair(eps []*Endpoint, g *gate) (a, b *Endpoint) {
	if a = s.first(eps, g); a == nil {
		return nil, nil
	}
	return a, s.one(eps, g, a)
}
