package telemetry

import (
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TCPConnectionsName is the proxy's opaque-TCP connection counter.
const TCPConnectionsName = "trellis_proxy_tcp_connections_total"

// MirrorRequestsName counts mirrored requests by result.
const MirrorRequestsName = "trellis_proxy_mirror_requests_total"

// Mirror results, the "result" label of MirrorRequestsName.
const (
	// MirrorOK: the mirror answered below 500.
	MirrorOK = "ok"
	// MirrorFailed: the mirror answered 5xx, or could not be reached.
	MirrorFailed = "failed"
	// MirrorDropped: not sent, because as many mirrored requests as the
	// proxy allows were in flight, or the body was over 64 KiB (or not sent
	// to its end), or the request was an upgrade or CONNECT.
	MirrorDropped = "dropped"
)

// Directions of a proxy hop, as the "direction" label carries them.
const (
	Inbound  = "inbound"
	Outbound = "outbound"
)

// RequestDurationBuckets are the buckets of trellis_proxy_request_duration_seconds.
var RequestDurationBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// ProxyMetrics holds the proxy's per-hop instruments on one registry.
// Label children are cached per (direction, service) and per status code and
// response flags, so recording a request on the hot path does not allocate
// after warm-up.
type ProxyMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	tcp      *prometheus.CounterVec
	mirrors  *prometheus.CounterVec
	res      resilienceVecs
	conc     concurrencyVecs

	mu    sync.RWMutex
	dests map[destKey]*DestMetrics
}

type destKey struct{ direction, service string }

// NewProxyMetrics registers the proxy's instruments on reg.
func NewProxyMetrics(reg prometheus.Registerer) (*ProxyMetrics, error) {
	m := &ProxyMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: RequestsTotalName,
			Help: "Requests handled by the proxy, refused ones included, by direction, destination service, response code and response flags (\"-\": none).",
		}, []string{"direction", "destination_service", "response_code", "response_flags"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    RequestDurationName,
			Help:    "Time from request received to response complete, by direction, destination service, response code and response flags.",
			Buckets: RequestDurationBuckets,
		}, []string{"direction", "destination_service", "response_code", "response_flags"}),
		tcp: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: TCPConnectionsName,
			Help: "Opaque TCP connections proxied, by direction and destination service.",
		}, []string{"direction", "destination_service"}),
		mirrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MirrorRequestsName,
			Help: "Requests copied to a route's RequestMirror backend, by result (ok, failed, dropped).",
		}, []string{"result"}),
		dests: make(map[destKey]*DestMetrics),
	}
	for _, r := range []string{MirrorOK, MirrorFailed, MirrorDropped} {
		m.mirrors.WithLabelValues(r) // shown at 0 from the start
	}
	m.res = newResilienceVecs()
	m.conc = newConcurrencyVecs()
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.tcp, m.mirrors, m.res.retries, m.res.overflows, m.res.ejections, m.conc.limit, m.conc.shed} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Mirror counts one mirrored request's result (MirrorOK, MirrorFailed,
// MirrorDropped).
func (m *ProxyMetrics) Mirror(result string) { m.mirrors.WithLabelValues(result).Inc() }

// Dest returns the cached instruments of one (direction, service) pair;
// service is "name.namespace". Callers on a hot path keep the result.
func (m *ProxyMetrics) Dest(direction, service string) *DestMetrics {
	k := destKey{direction, service}
	m.mu.RLock()
	d := m.dests[k]
	m.mu.RUnlock()
	if d != nil {
		return d
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if d = m.dests[k]; d == nil {
		d = &DestMetrics{m: m, direction: direction, service: service}
		m.dests[k] = d
	}
	return d
}

// Request records one finished request that ended normally (no response
// flags); the proxy itself records through Dest, with flags.
func (m *ProxyMetrics) Request(direction, service string, code int, d time.Duration) {
	m.Dest(direction, service).Request(code, NoFlags, d)
}

// NoFlags is the response_flags value of a request that ended normally.
const NoFlags = "-"

// TCPConnection counts one proxied TCP connection.
func (m *ProxyMetrics) TCPConnection(direction, service string) {
	m.Dest(direction, service).TCPConnection()
}

// DestMetrics are the instruments of one (direction, destination service).
type DestMetrics struct {
	m                  *ProxyMetrics
	direction, service string
	tcp                atomic.Pointer[prometheus.Counter]
	res                resilienceCounters
	// codes[c] caches the children of status code c (100..599) without
	// flags, the hot path; other codes and flagged requests are cached in
	// flagged.
	codes [600]atomic.Pointer[codeChildren]

	mu      sync.RWMutex
	flagged map[flaggedKey]*codeChildren
}

type flaggedKey struct {
	code  int
	flags string
}

type codeChildren struct {
	count prometheus.Counter
	dur   prometheus.Observer
}

// Request records one finished request with status code, response flags
// (NoFlags for none) and duration.
func (d *DestMetrics) Request(code int, flags string, dur time.Duration) {
	c := d.children(code, flags)
	c.count.Inc()
	c.dur.Observe(dur.Seconds())
}

// TCPConnection counts one proxied TCP connection.
func (d *DestMetrics) TCPConnection() {
	c := d.tcp.Load()
	if c == nil {
		cc := d.m.tcp.WithLabelValues(d.direction, d.service)
		d.tcp.Store(&cc)
		c = &cc
	}
	(*c).Inc()
}

func (d *DestMetrics) children(code int, flags string) *codeChildren {
	if flags == NoFlags && code >= 100 && code < len(d.codes) {
		if c := d.codes[code].Load(); c != nil {
			return c
		}
		c := d.newChildren(code, flags)
		d.codes[code].Store(c)
		return c
	}
	k := flaggedKey{code, flags}
	d.mu.RLock()
	c := d.flagged[k]
	d.mu.RUnlock()
	if c != nil {
		return c
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if c = d.flagged[k]; c == nil {
		if d.flagged == nil {
			d.flagged = make(map[flaggedKey]*codeChildren)
		}
		c = d.newChildren(code, flags)
		d.flagged[k] = c
	}
	return c
}

func (d *DestMetrics) newChildren(code int, flags string) *codeChildren {
	s := strconv.Itoa(code)
	return &codeChildren{
		count: d.m.requests.WithLabelValues(d.direction, d.service, s, flags),
		dur:   d.m.duration.WithLabelValues(d.direction, d.service, s, flags),
	}
}
