package telemetry

import "github.com/prometheus/client_golang/prometheus"

// The proxy's access log counters: lines written and lines dropped because
// the log's bounded queue was full (the request never waits for the log).
const (
	AccessLogLinesName   = "trellis_proxy_access_log_lines_total"
	AccessLogDroppedName = "trellis_proxy_access_log_dropped_total"
)

// AccessLogMetrics implements accesslog.Metrics.
type AccessLogMetrics struct {
	lines, dropped prometheus.Counter
}

// newAccessLogMetrics registers the access log counters on reg; they show
// 0 from the start, access logs on or off.
func newAccessLogMetrics(reg prometheus.Registerer) (*AccessLogMetrics, error) {
	m := &AccessLogMetrics{
		lines: prometheus.NewCounter(prometheus.CounterOpts{
			Name: AccessLogLinesName,
			Help: "Access log lines written.",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: AccessLogDroppedName,
			Help: "Access log lines dropped because the log's queue was full (the sink is slower than the traffic).",
		}),
	}
	for _, c := range []prometheus.Collector{m.lines, m.dropped} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Logged counts one line written.
func (m *AccessLogMetrics) Logged() { m.lines.Inc() }

// Dropped counts one line dropped.
func (m *AccessLogMetrics) Dropped() { m.dropped.Inc() }
