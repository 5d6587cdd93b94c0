// Package lb holds the proxy's endpoint pickers.
package lb

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
