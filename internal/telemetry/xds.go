package telemetry

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Names of the xDS adapter's instruments.
const (
	ControlXDSStreamsName   = "trellis_control_xds_streams"
	ControlXDSRefusedName   = "trellis_control_xds_refused_streams_total"
	ControlXDSNacksName     = "trellis_control_xds_nacks_total"
	ControlXDSPublishedName = "trellis_control_xds_resource_sets_total"
)

// xdsTypes are the resource types with a NACK series of their own, by the
// last element of their type URL; any other counts as "other", so a client
// cannot grow the label set.
var xdsTypes = []string{"Listener", "RouteConfiguration", "Cluster", "ClusterLoadAssignment"}

// XDSMetrics implements xds.Metrics on a registry.
type XDSMetrics struct {
	streams   map[string]prometheus.Gauge // by mode
	refused   prometheus.Counter
	nacks     map[string]prometheus.Counter // by type; "other" too
	published prometheus.Counter
}

// NewXDSMetrics registers the xDS adapter's instruments on reg.
func NewXDSMetrics(reg prometheus.Registerer) (*XDSMetrics, error) {
	streams := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: ControlXDSStreamsName,
		Help: "Open xDS (ADS) streams, by mode (sotw, delta).",
	}, []string{"mode"})
	refused := prometheus.NewCounter(prometheus.CounterOpts{
		Name: ControlXDSRefusedName,
		Help: "xDS streams refused because the client presented no certificate issued by the mesh's CA.",
	})
	nacks := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: ControlXDSNacksName,
		Help: "xDS responses a client refused (NACK), by resource type (Listener, RouteConfiguration, Cluster, ClusterLoadAssignment, other).",
	}, []string{"type"})
	published := prometheus.NewCounter(prometheus.CounterOpts{
		Name: ControlXDSPublishedName,
		Help: "xDS resource sets published to the snapshot cache (one per change of the translated mesh).",
	})
	for _, c := range []prometheus.Collector{streams, refused, nacks, published} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	m := &XDSMetrics{streams: map[string]prometheus.Gauge{}, refused: refused, nacks: map[string]prometheus.Counter{}, published: published}
	for _, mode := range []string{"sotw", "delta"} {
		m.streams[mode] = streams.WithLabelValues(mode)
	}
	for _, t := range append(xdsTypes, "other") {
		m.nacks[t] = nacks.WithLabelValues(t)
	}
	return m, nil
}

// StreamOpened implements xds.Metrics.
func (m *XDSMetrics) StreamOpened(mode string) {
	if g, ok := m.streams[mode]; ok {
		g.Inc()
	}
}

// StreamClosed implements xds.Metrics.
func (m *XDSMetrics) StreamClosed(mode string) {
	if g, ok := m.streams[mode]; ok {
		g.Dec()
	}
}

// Refused implements xds.Metrics.
func (m *XDSMetrics) Refused() { m.refused.Inc() }

// Nacked implements xds.Metrics.
func (m *XDSMetrics) Nacked(typeURL string) {
	t := typeURL[strings.LastIndexByte(typeURL, '.')+1:]
	if c, ok := m.nacks[t]; ok {
		c.Inc()
		return
	}
	m.nacks["other"].Inc()
}

// Published implements xds.Metrics.
func (m *XDSMetrics) Published() { m.published.Inc() }
