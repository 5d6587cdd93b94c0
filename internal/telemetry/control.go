// Package telemetry holds metric instruments on registries passed in (never
// the global one): the proxy's per-hop metrics (proxy.go), the control
// plane's (control.go: push, ACK/NACK, store, CA), and the scraping of
// Prometheus text into `trellis stat`'s table.
package telemetry

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Names of the control plane's metrics: trellis_control_<subsystem>_<name>_<unit>.
const (
	ControlConnectedProxiesName  = "trellis_control_push_connected_proxies"
	ControlSnapshotsPushedName   = "trellis_control_push_snapshots_total"
	ControlPushAckDurationName   = "trellis_control_push_ack_duration_seconds"
	ControlAcksName              = "trellis_control_push_acks_total"
	ControlNacksName             = "trellis_control_push_nacks_total"
	ControlSlowConsumersName     = "trellis_control_push_slow_consumers_closed_total"
	ControlResourcesName         = "trellis_control_store_resources"
	ControlStoreOpDurationName   = "trellis_control_store_operation_duration_seconds"
	ControlCertsIssuedName       = "trellis_control_ca_certificates_issued_total"
	ControlCertSoonestExpiryName = "trellis_control_ca_cert_soonest_expiry_timestamp_seconds"
	ControlProxiesByStateName    = "trellis_control_push_proxies"
)

// resourcesTimeout bounds the scrape-time count of resources.
const resourcesTimeout = 5 * time.Second

// ControlState is what the control plane's gauges read when scraped, so
// they are never stale and nothing has to keep them in step.
type ControlState struct {
	// ConnectedProxies is the number of open watch streams.
	ConnectedProxies func() int
	// SoonestCertExpiry is the earliest expiry of the certificates the
	// connected proxies use; false when there is none (the gauge is then
	// absent rather than 0, which an expiry alert would read as expired).
	SoonestCertExpiry func() (time.Time, bool)
	// ProxyStates counts the connected proxies by push state (SYNCED,
	// STALE, NACKED, PENDING), for the out-of-sync alert.
	ProxyStates func() map[string]int
	// States are reported even when no proxy is in them (0).
	States []string
	// Resources counts stored resources by kind.
	Resources func(ctx context.Context) (map[string]int, error)
	// Kinds are reported even when none is stored (0), so a series does
	// not vanish when the last resource of a kind is deleted.
	Kinds []string
	// StoreOps are the store operations to pre-create series for.
	StoreOps []string
}

// ControlMetrics holds the control plane's instruments on one registry. It
// implements push.Metrics and store.Observer (internal/control wires it).
type ControlMetrics struct {
	pushes, acks, nacks, slow prometheus.Counter
	ackDuration               prometheus.Histogram
	bootstrapCerts, renewals  prometheus.Counter
	storeOps                  *prometheus.HistogramVec
	// storeObs caches the children of the known operations; read-only
	// after construction, so lookups need no lock.
	storeObs map[string]prometheus.Observer
}

// NewControlMetrics registers the control plane's instruments on reg.
func NewControlMetrics(reg prometheus.Registerer, st ControlState) (*ControlMetrics, error) {
	certs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: ControlCertsIssuedName,
		Help: "Workload certificates signed for proxies, by reason: bootstrap (token) or renewal (current certificate).",
	}, []string{"reason"})
	m := &ControlMetrics{
		pushes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: ControlSnapshotsPushedName,
			Help: "Snapshots sent to proxies.",
		}),
		acks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: ControlAcksName,
			Help: "Snapshots proxies acknowledged (applied).",
		}),
		nacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: ControlNacksName,
			Help: "Snapshots proxies refused (NACK); they keep their last good config.",
		}),
		slow: prometheus.NewCounter(prometheus.CounterOpts{
			Name: ControlSlowConsumersName,
			Help: "Watch streams closed because a snapshot send stalled; the proxy reconnects and resyncs.",
		}),
		ackDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    ControlPushAckDurationName,
			Help:    "Time from sending a snapshot to the proxy's ACK.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		bootstrapCerts: certs.WithLabelValues("bootstrap"),
		renewals:       certs.WithLabelValues("renewal"),
		storeOps: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    ControlStoreOpDurationName,
			Help:    "Latency of store operations, by operation.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"operation"}),
		storeObs: map[string]prometheus.Observer{},
	}
	for _, op := range st.StoreOps {
		m.storeObs[op] = m.storeOps.WithLabelValues(op)
	}
	cs := []prometheus.Collector{m.pushes, m.acks, m.nacks, m.slow, m.ackDuration, certs, m.storeOps, newStateCollector(st)}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// SnapshotPushed implements push.Metrics.
func (m *ControlMetrics) SnapshotPushed() { m.pushes.Inc() }

// SnapshotAcked implements push.Metrics.
func (m *ControlMetrics) SnapshotAcked(sinceSend time.Duration) {
	m.acks.Inc()
	m.ackDuration.Observe(sinceSend.Seconds())
}

// SnapshotNacked implements push.Metrics.
func (m *ControlMetrics) SnapshotNacked() { m.nacks.Inc() }

// SlowConsumerClosed implements push.Metrics.
func (m *ControlMetrics) SlowConsumerClosed() { m.slow.Inc() }

// CertificateIssued implements push.Metrics.
func (m *ControlMetrics) CertificateIssued(renewal bool) {
	if renewal {
		m.renewals.Inc()
		return
	}
	m.bootstrapCerts.Inc()
}

// ObserveStoreOp implements store.Observer.
func (m *ControlMetrics) ObserveStoreOp(op string, d time.Duration) {
	o, ok := m.storeObs[op]
	if !ok {
		o = m.storeOps.WithLabelValues(op)
	}
	o.Observe(d.Seconds())
}

// stateCollector reads ControlState at each scrape.
type stateCollector struct {
	st                                  ControlState
	connected, expiry, resource, states *prometheus.Desc
}

func newStateCollector(st ControlState) *stateCollector {
	return &stateCollector{
		st: st,
		connected: prometheus.NewDesc(ControlConnectedProxiesName,
			"Proxies with an open watch stream to this control plane.", nil, nil),
		expiry: prometheus.NewDesc(ControlCertSoonestExpiryName,
			"Soonest expiry (Unix seconds) of the workload certificates connected proxies use; absent with no proxy connected.", nil, nil),
		resource: prometheus.NewDesc(ControlResourcesName,
			"Resources in the store, by kind.", []string{"kind"}, nil),
		states: prometheus.NewDesc(ControlProxiesByStateName,
			"Connected proxies by push state: SYNCED (runs the last snapshot sent), STALE (a snapshot unanswered), NACKED (refused it, runs its last good one), PENDING (nothing sent yet).", []string{"state"}, nil),
	}
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.connected
	ch <- c.expiry
	ch <- c.resource
	ch <- c.states
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	if c.st.ConnectedProxies != nil {
		ch <- prometheus.MustNewConstMetric(c.connected, prometheus.GaugeValue, float64(c.st.ConnectedProxies()))
	}
	if c.st.SoonestCertExpiry != nil {
		if t, ok := c.st.SoonestCertExpiry(); ok {
			ch <- prometheus.MustNewConstMetric(c.expiry, prometheus.GaugeValue, float64(t.Unix()))
		}
	}
	if c.st.ProxyStates != nil {
		counts := c.st.ProxyStates()
		for _, st := range c.st.States {
			ch <- prometheus.MustNewConstMetric(c.states, prometheus.GaugeValue, float64(counts[st]), st)
		}
	}
	if c.st.Resources == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), resourcesTimeout)
	defer cancel()
	counts, err := c.st.Resources(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.resource, err)
		return
	}
	seen := map[string]bool{}
	for _, k := range c.st.Kinds {
		seen[k] = true
		ch <- prometheus.MustNewConstMetric(c.resource, prometheus.GaugeValue, float64(counts[k]), k)
	}
	for k, n := range counts {
		if !seen[k] {
			ch <- prometheus.MustNewConstMetric(c.resource, prometheus.GaugeValue, float64(n), k)
		}
	}
}
