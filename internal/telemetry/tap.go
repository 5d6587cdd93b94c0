package telemetry

import "github.com/prometheus/client_golang/prometheus"

// The proxy's tap instruments (`trellis tap`): taps running, events sent
// to the control plane, and events a tap matched but skipped (over its
// rate bound, or the proxy's event queue was full).
const (
	TapsRunningName = "trellis_proxy_taps_running"
	TapEventsName   = "trellis_proxy_tap_events_total"
	TapSkippedName  = "trellis_proxy_tap_skipped_total"
)

// TapMetrics implements tap.Metrics.
type TapMetrics struct {
	running         prometheus.Gauge
	events, skipped prometheus.Counter
}

// newTapMetrics registers the tap instruments on reg; they show 0 from
// the start.
func newTapMetrics(reg prometheus.Registerer) (*TapMetrics, error) {
	m := &TapMetrics{
		running: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: TapsRunningName,
			Help: "Taps (trellis tap) running on this proxy.",
		}),
		events: prometheus.NewCounter(prometheus.CounterOpts{
			Name: TapEventsName,
			Help: "Requests sent to a tap.",
		}),
		skipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: TapSkippedName,
			Help: "Requests a tap matched but did not get: over its rate bound, or the proxy's tap queue was full.",
		}),
	}
	for _, c := range []prometheus.Collector{m.running, m.events, m.skipped} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Running sets the number of running taps.
func (m *TapMetrics) Running(n int) { m.running.Set(float64(n)) }

// Sent counts one event sent.
func (m *TapMetrics) Sent() { m.events.Inc() }

// Skipped counts one event skipped.
func (m *TapMetrics) Skipped() { m.skipped.Inc() }
