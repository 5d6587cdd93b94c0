package lb

import "sync/atomic"

// RoundRobinPicker cycles through the endpoints with one atomic counter. It
// uses no feedback, so its calls only count as in flight: it reads no clock
// and charges no latency or failure (a later switch to PeakEWMA learns
// within a few calls, the first slow or failed one being enough).
type RoundRobinPicker struct {
	next atomic.Uint64
}

// NewRoundRobin returns a lock-free round-robin Picker.
func NewRoundRobin() *RoundRobinPicker { return &RoundRobinPicker{} }

// Pick returns the next endpoint in turn, skipping those in tried and
// those ejected.
func (r *RoundRobinPicker) Pick(_ *Request, eps, tried []*Endpoint) (Call, bool) {
	n := uint64(len(eps))
	if n == 0 {
		return Call{}, false
	}
	g := gate{tried: tried}
	e := g.from(eps, int((r.next.Add(1)-1)%n))
	if e == nil {
		return Call{}, false
	}
	e.inflight.Add(1)
	return Call{ep: e}, true
}
