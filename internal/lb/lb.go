// Package lb holds the proxy's endpoint pickers.
//
// The proxy owns the balancing state: one *Endpoint per (service, address),
// kept while the address stays in its config and passed, as the same pointer,
// in every new snapshot's slice. A Picker is stateless apart from its own
// cursor, random source or (hashing pickers) the ring or table built from the
// endpoint set, so it can be swapped (a policy change) without losing what
// the endpoints have learnt, and picking takes no global lock and looks
// nothing up in a map.
//
// Every picker skips endpoints that are ejected (Endpoint.Eject, outlier
// detection) as it skips those already tried, unless nothing else is left.
// With a slow-start window, an endpoint younger than the window (counted
// from NewEndpoint, when the proxy first saw it) weighs in proportion to its
// age, from 10% of a full weight (Envoy's aggression 1.0 and
// min_weight_percent 10), relative to the oldest endpoint of the set: a new
// endpoint among old ones ramps up, endpoints that arrived together share
// evenly at once. Hashing pickers ramp by moving a new endpoint's keys to it
// gradually.
package lb

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Request is what a picker may inspect about the request (to hash on).
type Request struct {
	Method, Authority, Path string
	// RawQuery is the query without '?', still escaped.
	RawQuery string
	Header   http.Header // read-only
	// Source is the caller's SPIFFE ID; outbound, the proxy's own.
	Source string
	// Now, when not zero, is the time of the pick: a caller that has read
	// the clock anyway (the proxy, at a request's start) passes it, and the
	// picker reads no clock of its own (~66 ns a read on a VM).
	Now time.Time
}

// now is the pick's time: r.Now, or the clock.
func (r *Request) now() time.Time {
	if r != nil && !r.Now.IsZero() {
		return r.Now
	}
	return time.Now()
}

// newGate is the gate of one pick; it takes the request's clock reading,
// if any, so that an ejection check reads none.
func newGate(r *Request, eps, tried []*Endpoint) gate {
	g := gate{eps: eps, tried: tried}
	if r != nil && !r.Now.IsZero() {
		g.setNow(r.Now)
	}
	return g
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
	// tried. An ejected endpoint counts as tried unless every endpoint is
	// ejected or tried: then Pick chooses among the ejected, untried ones.
	// r may be nil. eps is only read, and must not be
	// changed in place while pickers use it (a picker may remember facts
	// about the slice it last saw, by its address): a new endpoint set is a
	// new slice, as each snapshot's is.
	Pick(r *Request, eps []*Endpoint, tried []*Endpoint) (c Call, ok bool)
}

// Policy names a load-balancing algorithm.
type Policy string

const (
	// PeakEWMA is power-of-two-choices over peak-EWMA latency (the default).
	PeakEWMA Policy = "p2c-ewma"
	// RoundRobin cycles through the endpoints.
	RoundRobin Policy = "round-robin"
	// Random picks uniformly at random.
	Random Policy = "random"
	// LeastRequest is power-of-two-choices over in-flight requests.
	LeastRequest Policy = "least-request"
	// RingHash is consistent hashing on a ring (Karger; Envoy's ring_hash).
	RingHash Policy = "ring-hash"
	// Maglev is consistent hashing by a Maglev lookup table.
	Maglev Policy = "maglev"
)

// Policies lists every valid Policy, the default first.
func Policies() []Policy {
	return []Policy{PeakEWMA, RoundRobin, Random, LeastRequest, RingHash, Maglev}
}

// Hashing reports whether p is a consistent-hashing policy: its picker is
// built for one endpoint set (NewPicker's eps).
func (p Policy) Hashing() bool { return p == RingHash || p == Maglev }

// HashKind says what a hashing picker hashes.
type HashKind uint8

const (
	// HashNone: no key; every request is balanced randomly.
	HashNone HashKind = iota
	// HashHeader: the first value of the header Name.
	HashHeader
	// HashCookie: the value of the cookie Name.
	HashCookie
	// HashQuery: the first value of the query parameter Name (unescaped).
	HashQuery
	// HashSource: Request.Source, the caller's identity.
	HashSource
)

// HashKey is what a hashing picker hashes. A request without the key (no
// such header, cookie or parameter) is balanced randomly.
type HashKey struct {
	Kind HashKind
	Name string // header (any case), cookie or query parameter name
}

// Config is a picker's whole configuration; comparable, so a caller can
// keep a picker while its Config is unchanged.
type Config struct {
	Policy Policy // "": PeakEWMA
	// Hash is what RingHash and Maglev hash; other policies ignore it.
	Hash HashKey
	// SlowStart is the window over which a new endpoint's share ramps up;
	// 0: off.
	SlowStart time.Duration
}

// ErrUnknownPolicy is returned for a policy not in Policies.
var ErrUnknownPolicy = errors.New("lb: unknown policy")

// New returns a Picker for p with default settings. An empty policy means
// the default, PeakEWMA. A hashing policy gets no key and no endpoints, so
// it balances randomly: use NewPicker.
func New(p Policy) (Picker, error) {
	return NewPicker(Config{Policy: p}, nil)
}

// NewPicker returns a Picker for cfg. A hashing picker builds its ring or
// table from eps here, once: it must then be given the same endpoints in the
// same order (a slice of another length is balanced randomly), so build a
// new one when the endpoint set changes. Other pickers ignore eps.
func NewPicker(cfg Config, eps []*Endpoint) (Picker, error) {
	if cfg.SlowStart < 0 {
		return nil, fmt.Errorf("lb: slow start %v is negative", cfg.SlowStart)
	}
	if cfg.Hash.Kind > HashSource {
		return nil, fmt.Errorf("lb: unknown hash kind %d", cfg.Hash.Kind)
	}
	if cfg.Hash.Kind != HashNone && cfg.Hash.Kind != HashSource && cfg.Hash.Name == "" {
		return nil, errors.New("lb: hash key needs a name")
	}
	switch cfg.Policy {
	case PeakEWMA, "":
		p := NewPeakEWMA()
		p.s.window = cfg.SlowStart
		return p, nil
	case RoundRobin:
		return &RoundRobinPicker{s: newSampler(cfg.SlowStart)}, nil
	case Random:
		return &RandomPicker{s: newSampler(cfg.SlowStart)}, nil
	case LeastRequest:
		return &LeastRequestPicker{s: newSampler(cfg.SlowStart)}, nil
	case RingHash:
		return newRingHash(cfg, eps), nil
	case Maglev:
		return newMaglev(cfg, eps), nil
	}
	return nil, fmt.Errorf("%w %q (valid: %s)", ErrUnknownPolicy, cfg.Policy, policyList())
}

func policyList() string {
	var b strings.Builder
	for i, p := range Policies() {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(string(p))
	}
	return b.String()
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
