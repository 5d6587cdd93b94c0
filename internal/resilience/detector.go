package resilience

import (
	"sync"
	"sync/atomic"
	"time"
)

// Ejectable is what the detector needs of an endpoint: the balancer's
// ejection (lb.Endpoint implements it).
type Ejectable interface {
	Eject(until time.Time)
	Ejected(now time.Time) bool
}

// OutlierConfig is Envoy's passive outlier detection: eject an endpoint
// after Consecutive5xx 5xx answers in a row, or ConsecutiveGatewayErrors
// gateway errors (502, 503, 504, connect failures and resets) in a row
// (0 disables a rule), for BaseEjection × the number of times it has been
// ejected, at most MaxEjection; never more than MaxEjectionPercent of a
// service's endpoints at once, though one may always be.
type OutlierConfig struct {
	Consecutive5xx           uint32
	ConsecutiveGatewayErrors uint32
	BaseEjection             time.Duration
	MaxEjection              time.Duration
	MaxEjectionPercent       uint32
}

// Envoy's defaults.
const (
	DefaultConsecutiveErrors  = 5
	DefaultBaseEjection       = 30 * time.Second
	DefaultMaxEjection        = 300 * time.Second
	DefaultMaxEjectionPercent = 10
)

// Detector is one service's outlier detection. Its hosts are the service's
// endpoints; the same *Host must be passed for an endpoint across
// snapshots (as the balancer's state is), so the ejection count survives.
type Detector struct {
	cfg OutlierConfig
	mu  sync.Mutex // serializes ejection decisions
}

// NewDetector returns a detector with cfg.
func NewDetector(cfg OutlierConfig) *Detector { return &Detector{cfg: cfg} }

// Config returns the detector's configuration.
func (d *Detector) Config() OutlierConfig { return d.cfg }

// Host is one endpoint's outlier state.
type Host struct {
	ep        Ejectable
	consec5xx atomic.Uint32
	consecGw  atomic.Uint32
	// Guarded by the Detector's mu.
	times    int       // ejections not yet forgiven
	returned time.Time // when the last ejection ends
}

// NewHost returns the outlier state of ep.
func NewHost(ep Ejectable) *Host { return &Host{ep: ep} }

// Of reports whether h is the state of ep.
func (h *Host) Of(ep Ejectable) bool { return h.ep == ep }

// Observe records the outcome of one attempt on h, one of hosts (the
// service's endpoints now): status is the response status (0 when none
// came), gateway whether it was a gateway error. It reports whether h was
// ejected by it.
func (d *Detector) Observe(h *Host, hosts []*Host, status int, gateway bool) bool {
	if status < 500 && !gateway {
		// Reset only what is set: a store per success would bounce the
		// cache line between cores on every request.
		if h.consec5xx.Load() != 0 {
			h.consec5xx.Store(0)
		}
		if h.consecGw.Load() != 0 {
			h.consecGw.Store(0)
		}
		return false
	}
	n5 := h.consec5xx.Add(1)
	var gw uint32
	if gateway {
		gw = h.consecGw.Add(1)
	} else if h.consecGw.Load() != 0 {
		h.consecGw.Store(0)
	}
	trip := (d.cfg.Consecutive5xx > 0 && n5 >= d.cfg.Consecutive5xx) ||
		(d.cfg.ConsecutiveGatewayErrors > 0 && gw >= d.cfg.ConsecutiveGatewayErrors)
	if !trip {
		return false
	}
	return d.eject(h, hosts)
}

// eject ejects h unless that would take out more than the allowed share.
func (d *Detector) eject(h *Host, hosts []*Host) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	if h.ep.Ejected(now) {
		return false // a request that was in flight when it was ejected
	}
	h.consec5xx.Store(0)
	h.consecGw.Store(0)
	ejected := 0
	for _, o := range hosts {
		if o != h && o.ep.Ejected(now) {
			ejected++
		}
	}
	if ejected > 0 && (ejected+1)*100 > int(d.cfg.MaxEjectionPercent)*len(hosts) {
		return false
	}
	d.forgive(h, now)
	h.times++
	dur := d.cfg.BaseEjection * time.Duration(h.times)
	if d.cfg.MaxEjection > 0 && dur > d.cfg.MaxEjection {
		dur = d.cfg.MaxEjection
	}
	h.returned = now.Add(dur)
	h.ep.Eject(h.returned)
	return true
}

// forgive lowers h's ejection count by one for every BaseEjection it has
// been back without being ejected again (Envoy lowers its multiplier each
// healthy interval), so an endpoint that failed once long ago starts again
// from the base time.
func (d *Detector) forgive(h *Host, now time.Time) {
	if h.times == 0 || d.cfg.BaseEjection <= 0 || now.Before(h.returned) {
		return
	}
	back := int(now.Sub(h.returned) / d.cfg.BaseEjection)
	h.times = max(0, h.times-back)
}
