package lb

import "time"

// gate decides which endpoints one pick may choose: never one in tried, and
// an ejected one only once nothing else is left (panic mode, as Envoy's:
// ejection never empties a service). A value on the picker's stack; it reads
// the clock at most once, and only if it meets an endpoint that was ever
// ejected.
type gate struct {
	eps      []*Endpoint // the set picked from (slow start weighs against it)
	tried    []*Endpoint
	now      time.Time
	haveNow  bool
	panicked bool // every endpoint is ejected or tried: ejected ones are fine
	// heaviest is the slow-start weight of eps's oldest endpoint, -1 when
	// none is ramping, 0 until the sampler looks (sampler.share).
	heaviest float64
}

// ok reports whether the pick may choose e.
func (g *gate) ok(e *Endpoint) bool {
	if isTried(g.tried, e) {
		return false
	}
	return g.panicked || !g.ejected(e)
}

// ejected reports whether e is ejected now.
func (g *gate) ejected(e *Endpoint) bool {
	u := e.ejected.Load()
	if u == nil {
		return false
	}
	return g.clock().Before(*u)
}

// clock returns the pick's time, reading the clock the first time only.
func (g *gate) clock() time.Time {
	if !g.haveNow {
		g.now, g.haveNow = time.Now(), true
	}
	return g.now
}

// setNow gives the gate a clock reading the picker made anyway.
func (g *gate) setNow(t time.Time) { g.now, g.haveNow = t, true }

// count returns how many of eps the gate lets through, entering panic mode
// first if none would be otherwise.
func (g *gate) count(eps []*Endpoint) int {
	m := g.countOK(eps)
	if m == 0 && !g.panicked {
		g.panicked = true
		m = g.countOK(eps)
	}
	return m
}

func (g *gate) countOK(eps []*Endpoint) int {
	m := 0
	for _, e := range eps {
		if g.ok(e) {
			m++
		}
	}
	return m
}

// nth returns the k-th endpoint of eps (from 0) that the gate lets through.
func (g *gate) nth(eps []*Endpoint, k int) *Endpoint {
	for _, e := range eps {
		if !g.ok(e) {
			continue
		}
		if k == 0 {
			return e
		}
		k--
	}
	return nil
}

// from returns the first endpoint of eps at or after index i (wrapping) that
// the gate lets through, and its index, entering panic mode if none would be
// otherwise; nil if even then none is left.
func (g *gate) from(eps []*Endpoint, i int) (*Endpoint, int) {
	for {
		n := len(eps)
		for range n {
			if e := eps[i]; g.ok(e) {
				return e, i
			}
			if i++; i == n {
				i = 0
			}
		}
		if g.panicked {
			return nil, 0
		}
		g.panicked = true
	}
}
