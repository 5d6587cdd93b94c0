// Package lb holds the proxy's endpoint pickers.
package lb

import "fmt"

// Picker chooses an endpoint for one request. Implementations keep their own
// per-address state (latency, load) across calls, so the caller keeps one
// Picker per destination and passes the destination's current endpoint
// addresses on every call; addresses that disappear are forgotten.
type Picker interface {
	// Pick returns the index in addrs of the chosen endpoint and a function
	// the caller must call exactly once when the request completes, with
	// the request's error (nil on success). addrs must not be empty.
	Pick(addrs []string) (int, func(err error))
}

// Policy names a load-balancing algorithm.
type Policy string

const (
	// PeakEWMA is power-of-two-choices over peak-EWMA latency (the default).
	PeakEWMA Policy = "p2c-ewma"
	// RoundRobin cycles through the endpoints.
	RoundRobin Policy = "round-robin"
)

// Policies lists every valid Policy, the default first.
func Policies() []Policy { return []Policy{PeakEWMA, RoundRobin} }

// New returns a Picker for p with default settings. An empty policy means
// the default, PeakEWMA.
func New(p Policy) (Picker, error) {
	switch p {
	case PeakEWMA, "":
		return NewPeakEWMA(), nil
	case RoundRobin:
		return NewRoundRobin(), nil
	}
	return nil, fmt.Errorf("lb: unknown policy %q (valid: %s, %s)", p, PeakEWMA, RoundRobin)
}

// nopDone is the completion func of pickers that keep no per-request state.
func nopDone(error) {}
