package telemetry

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The proxy's health checks of its local app: checks run by type and
// result, how long they took, and the verdict the proxy reports to the
// control plane (1 healthy, 0 not). Labels are bounded: three types, two
// results.
const (
	HealthChecksName        = "trellis_proxy_health_checks_total"
	HealthCheckDurationName = "trellis_proxy_health_check_duration_seconds"
	AppHealthyName          = "trellis_proxy_app_healthy"
)

// HealthMetrics implements health.Metrics.
type HealthMetrics struct {
	checks  *prometheus.CounterVec
	dur     *prometheus.HistogramVec
	healthy prometheus.Gauge
}

// newHealthMetrics registers the health-check instruments on reg; the
// gauge shows 0 (not healthy) until a check passes.
func newHealthMetrics(reg prometheus.Registerer) (*HealthMetrics, error) {
	m := &HealthMetrics{
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: HealthChecksName,
			Help: "Health checks of the local app, by type (tcp, http, grpc) and result (pass, fail).",
		}, []string{"type", "result"}),
		dur: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    HealthCheckDurationName,
			Help:    "Time one health check of the local app took, by type.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"type"}),
		healthy: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: AppHealthyName,
			Help: "1 while the local app passes its health check (the endpoint is in discovery), else 0.",
		}),
	}
	for _, c := range []prometheus.Collector{m.checks, m.dur, m.healthy} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Checked counts one check.
func (m *HealthMetrics) Checked(check string, passed bool, d time.Duration) {
	result := "fail"
	if passed {
		result = "pass"
	}
	m.checks.WithLabelValues(check, result).Inc()
	m.dur.WithLabelValues(check).Observe(d.Seconds())
}

// State sets the verdict gauge.
func (m *HealthMetrics) State(healthy bool) {
	v := 0.0
	if healthy {
		v = 1
	}
	m.healthy.Set(v)
}
