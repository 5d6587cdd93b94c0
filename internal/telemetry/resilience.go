package telemetry

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// The proxy's resilience counters (outbound, by destination service): retries
// sent and refused by the budget, circuit-breaker overflows by the limit
// that refused, outlier ejections. Label sets are bounded: the service, and
// a result or limit out of a fixed list.
const (
	RetriesName          = "trellis_proxy_retries_total"
	BreakerOverflowsName = "trellis_proxy_circuit_breaker_overflows_total"
	OutlierEjectionsName = "trellis_proxy_outlier_ejections_total"
	retrySent            = "sent"
	retryBudgetExhausted = "budget_exhausted"
)

// OverflowLimits are the limit label values of BreakerOverflowsName.
var overflowLimits = [...]string{"max_requests", "max_pending_requests", "max_connections"}

type resilienceVecs struct {
	retries, overflows, ejections *prometheus.CounterVec
}

func newResilienceVecs() resilienceVecs {
	return resilienceVecs{
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: RetriesName,
			Help: "Retries of outbound requests by destination service: result=sent, or budget_exhausted when the retry budget refused one.",
		}, []string{"destination_service", "result"}),
		overflows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: BreakerOverflowsName,
			Help: "Requests a destination service's circuit breaker refused (503 UO), by the limit reached.",
		}, []string{"destination_service", "limit"}),
		ejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: OutlierEjectionsName,
			Help: "Endpoints of a destination service ejected by outlier detection.",
		}, []string{"destination_service"}),
	}
}

// resilienceCounters caches a DestMetrics' children, created on first use.
type resilienceCounters struct {
	sent, denied, ejections atomic.Pointer[prometheus.Counter]
	overflows               [len(overflowLimits)]atomic.Pointer[prometheus.Counter]
}

func (d *DestMetrics) counter(p *atomic.Pointer[prometheus.Counter], vec *prometheus.CounterVec, labels ...string) prometheus.Counter {
	if c := p.Load(); c != nil {
		return *c
	}
	c := vec.WithLabelValues(labels...)
	p.Store(&c)
	return c
}

// Retry counts one retry sent.
func (d *DestMetrics) Retry() {
	d.counter(&d.res.sent, d.m.res.retries, d.service, retrySent).Inc()
}

// RetryDenied counts one retry the budget refused.
func (d *DestMetrics) RetryDenied() {
	d.counter(&d.res.denied, d.m.res.retries, d.service, retryBudgetExhausted).Inc()
}

// Overflow counts one request the circuit breaker refused; limit is
// max_requests, max_pending_requests or max_connections.
func (d *DestMetrics) Overflow(limit string) {
	for i, l := range overflowLimits {
		if l == limit {
			d.counter(&d.res.overflows[i], d.m.res.overflows, d.service, l).Inc()
			return
		}
	}
}

// Ejection counts one endpoint ejected by outlier detection.
func (d *DestMetrics) Ejection() {
	d.counter(&d.res.ejections, d.m.res.ejections, d.service).Inc()
}
