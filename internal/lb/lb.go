// Package lb holds the proxy's endpoint pickers.
//
// The proxy owns the balancing state: one *Endpoint per (service, address),
// kept while the address stays in its config and passed, as the same pointer,
// in every new snapshot's slice. A Picker is stateless apart from its own
// cursor or random source, so it can be swapped (a policy change) without
// losing what the endpoints have learnt, and picking takes no global lock and
// looks nothing up in a map.
package lb

import (
	"fmt"
	"net/http"
)

// Request is what a picker may inspect (to hash on, later) about the request.
type Request struct {
	Method, Authority, Path string
	Header                  http.Header // read-only
}

// Outcome is how an attempt on an endpoint ended, as the balancer learns it.
type Outcome uint8

const (
	// Success: the app answered, not with a 5xx.
	Success Outcome = iota
	// Failure: connect failure, reset, timeout, or a 5xx — including a 5xx
	// the peer proxy generated because its app is unreachable.
	Failure
	// Abandoned: the client went away or the attempt was cancelled. Not
	// charged to the endpoint: no latency sample, no failure.
	Abandoned
)

// Picker chooses an endpoint for one attempt.
type Picker interface {
	// Pick returns a call on one of eps that is not in tried (attempts so far
	// of this request), or ok=false if eps is empty or every endpoint is in
	// tried. r may be nil.
	Pick(r *Request, eps []*Endpoint, tried []*Endpoint) (c Call, ok bool)
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

// isTried reports whether e is in tried. tried holds the attempts of one
// request, a handful at most, so a scan beats any index.
func isTried(tried []*Endpoint, e *Endpoint) bool {
	for _, t := range tried {
		if t == e {
			return true
		}
	}
	return false
}
