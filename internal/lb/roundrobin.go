package lb

import (
	"sync/atomic"
	"time"
)

// RoundRobinPicker cycles through the endpoints with one atomic counter; it
// keeps no state of its own per endpoint, so changing eps between calls
// costs nothing. Its calls still feed the endpoints' latency and failure
// state, so a switch to another policy starts from fresh data.
type RoundRobinPicker struct {
	next  atomic.Uint64
	learn learning
}

// NewRoundRobin returns a lock-free round-robin Picker.
func NewRoundRobin() *RoundRobinPicker { return &RoundRobinPicker{learn: defaultLearning()} }

// Pick returns the next endpoint in turn, skipping those in tried.
func (r *RoundRobinPicker) Pick(_ *Request, eps, tried []*Endpoint) (Call, bool) {
	n := uint64(len(eps))
	if n == 0 {
		return Call{}, false
	}
	i := (r.next.Add(1) - 1) % n
	for range n {
		if e := eps[i]; !isTried(tried, e) {
			return e.start(&r.learn, time.Now()), true
		}
		if i++; i == n {
			i = 0
		}
	}
	return Call{}, false
}
