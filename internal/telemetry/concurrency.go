package telemetry

import (
	"github.com/prometheus/client_golang/prometheus"
)

// The inbound adaptive concurrency limit's instruments (ConcurrencyPolicy):
// the current limit and the requests shed over it, by the proxy's own
// service (one per proxy: a bounded label).
const (
	ConcurrencyLimitName = "trellis_proxy_concurrency_limit"
	ConcurrencyShedName  = "trellis_proxy_concurrency_shed_total"
)

type concurrencyVecs struct {
	limit *prometheus.GaugeVec
	shed  *prometheus.CounterVec
}

func newConcurrencyVecs() concurrencyVecs {
	return concurrencyVecs{
		limit: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: ConcurrencyLimitName,
			Help: "The adaptive concurrency limit of the proxy's inbound traffic now (requests let through to the app at once), by service.",
		}, []string{"service"}),
		shed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: ConcurrencyShedName,
			Help: "Inbound requests shed over the adaptive concurrency limit (503 CL), by service.",
		}, []string{"service"}),
	}
}

// ConcurrencyMetrics are one service's concurrency-limit instruments; a
// proxy keeps them with its limiter.
type ConcurrencyMetrics struct {
	limit prometheus.Gauge
	shed  prometheus.Counter
}

// Concurrency returns the instruments of service ("name.namespace"). The
// shed counter is shown at 0 from the first call.
func (m *ProxyMetrics) Concurrency(service string) *ConcurrencyMetrics {
	return &ConcurrencyMetrics{limit: m.conc.limit.WithLabelValues(service), shed: m.conc.shed.WithLabelValues(service)}
}

// SetLimit records the current limit. A nil *ConcurrencyMetrics records
// nothing (a proxy compiled without metrics, in tests).
func (c *ConcurrencyMetrics) SetLimit(n uint32) {
	if c != nil {
		c.limit.Set(float64(n))
	}
}

// Shed counts one request shed.
func (c *ConcurrencyMetrics) Shed() {
	if c != nil {
		c.shed.Inc()
	}
}
