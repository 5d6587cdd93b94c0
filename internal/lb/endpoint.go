package lb

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of what an endpoint learns from its calls. The decay is Linkerd's
// and Finagle's.
const (
	DefaultDecay         = 10 * time.Second
	DefaultFailureWeight = 0.5
)

// minCost keeps an estimate that decayed to ~0 from erasing the in-flight
// factor: after a long idle spell every endpoint is equal and load decides.
const minCost = float64(time.Microsecond)

// maxFail caps the failure score below 1 so the cost stays finite (at most
// ~10^6 times the latency cost) and the score can decay back.
const maxFail = 1 - 1.0/1024

// minFail is the failure score below which it is forgotten (a cost 3%
// higher). Without it an endpoint that never succeeded and failed once would
// lose every comparison under serial traffic for ever: it borrows its
// rival's estimate, so only the score tells them apart. With it, it ties
// again (and is probed) some 40s (tau*ln(0.5*64)) after its last failure.
const minFail = 1.0 / 64

// learning is how a call's outcome updates its endpoint; each learning
// picker holds one and every Call it makes points at it.
type learning struct {
	tau        float64 // ns: time constant of the latency and failure decays
	failWeight float64 // in [0, 1): how far one outcome moves the failure score
}

// Endpoint is one address's balancing state: in-flight count, peak-EWMA
// latency, and a decaying failure score. It outlives config swaps: the proxy
// keeps one *Endpoint per (service, address) while the address stays in its
// config and passes the same pointer in every new snapshot's slice. Safe for
// concurrent use: Pick reads atomics only; Done takes the endpoint's own
// mutex for its read-modify-write.
type Endpoint struct {
	addr string
	born time.Time // origin of the stamps below; carries the monotonic clock

	inflight atomic.Int64

	// Written under mu, read lock-free. Each value is stored after its stamp
	// and loaded before it, so a reader racing a writer may pair an old value
	// with a new stamp (decaying it slightly too little: the endpoint looks a
	// little worse for one pick) but never a new value with an old stamp.
	mu        sync.Mutex
	rtt       atomic.Uint64 // float64 bits, ns; 0 until the first sample
	rttStamp  atomic.Int64  // ns since born
	fail      atomic.Uint64 // float64 bits in [0, maxFail]
	failStamp atomic.Int64  // ns since born
	failing   bool          // guarded by mu: the last charged outcome failed

	// ejected holds the end of the current ejection, nil if the endpoint
	// was never ejected. A pointer, not a stamp, so that the common case (no
	// ejection) costs pickers one load and no clock read.
	ejected atomic.Pointer[time.Time]
}

// NewEndpoint returns the state of a new endpoint at addr (host:port).
func NewEndpoint(addr string) *Endpoint {
	return &Endpoint{addr: addr, born: time.Now()}
}

// Addr returns the endpoint's address as given to NewEndpoint.
func (e *Endpoint) Addr() string { return e.addr }

// Eject takes e out of every picker's choice until t (outlier detection).
// A later Eject replaces the earlier one, so Eject(time.Time{}) (or any past
// time) returns e at once. Pickers still choose an ejected endpoint when
// every endpoint they could choose is ejected or tried: ejection never
// empties a service.
func (e *Endpoint) Eject(until time.Time) {
	e.ejected.Store(&until)
}

// Ejected reports whether e is ejected at now.
func (e *Endpoint) Ejected(now time.Time) bool {
	u := e.ejected.Load()
	return u != nil && now.Before(*u)
}

// since converts t to the endpoint's stamp scale.
func (e *Endpoint) since(t time.Time) int64 { return int64(t.Sub(e.born)) }

// decay is the weight left to a value stored elapsed ns ago.
func decay(elapsed int64, tau float64) float64 {
	if elapsed <= 0 {
		return 1
	}
	x := float64(elapsed) / tau
	if x < 1e-3 {
		// Under load samples are µs apart and tau is seconds: the series
		// to x² is exact to 2e-10 and costs a fraction of an Exp.
		return 1 - x + x*x/2
	}
	return math.Exp(-x)
}

// latency returns the RTT estimate in ns at now (in stamp scale), decayed
// toward zero for the time since the last sample, and whether there has
// been a sample at all.
func (e *Endpoint) latency(now int64, tau float64) (float64, bool) {
	v := math.Float64frombits(e.rtt.Load())
	if v == 0 {
		return 0, false
	}
	return max(v*decay(now-e.rttStamp.Load(), tau), minCost), true
}

// failScore returns the failure score at now, decayed toward zero for the
// time since the last outcome.
func (e *Endpoint) failScore(now int64, tau float64) float64 {
	f := math.Float64frombits(e.fail.Load())
	if f == 0 {
		return 0 // the common case skips an Exp
	}
	if f *= decay(now-e.failStamp.Load(), tau); f < minFail {
		return 0
	}
	return f
}

// observe records a charged outcome: rtt ns, ending at now.
func (e *Endpoint) observe(now int64, rtt float64, failed bool, l *learning) {
	// 0 means "never sampled"; a zero RTT (a fake clock) is still a sample.
	rtt = max(rtt, 1)
	e.mu.Lock()
	defer e.mu.Unlock()
	old := math.Float64frombits(e.rtt.Load())
	switch {
	case failed && old == 0:
		// A failure is no latency sample: the endpoint keeps borrowing
		// its rival's estimate, scaled up by its failure score.
	case failed:
		// A failure is no latency sample, only a lower bound: a slow one
		// (a timeout) raises the estimate at once, a fast one (a 503) must
		// not lower it. Nor may a run of failures let it decay as if the
		// endpoint were idle, or a failing endpoint would look ever faster:
		// the run holds the estimate it found when it began. (Decayed then,
		// so that an old peak does not come back.)
		held := old
		if !e.failing {
			held *= decay(now-e.rttStamp.Load(), l.tau)
		}
		e.setRTT(max(held, rtt), now)
	case old == 0 || rtt > old:
		// Peak sensitivity: a slower sample replaces the estimate at once.
		e.setRTT(rtt, now)
	default:
		w := decay(now-e.rttStamp.Load(), l.tau)
		e.setRTT(old*w+rtt*(1-w), now)
	}
	e.failing = failed
	f := e.failScore(now, l.tau)
	if failed {
		f = min(f+l.failWeight*(1-f), maxFail)
	} else {
		f *= 1 - l.failWeight
	}
	e.failStamp.Store(now)
	e.fail.Store(math.Float64bits(f))
}

// setRTT stores the estimate after its stamp (see Endpoint). Callers hold mu.
func (e *Endpoint) setRTT(v float64, now int64) {
	e.rttStamp.Store(now)
	e.rtt.Store(math.Float64bits(v))
}

// Call is one attempt in flight (a small value: picking allocates nothing).
type Call struct {
	ep    *Endpoint
	start time.Time
	learn *learning // nil: the picker only counts in-flight calls
}

// start counts a new attempt on e, begun at t.
func (e *Endpoint) start(l *learning, t time.Time) Call {
	e.inflight.Add(1)
	return Call{ep: e, start: t, learn: l}
}

// Endpoint returns the endpoint the call goes to (nil for the zero Call).
func (c Call) Endpoint() *Endpoint { return c.ep }

// Done must be called exactly once per Call with the attempt's outcome. It
// releases the in-flight slot and, unless the outcome is Abandoned (or the
// picker uses no feedback), charges the latency and the outcome to the
// endpoint. Done on the zero Call (from a Pick that returned ok=false) does
// nothing.
func (c Call) Done(o Outcome) { c.done(o, time.Time{}) }

// DoneAt is Done for an attempt that ended at now, a clock reading the
// caller made anyway (the proxy's at the response header): the endpoint's
// latency sample is now − the pick's time, and no clock is read.
func (c Call) DoneAt(o Outcome, now time.Time) { c.done(o, now) }

// done is Done and DoneAt; a zero now means the clock, read only when the
// outcome is charged.
func (c Call) done(o Outcome, now time.Time) {
	e := c.ep
	if e == nil {
		return
	}
	e.inflight.Add(-1)
	if c.learn == nil || (o != Success && o != Failure) {
		return
	}
	if now.IsZero() {
		now = time.Now()
	}
	e.observe(e.since(now), float64(now.Sub(c.start)), o == Failure, c.learn)
}
