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

// Pick returns the next endpoint in turn, skipping those in tried.
func (r *RoundRobinPicker) Pick(_ *Request, eps, tried []*Endpoint) (Call, bool) {
	n := uint64(len(eps))
	if n == 0 {
		return Call{}, false
	}
	i := (r.next.Add(1) - 1) % n
	for range n {
		if e := eps[i]; !isTried(tried, e) {
			e.inflight.Add(1)
			return Call{ep: e}, true
		}
		if i++; i == n {
			i = 0
		}
	}
	return Call{}, false
}
