package lb

import (
	"time"
)

// PeakEWMAOption configures NewPeakEWMA.
type PeakEWMAOption func(*PeakEWMAPicker)

// WithDecay sets tau, the time constant of the moving average and of the
// failure score: a sample's weight falls to 1/e after tau, and an idle
// endpoint's estimate and failure score decay toward zero at that pace.
// Values <= 0 keep DefaultDecay.
func WithDecay(tau time.Duration) PeakEWMAOption {
	return func(p *PeakEWMAPicker) {
		if tau > 0 {
			p.learn.tau = float64(tau)
		}
	}
}

// WithFailureWeight sets how far one outcome moves the failure score: a
// Failure moves it that fraction of the way to 1, a Success that fraction
// of the way to 0. The cost of an endpoint is divided by (1-score)², so with
// the default 0.5 three failures in a row make it 64 times as expensive and
// one success brings that down to 3.2. 0 disables the penalty; values
// outside [0, 1) keep DefaultFailureWeight.
func WithFailureWeight(w float64) PeakEWMAOption {
	return func(p *PeakEWMAPicker) {
		if w >= 0 && w < 1 {
			p.learn.failWeight = w
		}
	}
}

// WithRand makes the random choices come from intN, which returns a number
// in [0, n). It is called from every Pick, concurrently: the default,
// math/rand/v2's IntN, is safe for that; a seeded *rand.Rand's IntN (for
// deterministic tests) is only safe when one goroutine picks.
func WithRand(intN func(n int) int) PeakEWMAOption {
	return func(p *PeakEWMAPicker) {
		if intN != nil {
			p.s.intN = intN
		}
	}
}

// PeakEWMAPicker is power-of-two-choices over peak-EWMA latency, as in
// Linkerd and Finagle: pick two distinct endpoints at random and send to the
// one with the lower cost = RTT estimate × (in-flight + 1), scaled up by its
// recent failures.
//
// The estimate moves toward each observed RTT with a weight that depends on
// the time since the last update (w = exp(-elapsed/tau)), jumps straight to a
// sample above it (so a slowdown is felt at once), and decays toward zero
// while an endpoint gets no traffic (so an endpoint that was slow is retried
// and can recover). An endpoint with no sample yet borrows the estimate of the
// endpoint it is compared with, so new endpoints compete on load alone.
//
// Latency alone would reward an endpoint that fails fast (a 503 in 100µs
// looks like the best answer), so each endpoint also keeps a failure score in
// [0, 1) that failures raise and successes lower, decaying toward zero with
// time; the cost is divided by (1-score)². A consistently failing endpoint
// costs orders of magnitude more than its peers, draws a probe only when the
// score has decayed for a few seconds, and is back in rotation after a few
// successes.
//
// Under slow start a young endpoint is drawn as a candidate in proportion to
// its weight; once drawn, it competes on cost like any other.
type PeakEWMAPicker struct {
	learn learning
	s     sampler
}

// NewPeakEWMA returns a P2C peak-EWMA Picker.
func NewPeakEWMA(opts ...PeakEWMAOption) *PeakEWMAPicker {
	p := &PeakEWMAPicker{
		learn: learning{tau: float64(DefaultDecay), failWeight: DefaultFailureWeight},
		s:     newSampler(0),
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

// Pick implements Picker.
func (p *PeakEWMAPicker) Pick(r *Request, eps, tried []*Endpoint) (Call, bool) {
	t := r.now()
	g := gate{eps: eps, tried: tried}
	g.setNow(t)
	a, b := p.candidates(eps, &g)
	if a == nil {
		return Call{}, false
	}
	if b != nil && p.prefer(b, a, t) {
		a = b
	}
	return a.start(&p.learn, t), true
}

// candidates returns two distinct random endpoints of eps that g lets
// through, one (b == nil) when only one is left, none when none is.
func (p *PeakEWMAPicker) candidates(eps []*Endpoint, g *gate) (a, b *Endpoint) {
	if len(eps) == 2 && len(g.tried) == 0 && p.s.window == 0 {
		// Common, and the sampler's second draw would often hit a again.
		if i := p.s.intN(2); g.ok(eps[0]) && g.ok(eps[1]) {
			return eps[i], eps[1-i]
		}
	}
	return p.s.pair(eps, g)
}

// prefer reports whether b costs less than a at t. Ties go to a, which is
// already a random choice.
func (p *PeakEWMAPicker) prefer(b, a *Endpoint, t time.Time) bool {
	tau := p.learn.tau
	na, nb := a.since(t), b.since(t)
	la, okA := a.latency(na, tau)
	lb, okB := b.latency(nb, tau)
	// An endpoint never sampled borrows its rival's estimate.
	switch {
	case !okA && !okB:
		la, lb = minCost, minCost
	case !okA:
		la = lb
	case !okB:
		lb = la
	}
	return cost(b, lb, b.failScore(nb, tau)) < cost(a, la, a.failScore(na, tau))
}

// cost is Linkerd's latency × (in-flight + 1), divided by (1-fail)² so
// that failures push traffic away however fast they come back.
func cost(e *Endpoint, lat, fail float64) float64 {
	ok := 1 - fail
	return lat * float64(e.inflight.Load()+1) / (ok * ok)
}
