package lb

import "sync/atomic"

// RoundRobinPicker cycles through the endpoints with one atomic counter. It
// uses no feedback, so its calls only count as in flight: it reads no clock
// (unless slow start is on) and charges no latency or failure (a later
// switch to PeakEWMA learns within a few calls, the first slow or failed one
// being enough). Under slow start a young endpoint lets its turn pass to the
// next one with probability 1 - weight.
type RoundRobinPicker struct {
	next atomic.Uint64
	s    sampler
}

// NewRoundRobin returns a lock-free round-robin Picker.
func NewRoundRobin() *RoundRobinPicker { return &RoundRobinPicker{} }

// Pick returns the next endpoint in turn, skipping those in tried and
// those ejected.
func (r *RoundRobinPicker) Pick(req *Request, eps, tried []*Endpoint) (Call, bool) {
	n := len(eps)
	if n == 0 {
		return Call{}, false
	}
	g := newGate(req, eps, tried)
	e, i := g.from(eps, int((r.next.Add(1)-1)%uint64(n)))
	// A young endpoint passes its turn on; after a full round of passes
	// (every one young) the last one takes it.
	for k := 1; e != nil && k < n && !r.s.admit(e, &g); k++ {
		e, i = g.from(eps, (i+1)%n)
	}
	if e == nil {
		return Call{}, false
	}
	e.inflight.Add(1)
	return Call{ep: e}, true
}
