package lb

import (
	"math"
	"math/rand/v2"
	"sync"
	"time"
)

// Defaults of the peak-EWMA picker; Linkerd and Finagle use the same decay.
const (
	DefaultDecay        = 10 * time.Second
	DefaultErrorPenalty = 100 * time.Millisecond
	DefaultStateTTL     = time.Minute
)

// minCost keeps an estimate that decayed to ~0 from erasing the in-flight
// factor: after a long idle spell every endpoint is equal and load decides.
const minCost = float64(time.Microsecond)

// PeakEWMAOption configures NewPeakEWMA.
type PeakEWMAOption func(*PeakEWMAPicker)

// WithDecay sets tau, the time constant of the moving average: a sample's
// weight falls to 1/e after tau. Values <= 0 keep DefaultDecay.
func WithDecay(tau time.Duration) PeakEWMAOption {
	return func(p *PeakEWMAPicker) {
		if tau > 0 {
			p.tau = float64(tau)
		}
	}
}

// WithErrorPenalty sets the latency added to a failed request's RTT, so an
// endpoint that fails fast does not look fast. Values < 0 keep the default;
// 0 disables the penalty.
func WithErrorPenalty(d time.Duration) PeakEWMAOption {
	return func(p *PeakEWMAPicker) {
		if d >= 0 {
			p.penalty = float64(d)
		}
	}
}

// WithStateTTL sets how long the state of an address that is no longer
// passed to Pick is kept. Values <= 0 keep DefaultStateTTL.
func WithStateTTL(d time.Duration) PeakEWMAOption {
	return func(p *PeakEWMAPicker) {
		if d > 0 {
			p.ttl = d
		}
	}
}

// WithClock replaces time.Now (tests; time.Now already follows
// testing/synctest's fake clock).
func WithClock(now func() time.Time) PeakEWMAOption {
	return func(p *PeakEWMAPicker) {
		if now != nil {
			p.now = now
		}
	}
}

// WithRand makes the two random choices come from r (deterministic tests).
// r is only used under the picker's lock.
func WithRand(r *rand.Rand) PeakEWMAOption {
	return func(p *PeakEWMAPicker) {
		if r != nil {
			p.intN = r.IntN
		}
	}
}

// PeakEWMAPicker is power-of-two-choices over peak-EWMA latency, as in
// Linkerd and Finagle: pick two distinct endpoints at random and send to the
// one with the lower cost = RTT estimate × (in-flight + 1).
//
// The estimate moves toward each observed RTT with a weight that depends on
// the time since the last update (w = exp(-elapsed/tau)), jumps straight to a
// sample above it (so a slowdown is felt at once), and decays toward zero
// while an endpoint gets no traffic (so an endpoint that was slow is retried
// and can recover). An endpoint with no sample yet borrows the estimate of the
// endpoint it is compared with, so new endpoints compete on load alone.
type PeakEWMAPicker struct {
	tau     float64 // ns
	penalty float64 // ns
	ttl     time.Duration
	now     func() time.Time
	intN    func(int) int
	calls   sync.Pool // *call

	mu        sync.Mutex
	eps       map[string]*endpoint
	lastSweep time.Time
	sweeps    uint64
}

// endpoint is one address's state; fields are guarded by PeakEWMAPicker.mu.
type endpoint struct {
	ewma     float64 // ns; valid when sampled
	stamp    time.Time
	sampled  bool
	inflight int
	lastSeen time.Time
	sweep    uint64 // last sweep that found it in addrs
}

// call is one request in flight. Its done method value is built once per
// pooled call so that Pick allocates nothing in the steady state.
type call struct {
	p     *PeakEWMAPicker
	ep    *endpoint
	start time.Time
	done  func(error)
}

// NewPeakEWMA returns a P2C peak-EWMA Picker.
func NewPeakEWMA(opts ...PeakEWMAOption) *PeakEWMAPicker {
	p := &PeakEWMAPicker{
		tau:     float64(DefaultDecay),
		penalty: float64(DefaultErrorPenalty),
		ttl:     DefaultStateTTL,
		now:     time.Now,
		intN:    rand.IntN,
		eps:     make(map[string]*endpoint),
	}
	for _, o := range opts {
		o(p)
	}
	p.calls.New = func() any {
		c := &call{p: p}
		c.done = c.finish
		return c
	}
	return p
}

// Pick implements Picker. The returned func must be called exactly once.
func (p *PeakEWMAPicker) Pick(addrs []string) (int, func(error)) {
	c := p.calls.Get().(*call)
	now := p.now()
	c.start = now

	p.mu.Lock()
	p.maybeSweep(addrs, now)
	var i int
	var ep *endpoint
	if n := len(addrs); n <= 1 {
		ep = p.lookup(addrs[0], now)
	} else {
		i = p.intN(n)
		j := p.intN(n - 1)
		if j >= i {
			j++
		}
		a, b := p.lookup(addrs[i], now), p.lookup(addrs[j], now)
		ea, eb := a.estimate(now, p.tau), b.estimate(now, p.tau)
		// An endpoint never sampled borrows its rival's estimate.
		if !a.sampled {
			ea = eb
		} else if !b.sampled {
			eb = ea
		}
		ep = a
		// i is already random, so a tie going to i is unbiased.
		if eb*float64(b.inflight+1) < ea*float64(a.inflight+1) {
			i, ep = j, b
		}
	}
	ep.inflight++
	p.mu.Unlock()

	c.ep = ep
	return i, c.done
}

// lookup returns addr's state, creating it. Callers hold p.mu.
func (p *PeakEWMAPicker) lookup(addr string, now time.Time) *endpoint {
	ep := p.eps[addr]
	if ep == nil {
		ep = &endpoint{}
		p.eps[addr] = ep
	}
	ep.lastSeen = now
	return ep
}

// estimate is the RTT estimate at now in ns, decayed toward zero for the time
// since the last sample. Callers hold p.mu.
func (e *endpoint) estimate(now time.Time, tau float64) float64 {
	if !e.sampled {
		return minCost
	}
	v := e.ewma * math.Exp(-float64(now.Sub(e.stamp))/tau)
	return max(v, minCost)
}

func (c *call) finish(err error) {
	p, ep := c.p, c.ep
	now := p.now()
	rtt := float64(now.Sub(c.start))
	if err != nil {
		rtt += p.penalty
	}
	c.ep = nil
	p.calls.Put(c)

	p.mu.Lock()
	ep.inflight--
	switch {
	case !ep.sampled || rtt > ep.ewma:
		// Peak sensitivity: a slower sample replaces the estimate at once.
		ep.ewma = rtt
		ep.sampled = true
	default:
		w := math.Exp(-float64(now.Sub(ep.stamp)) / p.tau)
		ep.ewma = ep.ewma*w + rtt*(1-w)
	}
	ep.stamp = now
	p.mu.Unlock()
}

// maybeSweep forgets addresses no longer passed to Pick. It runs once per
// ttl, or sooner when churn has grown the map well past len(addrs); in both
// cases its O(len(addrs)+len(map)) cost is amortised over many picks.
// Callers hold p.mu.
func (p *PeakEWMAPicker) maybeSweep(addrs []string, now time.Time) {
	oversized := len(p.eps) > 2*len(addrs)+64
	if !oversized && now.Sub(p.lastSweep) < p.ttl {
		return
	}
	p.lastSweep = now
	p.sweeps++
	for _, a := range addrs {
		if ep := p.eps[a]; ep != nil {
			ep.lastSeen = now
			ep.sweep = p.sweeps
		}
	}
	for a, ep := range p.eps {
		// A deleted endpoint's in-flight calls still finish on the
		// orphaned struct, harmlessly.
		if ep.lastSeen.Before(now.Add(-p.ttl)) || (oversized && ep.sweep != p.sweeps) {
			delete(p.eps, a)
		}
	}
}

// tracked reports how many addresses the picker holds state for.
func (p *PeakEWMAPicker) tracked() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.eps)
}
