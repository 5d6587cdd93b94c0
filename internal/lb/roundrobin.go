package lb

import "sync/atomic"

// RoundRobinPicker cycles through the endpoints with one atomic counter; it
// keeps no per-address state, so changing addrs between calls costs nothing.
type RoundRobinPicker struct {
	next atomic.Uint64
}

// NewRoundRobin returns a lock-free round-robin Picker.
func NewRoundRobin() *RoundRobinPicker { return &RoundRobinPicker{} }

// Pick returns the next index modulo len(addrs).
func (r *RoundRobinPicker) Pick(addrs []string) (int, func(error)) {
	n := uint64(len(addrs))
	if n <= 1 {
		return 0, nopDone
	}
	return int((r.next.Add(1) - 1) % n), nopDone
}
