package telemetry

import (
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"trellis.dev/trellis/internal/meshname"
)

// MaxSources bounds the callers one destination side tells apart: past it
// new callers are counted with an unknown source, so a peer that varies
// what it asserts cannot grow the label set without end.
const MaxSources = 256

// Sources are the destination-side series of one proxy's service, by
// caller. The caller's namespace and identity come from its verified
// SPIFFE ID; its service name is what the calling proxy asserts
// (X-Trellis-Source-Service), kept only when it is a DNS label and the
// identity is verified.
type Sources struct {
	m   *ProxyMetrics
	dst Peer

	mu       sync.RWMutex
	by       map[sourceKey]*Series
	overflow *Series
}

type sourceKey struct{ service, identity string }

// Sources returns the (cached) callers of destination dst; nil when the
// per-request families are disabled.
func (m *ProxyMetrics) Sources(dst Peer) *Sources {
	if m.disabled {
		return nil
	}
	dst = dst.filled()
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.sources[dst]
	if s == nil {
		s = &Sources{m: m, dst: dst, by: make(map[sourceKey]*Series)}
		m.sources[dst] = s
	}
	return s
}

// Series returns the series of requests from the caller that asserts
// service and holds the verified SPIFFE ID identity ("" for none). It
// allocates nothing once the caller has been seen.
func (s *Sources) Series(service, identity string) *Series {
	if s == nil {
		return nil
	}
	k := sourceKey{service, identity}
	s.mu.RLock()
	se := s.by[k]
	s.mu.RUnlock()
	if se != nil {
		return se
	}
	return s.add(k)
}

func (s *Sources) add(k sourceKey) *Series {
	s.mu.Lock()
	defer s.mu.Unlock()
	if se := s.by[k]; se != nil {
		return se
	}
	if len(s.by) >= MaxSources {
		if s.overflow == nil {
			s.overflow = s.m.Series(SeriesLabels{Reporter: ReporterDestination, Destination: s.dst})
		}
		return s.overflow
	}
	se := s.m.Series(SeriesLabels{Reporter: ReporterDestination, Source: SourcePeer(k.service, k.identity), Destination: s.dst})
	s.by[k] = se
	return se
}

// SourcePeer is the caller a destination side sees: namespace and
// identity from the verified SPIFFE ID, the asserted service name only
// with a verified identity and when it is a DNS label.
func SourcePeer(service, identity string) Peer {
	ns, ok := SPIFFENamespace(identity)
	if !ok {
		return Peer{}
	}
	p := Peer{Namespace: ns, Identity: identity}
	if meshname.IsLabel(service) {
		p.Service = service
	}
	return p
}

// SPIFFENamespace returns the namespace of a Trellis workload ID,
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
func SPIFFENamespace(id string) (string, bool) {
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return "", false
	}
	i := strings.Index(rest, "/ns/")
	if i <= 0 {
		return "", false
	}
	rest = rest[i+len("/ns/"):]
	ns, _, ok := strings.Cut(rest, "/sa/")
	if !ok || !meshname.IsLabel(ns) {
		return "", false
	}
	return ns, true
}

// The opaque TCP families, per tunnel (reporter, both sides' service and
// namespace, mTLS), as Istio's istio_tcp_*.
const (
	TCPOpenedName   = "trellis_tcp_connections_opened_total"
	TCPClosedName   = "trellis_tcp_connections_closed_total"
	TCPSentName     = "trellis_tcp_sent_bytes_total"
	TCPReceivedName = "trellis_tcp_received_bytes_total"
	TCPOpenName     = "trellis_tcp_connections_open"
)

var tcpLabels = []string{"reporter", "source_service", "source_namespace", "destination_service", "destination_namespace"}

type tcpVecs struct {
	opened, closed, sent, received *prometheus.CounterVec
	open                           *prometheus.GaugeVec
}

func newTCPVecs() tcpVecs {
	c := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, tcpLabels)
	}
	return tcpVecs{
		opened:   c(TCPOpenedName, "Opaque TCP tunnels established."),
		closed:   c(TCPClosedName, "Opaque TCP tunnels closed."),
		sent:     c(TCPSentName, "Bytes sent from the destination to the source over opaque TCP tunnels, counted when a tunnel closes."),
		received: c(TCPReceivedName, "Bytes received from the source for the destination over opaque TCP tunnels, counted when a tunnel closes."),
		open: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: TCPOpenName, Help: "Opaque TCP tunnels open now.",
		}, tcpLabels),
	}
}

func (v tcpVecs) collectors() []prometheus.Collector {
	return []prometheus.Collector{v.opened, v.closed, v.sent, v.received, v.open}
}

// TCPSeries counts the tunnels of one label set.
type TCPSeries struct {
	opened, closed, sent, received prometheus.Counter
	open                           prometheus.Gauge
}

// TCP returns the (cached) tunnel series of l (Route and identities are
// not labels of the TCP families). Called per tunnel, not per byte.
func (m *ProxyMetrics) TCP(l SeriesLabels) *TCPSeries {
	l = SeriesLabels{Reporter: l.Reporter,
		Source:      Peer{Service: l.Source.Service, Namespace: l.Source.Namespace},
		Destination: Peer{Service: l.Destination.Service, Namespace: l.Destination.Namespace},
	}.filled()
	m.mu.Lock()
	defer m.mu.Unlock()
	if t := m.tcpSets[l]; t != nil {
		return t
	}
	vals := []string{l.Reporter, l.Source.Service, l.Source.Namespace, l.Destination.Service, l.Destination.Namespace}
	t := &TCPSeries{
		opened: m.tcp.opened.WithLabelValues(vals...), closed: m.tcp.closed.WithLabelValues(vals...),
		sent: m.tcp.sent.WithLabelValues(vals...), received: m.tcp.received.WithLabelValues(vals...),
		open: m.tcp.open.WithLabelValues(vals...),
	}
	m.tcpSets[l] = t
	return t
}

// Opened counts a tunnel established.
func (t *TCPSeries) Opened() {
	t.opened.Inc()
	t.open.Inc()
}

// Closed counts a tunnel closed after sent bytes went to the source and
// received bytes came from it.
func (t *TCPSeries) Closed(sent, received int64) {
	t.closed.Inc()
	t.open.Dec()
	t.sent.Add(float64(sent))
	t.received.Add(float64(received))
}

// OpenConnectionsName is the gauge of connections open on the proxy's
// listeners, by listener (outbound, upstream, inbound).
const OpenConnectionsName = "trellis_proxy_open_connections"

// ConnState returns an http.Server ConnState hook that keeps listener's
// open connections in the gauge: up when accepted, down when closed or
// hijacked (a hijacked tunnel is counted by the TCP families instead).
func (m *ProxyMetrics) ConnState(listener string) func(net.Conn, http.ConnState) {
	g := m.conns.WithLabelValues(listener)
	return func(_ net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			g.Inc()
		case http.StateClosed, http.StateHijacked:
			g.Dec()
		}
	}
}

// CertExpiryName is the proxy's workload certificate expiry gauge.
const CertExpiryName = "trellis_proxy_certificate_expiry_timestamp_seconds"

// RegisterCertExpiry exports notAfter (read at scrape time) as the proxy's
// certificate expiry; a zero time is reported as absent.
func RegisterCertExpiry(reg prometheus.Registerer, notAfter func() time.Time) error {
	return reg.Register(certExpiry{notAfter: notAfter, desc: prometheus.NewDesc(CertExpiryName,
		"When the proxy's workload certificate expires (Unix seconds); it renews at 45-55% of its life.", nil, nil)})
}

type certExpiry struct {
	notAfter func() time.Time
	desc     *prometheus.Desc
}

func (c certExpiry) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c certExpiry) Collect(ch chan<- prometheus.Metric) {
	t := c.notAfter()
	if t.IsZero() {
		return
	}
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(t.UnixNano())/1e9)
}
