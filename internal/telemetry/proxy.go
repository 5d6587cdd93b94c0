package telemetry

import (
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The per-request families every proxy exports, reporter=source on the
// calling side and reporter=destination on the called side, as Istio's
// istio_requests_total and friends; docs/metrics.md has their label table.
const (
	RequestsTotalName   = "trellis_requests_total"
	RequestDurationName = "trellis_request_duration_seconds"
	RequestBytesName    = "trellis_request_bytes"
	ResponseBytesName   = "trellis_response_bytes"
	ActiveRequestsName  = "trellis_active_requests"
)

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

// Reporters, the "reporter" label: which proxy of a hop counted.
const (
	// ReporterSource is the caller's proxy (outbound).
	ReporterSource = "source"
	// ReporterDestination is the callee's proxy (inbound).
	ReporterDestination = "destination"
)

// Directions of a proxy hop, the "direction" label of the resilience
// counters (which only the source side records).
const (
	Inbound  = "inbound"
	Outbound = "outbound"
)

// Label values that stand for "not known" and "does not apply".
const (
	// Unknown is a side of the request the proxy could not tell: no
	// service known yet, no endpoint chosen, an unasserted caller.
	Unknown = "unknown"
	// NoFlags is the response_flags value of a request that ended normally.
	NoFlags = "-"
	// None is grpc_status for a response that carries none, and route
	// when no route matched (or on the destination side, which does not
	// route).
	None = "-"
)

// requestLabels are the labels of every per-request family, in order.
var requestLabels = []string{
	"reporter",
	"source_service", "source_namespace", "source_identity",
	"destination_service", "destination_namespace", "destination_identity",
	"route", "response_code", "grpc_status", "response_flags", "mtls",
}

// RequestDurationBuckets are the classic buckets of RequestDurationName:
// about four per decade from 0.5 ms to 10 s, closer together between 1 ms
// and 100 ms where mesh hops and most SLOs sit, so histogram_quantile
// interpolates within ~25% of a value instead of snapping to 10 ms or 25 ms.
var RequestDurationBuckets = []float64{
	.0005, .001, .0015, .002, .003, .004, .005, .006, .008,
	.01, .0125, .015, .02, .025, .03, .04, .05, .065, .08,
	.1, .15, .2, .3, .5, .75, 1, 2.5, 5, 10,
}

// NativeBucketFactor is the growth factor of the native histogram on the
// same family: each bucket at most 10% wider than the one below, so a
// Prometheus scraping protobuf gets quantiles within ~5% at any latency.
const NativeBucketFactor = 1.1

// BytesBuckets are the buckets of the body size histograms: powers of 4
// from 64 B to 16 MiB.
var BytesBuckets = prometheus.ExponentialBuckets(64, 4, 10)

// ProxyMetrics holds the proxy's instruments on one registry. The
// per-request series are precomputed per route, backend and endpoint
// identity when a snapshot is compiled (Series), so recording a request on
// the hot path does no label work and allocates nothing after warm-up.
type ProxyMetrics struct {
	disabled bool
	req      requestVecs
	active   [2]prometheus.Gauge // by reporter: source, destination
	tcp      tcpVecs
	conns    *prometheus.GaugeVec
	mirrors  *prometheus.CounterVec
	res      resilienceVecs
	authz    *prometheus.CounterVec
	// RateLimits counts rate-limit decisions (ratelimit.go).
	RateLimits *RateLimitMetrics
	// Tap counts taps running and their events (tap.go).
	Tap *TapMetrics
	// AccessLog counts access log lines written and dropped (accesslog.go).
	AccessLog *AccessLogMetrics
	ref       refusalVecs
	conc      concurrencyVecs
	// Health records the local app's health checks (health.go).
	Health *HealthMetrics
	// Egress counts the outbound traffic policy's decisions (egress.go).
	Egress *EgressMetrics

	mu      sync.Mutex
	series  map[SeriesLabels]*Series
	dests   map[destKey]*DestMetrics
	sources map[Peer]*Sources
	tcpSets map[SeriesLabels]*TCPSeries
}

type requestVecs struct {
	count              *prometheus.CounterVec
	dur, reqBy, respBy *prometheus.HistogramVec
}

type destKey struct{ direction, service string }

// ProxyMetricsOptions tune NewProxyMetrics; the zero value is the default.
type ProxyMetricsOptions struct {
	// DisableRequests leaves out the per-request families (requests,
	// duration, bytes, active requests): Series returns nil and a nil
	// *Series records nothing. The other counters stay; they count rare
	// events, not requests.
	DisableRequests bool
}

// NewProxyMetrics registers the proxy's instruments on reg.
func NewProxyMetrics(reg prometheus.Registerer, opts ...ProxyMetricsOptions) (*ProxyMetrics, error) {
	var o ProxyMetricsOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	m := &ProxyMetrics{
		disabled: o.DisableRequests,
		mirrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MirrorRequestsName,
			Help: "Requests copied to a route's RequestMirror backend, by result (ok, failed, dropped).",
		}, []string{"result"}),
		series:  make(map[SeriesLabels]*Series),
		dests:   make(map[destKey]*DestMetrics),
		sources: make(map[Peer]*Sources),
		tcpSets: make(map[SeriesLabels]*TCPSeries),
	}
	for _, r := range []string{MirrorOK, MirrorFailed, MirrorDropped} {
		m.mirrors.WithLabelValues(r) // shown at 0 from the start
	}
	m.res = newResilienceVecs()
	m.tcp = newTCPVecs()
	m.conns = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: OpenConnectionsName,
		Help: "Connections open on the proxy's listeners (outbound, upstream, inbound), tunnels that left HTTP excluded.",
	}, []string{"listener"})
	m.authz = newAuthzVec()
	var err error
	if m.RateLimits, err = newRateLimitMetrics(reg); err != nil {
		return nil, err
	}
	m.ref = newRefusalVecs()
	m.conc = newConcurrencyVecs()
	m.Egress = newEgressMetrics()
	cs := []prometheus.Collector{m.mirrors, m.res.retries, m.res.overflows, m.res.ejections, m.conns, m.authz, m.conc.limit, m.conc.shed, m.Egress.vec}
	cs = append(cs, m.ref.collectors()...)
	cs = append(cs, m.tcp.collectors()...)
	if !m.disabled {
		m.req = newRequestVecs()
		active := prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: ActiveRequestsName,
			Help: "Requests in flight (HTTP requests, gRPC calls, tunnels), by reporter.",
		}, []string{"reporter"})
		m.active[0] = active.WithLabelValues(ReporterSource)
		m.active[1] = active.WithLabelValues(ReporterDestination)
		cs = append(cs, m.req.count, m.req.dur, m.req.reqBy, m.req.respBy, active)
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	if m.Tap, err = newTapMetrics(reg); err != nil {
		return nil, err
	}
	if m.AccessLog, err = newAccessLogMetrics(reg); err != nil {
		return nil, err
	}
	if m.Health, err = newHealthMetrics(reg); err != nil {
		return nil, err
	}
	return m, nil
}

func newRequestVecs() requestVecs {
	return requestVecs{
		count: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: RequestsTotalName,
			Help: "Requests handled, refused ones included, counted once per reporter when the response is done.",
		}, requestLabels),
		dur: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:                        RequestDurationName,
			Help:                        "Time from request received to response complete.",
			Buckets:                     RequestDurationBuckets,
			NativeHistogramBucketFactor: NativeBucketFactor,
			// Bounds a native histogram's memory under a wide spread of
			// latencies: past 160 buckets the resolution is halved.
			NativeHistogramMaxBucketNumber:  160,
			NativeHistogramMinResetDuration: time.Hour,
		}, requestLabels),
		reqBy: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    RequestBytesName,
			Help:    "Request body bytes received from the caller.",
			Buckets: BytesBuckets,
		}, requestLabels),
		respBy: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    ResponseBytesName,
			Help:    "Response body bytes sent to the caller.",
			Buckets: BytesBuckets,
		}, requestLabels),
	}
}

// Enabled reports whether the per-request families are recorded.
func (m *ProxyMetrics) Enabled() bool { return !m.disabled }

// Mirror counts one mirrored request's result (MirrorOK, MirrorFailed,
// MirrorDropped).
func (m *ProxyMetrics) Mirror(result string) { m.mirrors.WithLabelValues(result).Inc() }

// Active returns the in-flight gauge of a reporter (nil when disabled).
func (m *ProxyMetrics) Active(reporter string) prometheus.Gauge {
	if m.disabled {
		return nil
	}
	if reporter == ReporterDestination {
		return m.active[1]
	}
	return m.active[0]
}

// Peer is one side of a request as labels: service name, namespace and
// SPIFFE ID. Empty fields read Unknown.
type Peer struct{ Service, Namespace, Identity string }

func (p Peer) filled() Peer {
	if p.Service == "" {
		p.Service = Unknown
	}
	if p.Namespace == "" {
		p.Namespace = Unknown
	}
	if p.Identity == "" {
		p.Identity = Unknown
	}
	return p
}

// SeriesLabels are the labels of a request that are known before it runs:
// everything but response code, gRPC status, flags and mTLS.
type SeriesLabels struct {
	Reporter            string
	Source, Destination Peer
	Route               string // "" reads None
}

func (l SeriesLabels) filled() SeriesLabels {
	l.Source, l.Destination = l.Source.filled(), l.Destination.filled()
	if l.Route == "" {
		l.Route = None
	}
	return l
}

// Series returns the (cached) series of one label set: the compiler calls
// it per route, backend and endpoint identity, never a request. Nil when
// the per-request families are disabled.
func (m *ProxyMetrics) Series(l SeriesLabels) *Series {
	if m.disabled {
		return nil
	}
	l = l.filled()
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.series[l]
	if s == nil {
		s = &Series{vecs: &m.req, labels: l}
		m.series[l] = s
	}
	return s
}

// Result is how one request ended.
type Result struct {
	Code int
	// GRPCStatus is the response's grpc-status (None without one); pass
	// it through GRPCStatus so the label set stays bounded.
	GRPCStatus string
	Flags      string // NoFlags for none
	MTLS       bool
	Duration   time.Duration
	// RequestBytes and ResponseBytes are the body bytes read from the
	// caller and sent to it.
	RequestBytes, ResponseBytes int64
}

// Series records the requests of one label set.
type Series struct {
	vecs   *requestVecs
	labels SeriesLabels
	// fast[c] caches the children of status code c (100..599) over mTLS
	// with no gRPC status and no flags, the hot path; everything else is
	// cached in slow.
	fast [600]atomic.Pointer[children]

	mu   sync.RWMutex
	slow map[childKey]*children
}

type childKey struct {
	code        int
	grpc, flags string
	mtls        bool
}

type children struct {
	count            prometheus.Counter
	dur, reqB, respB prometheus.Observer
}

// Labels returns the series' precomputed labels.
func (s *Series) Labels() SeriesLabels { return s.labels }

// Request records one finished request. A nil Series records nothing.
func (s *Series) Request(r Result) {
	if s == nil {
		return
	}
	c := s.children(r)
	c.count.Inc()
	c.dur.Observe(r.Duration.Seconds())
	c.reqB.Observe(float64(r.RequestBytes))
	c.respB.Observe(float64(r.ResponseBytes))
}

func (s *Series) children(r Result) *children {
	hot := r.MTLS && r.Flags == NoFlags && r.GRPCStatus == None && r.Code >= 100 && r.Code < len(s.fast)
	if hot {
		if c := s.fast[r.Code].Load(); c != nil {
			return c
		}
	}
	k := childKey{r.Code, r.GRPCStatus, r.Flags, r.MTLS}
	s.mu.RLock()
	c := s.slow[k]
	s.mu.RUnlock()
	if c == nil {
		c = s.newChildren(k)
	}
	if hot {
		s.fast[r.Code].Store(c)
	}
	return c
}

func (s *Series) newChildren(k childKey) *children {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.slow[k]; c != nil {
		return c
	}
	l := s.labels
	vals := []string{
		l.Reporter,
		l.Source.Service, l.Source.Namespace, l.Source.Identity,
		l.Destination.Service, l.Destination.Namespace, l.Destination.Identity,
		l.Route, strconv.Itoa(k.code), k.grpc, k.flags, strconv.FormatBool(k.mtls),
	}
	c := &children{
		count: s.vecs.count.WithLabelValues(vals...),
		dur:   s.vecs.dur.WithLabelValues(vals...),
		reqB:  s.vecs.reqBy.WithLabelValues(vals...),
		respB: s.vecs.respBy.WithLabelValues(vals...),
	}
	if s.slow == nil {
		s.slow = make(map[childKey]*children)
	}
	s.slow[k] = c
	return c
}

// grpcStatuses are the label values of the 17 gRPC status codes.
var grpcStatuses = [...]string{"0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16"}

// GRPCStatus maps a grpc-status header value to its label: the code for
// 0..16, "unknown" for anything else an upstream sends (the label set
// stays bounded whatever an app writes), None for no value.
func GRPCStatus(v string) string {
	switch {
	case v == "":
		return None
	case len(v) == 1 && v[0] >= '0' && v[0] <= '9':
		return grpcStatuses[v[0]-'0']
	case len(v) == 2 && v[0] == '1' && v[1] >= '0' && v[1] <= '6':
		return grpcStatuses[10+v[1]-'0']
	}
	return Unknown
}

// Dest returns the cached resilience instruments of one (direction,
// service) pair; service is "name.namespace". Callers on a hot path keep
// the result.
func (m *ProxyMetrics) Dest(direction, service string) *DestMetrics {
	k := destKey{direction, service}
	m.mu.Lock()
	defer m.mu.Unlock()
	d := m.dests[k]
	if d == nil {
		d = &DestMetrics{m: m, direction: direction, service: service}
		m.dests[k] = d
	}
	return d
}

// DestMetrics are the resilience instruments of one (direction,
// destination service).
type DestMetrics struct {
	m                  *ProxyMetrics
	direction, service string
	res                resilienceCounters
}
