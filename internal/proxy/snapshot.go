package proxy

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
	"google.golang.org/protobuf/types/known/durationpb"
	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/concurrency"
	"trellis.dev/trellis/internal/lb"
	"trellis.dev/trellis/internal/meshname"
	"trellis.dev/trellis/internal/ratelimit"
	"trellis.dev/trellis/internal/resilience"
	"trellis.dev/trellis/internal/telemetry"
)

// ErrInvalidSnapshot wraps every reason Update refuses a snapshot.
var ErrInvalidSnapshot = errors.New("proxy: invalid snapshot")

const defaultDomain = meshname.DefaultDomain

// compiled is the immutable form of one meshv1.Snapshot, validated, with
// every chain built. Requests load it once and use it to the end; Update
// swaps in a new one.
type compiled struct {
	snap    *meshv1.Snapshot // nil before the first Update
	domain  string
	byHost  map[string]*service // every host alias
	byKey   map[string]*service // "name.namespace"
	inbound inboundConfig
	authz   *authzConfig // the inbound authorization (authz_filter.go)
	// The listener chains (chain.go), compiled with the snapshot.
	outbound, inboundH, tunnel Handler
	// unknown counts outbound requests refused before a service is known.
	unknown *telemetry.Series
	// changed is closed when this snapshot is superseded, waking requests
	// that wait for a service they asked the control plane for.
	changed chan struct{}
	// rateLimits are the running rate limits the snapshot uses, by
	// registry key; replicas is how many endpoints its own service has
	// (the divisor of a global limit's safe local share).
	rateLimits map[string]*ratelimit.Entry
	replicas   int
	// accessLog: this snapshot's requests are access-logged (the proxy's
	// AccessLogs mode, else the snapshot's telemetry).
	accessLog bool
	// egress is the outbound traffic policy (egress.go).
	egress egressConfig
}

type inboundConfig struct {
	key   string // "name.namespace" of this proxy's service
	ports []portSpec
	def   portSpec // used when a request names no port
	// sources are the destination-side series, by caller; dst is this
	// proxy's own side (service, namespace, identity) for them and for
	// the tunnels peers open to it.
	sources *telemetry.Sources
	dst     telemetry.Peer
	// rateLimits are the service's RateLimitPolicies (inbound_policy).
	rateLimits []*rateLimiter
	// permissive: the service's mTLS mode is PERMISSIVE, plaintext
	// connections and requests are accepted on the inbound port.
	permissive bool
	// limiter is the adaptive concurrency limit (nil: none), concMetrics
	// its instruments.
	limiter     *concurrency.Limiter
	concMetrics *telemetry.ConcurrencyMetrics
}

func (ic *inboundConfig) port(p uint32) (portSpec, bool) {
	for _, ps := range ic.ports {
		if ps.port == p {
			return ps, true
		}
	}
	return portSpec{}, false
}

type portSpec struct {
	port    uint32
	portStr string
	portHdr []string // {portStr}, shared by every request's header
	proto   meshv1.Protocol
	appAddr string // inbound only: the app's loopback address for this port
}

func (ps portSpec) h2() bool {
	return ps.proto == meshv1.Protocol_HTTP2 || ps.proto == meshv1.Protocol_GRPC
}

type service struct {
	key      string
	name, ns string
	ports    []portSpec
	defPort  uint32
	routes   []route
	// eps are the healthy endpoints; the same *lb.Endpoint in every
	// snapshot while its address stays, so balancing state survives swaps.
	eps     []*lb.Endpoint
	peers   []*peer // peers[i] is the connection pool of eps[i]
	picker  lb.Picker
	metrics *telemetry.DestMetrics // outbound resilience counters
	// noRoute counts requests for the service that no route took; tcp its
	// tunnels (source side).
	noRoute *telemetry.Series
	tcp     *telemetry.TCPSeries
	// res is the service's retry, breaker and outlier state (its
	// BackendPolicy); hosts[i] is the outlier state of eps[i] (nil without
	// outlier detection).
	res   *serviceResilience
	hosts []*resilience.Host
	// ext is set for an ExternalService (egress_upstream.go).
	ext *externalService
}

// port returns the declared port p, or an HTTP port spec for undeclared ones.
func (s *service) port(p uint32) portSpec {
	for _, ps := range s.ports {
		if ps.port == p {
			return ps
		}
	}
	ps := strconv.FormatUint(uint64(p), 10)
	return portSpec{port: p, portStr: ps, portHdr: []string{ps}, proto: meshv1.Protocol_HTTP}
}

// peerOf returns the pool of e, one of s.eps. A scan, not a map: endpoint
// lists are short and pointer compares cheap.
func (s *service) peerOf(e *lb.Endpoint) *peer {
	for i, x := range s.eps {
		if x == e {
			return s.peers[i]
		}
	}
	return nil
}

type route struct {
	name     string
	port     uint32
	matches  []match
	backends []backend
	cum      []uint32 // cumulative weights, same order as backends

	requestHeaders, responseHeaders []headerModifier
	timeout, attemptTimeout         time.Duration // 0: none
	retry                           *retryPolicy  // the route's service's
	// The issue-6 route filters (route_filters.go); nil or empty: none.
	redirect *redirectSpec
	rewrite  *urlRewrite
	mirrors  []mirrorSpec
	fault    *faultSpec
	// The route's RateLimitPolicies: checked, then bound.
	rateLimitSpecs []*rateLimitSpec
	rateLimits     []*rateLimiter
	// handler is the route's compiled chain (chain.go: routeChain).
	handler Handler
	// series counts what the route answers before a backend is chosen (a
	// redirect, an injected fault): destination the service it serves.
	series *telemetry.Series
}

type backend struct {
	svc  *service
	port uint32 // 0: the request's port
	// series are the source-side series of this route and backend, by the
	// endpoint identity the attempt went to; noEndpoint before one is
	// picked (or when none is). Built at compile, read-only after.
	series     map[string]*telemetry.Series
	noEndpoint *telemetry.Series
}

// seriesFor returns the series of an attempt to an endpoint of identity id.
func (b *backend) seriesFor(id string) *telemetry.Series {
	if s := b.series[id]; s != nil {
		return s
	}
	return b.noEndpoint
}

type match struct {
	pathType meshv1.PathMatch_Type
	hasPath  bool
	path     string
	pathRe   *regexp.Regexp
	headers  []headerMatch
	queries  []queryMatch
	method   string
}

type headerMatch struct {
	name  string // canonical
	value string
	re    *regexp.Regexp
}

// match returns the first route of s that matches ex on port, or nil.
func (s *service) match(ex *Exchange, port uint32) *route {
	for i := range s.routes {
		rt := &s.routes[i]
		if rt.port != 0 && rt.port != port {
			continue
		}
		if len(rt.matches) == 0 {
			ex.matched = nil
			return rt
		}
		for j := range rt.matches {
			if rt.matches[j].ok(ex) {
				ex.matched = &rt.matches[j]
				return rt
			}
		}
	}
	return nil
}

func (m *match) ok(ex *Exchange) bool {
	if m.method != "" && m.method != ex.Method {
		return false
	}
	if m.hasPath {
		p := ex.Path
		if p == "" {
			p = "/"
		}
		switch m.pathType {
		case meshv1.PathMatch_EXACT:
			if p != m.path {
				return false
			}
		case meshv1.PathMatch_REGEX:
			if !m.pathRe.MatchString(p) {
				return false
			}
		default:
			if !prefixMatch(m.path, p) {
				return false
			}
		}
	}
	for i := range m.headers {
		h := &m.headers[i]
		vv := ex.Header[h.name]
		if len(vv) == 0 {
			return false
		}
		if h.re != nil {
			if !h.re.MatchString(vv[0]) {
				return false
			}
		} else if vv[0] != h.value {
			return false
		}
	}
	for i := range m.queries {
		if !m.queries[i].ok(ex.RawQuery) {
			return false
		}
	}
	return true
}

// prefixMatch is the Gateway API's PathPrefix: element-wise, so "/foo"
// matches "/foo" and "/foo/bar" but not "/foobar". prefix has no trailing
// slash except for "/" itself.
func prefixMatch(prefix, path string) bool {
	if prefix == "/" {
		return true
	}
	if !strings.HasPrefix(path, prefix) {
		return false
	}
	return len(path) == len(prefix) || path[len(prefix)] == '/'
}

// pickBackend maps a draw n in [0, total weight) to the backend whose
// cumulative-weight interval [cum[i-1], cum[i]) holds it. Zero-weight
// backends are never in cum.
func pickBackend(cum []uint32, n uint32) int {
	for i, c := range cum {
		if n < c {
			return i
		}
	}
	return len(cum) - 1
}

// pick chooses a backend by weight with the draw function randN.
func (rt *route) pick(randN func(uint32) uint32) *backend {
	if len(rt.backends) == 1 {
		return &rt.backends[0]
	}
	return &rt.backends[pickBackend(rt.cum, randN(rt.cum[len(rt.cum)-1]))]
}

// compileEnv is what compile needs from the proxy: long-lived state that
// survives snapshot swaps.
type compileEnv struct {
	ownNS   string
	appHost string
	appPort uint32
	// balancer is used for services whose backend policy names none.
	balancer lb.Policy
	// picker returns the picker of service key for cfg over eps (the
	// slice the service's snapshot holds), reusing one while neither its
	// config nor, for a hashing one, its endpoint set changed.
	picker   func(key string, cfg lb.Config, eps []*lb.Endpoint) (lb.Picker, error)
	endpoint func(key, addr string) *lb.Endpoint
	peer     func(addr, identity string) *peer
	metrics  func(direction, key string) *telemetry.DestMetrics
	// pm and source give the per-request series (nil pm: none, as with
	// --disable-metrics); source is this proxy's own side.
	pm     *telemetry.ProxyMetrics
	source telemetry.Peer
	// resilience binds a service's checked policy to its long-lived state,
	// host an endpoint's outlier state; nil: fresh state (tests).
	resilience func(key string, rs *resilienceSpec) *serviceResilience
	host       func(key string, e *lb.Endpoint) *resilience.Host
	randN      func(uint32) uint32 // weighted pick's draw; rand.Uint32N
	proxy      *Proxy              // the chains' stages; nil in compile-only tests

	// limiter returns the inbound concurrency limiter for cfg, the live
	// one while cfg is unchanged; nil: a fresh one (tests).
	limiter     func(cfg concurrency.Config) (*concurrency.Limiter, error)
	concMetrics func(key string) *telemetry.ConcurrencyMetrics
}

func invalid(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidSnapshot, fmt.Sprintf(format, a...))
}

// compile validates s and builds its snapshot, chains included. It never
// touches live state except through env's constructors, whose products are
// harmless if the snapshot is then thrown away.
func compile(s *meshv1.Snapshot, env compileEnv) (*compiled, error) {
	if s == nil {
		return nil, invalid("snapshot is nil")
	}
	if env.randN == nil {
		env.randN = rand.Uint32N
	}
	c := &compiled{
		snap:    s,
		domain:  s.GetDomain(),
		byHost:  make(map[string]*service),
		byKey:   make(map[string]*service),
		changed: make(chan struct{}),
		unknown: env.series(telemetry.SeriesLabels{}),
	}
	if c.domain == "" {
		c.domain = defaultDomain
	}
	// Unset or unknown modes are STRICT: only PERMISSIVE opens plaintext.
	c.inbound.permissive = s.GetInboundPolicy().GetMtlsMode() == meshv1.MtlsMode_PERMISSIVE
	if err := c.compileInbound(s.GetInbound(), env); err != nil {
		return nil, err
	}
	if err := c.compileAuthz(s.GetInboundPolicy().GetAuthorization(), env); err != nil {
		return nil, err
	}
	if err := c.compileConcurrencyLimit(s.GetInboundPolicy(), env); err != nil {
		return nil, err
	}
	inboundLimits, err := compileRateLimits("inbound_policy.rate_limits", s.GetInboundPolicy().GetRateLimits())
	if err != nil {
		return nil, err
	}
	if c.egress, err = compileEgress(s.GetOutboundTrafficPolicy()); err != nil {
		return nil, err
	}
	// Pass 1: services, ports and endpoints, so routes can refer to any.
	byName := map[string]int{}
	policies := make([]lb.Config, len(s.GetServices()))
	specs := make([]*resilienceSpec, len(s.GetServices()))
	for i, ps := range s.GetServices() {
		svc, pol, err := compileService(fmt.Sprintf("services[%d]", i), ps, env)
		if err != nil {
			return nil, err
		}
		if specs[i], err = compileResilience(fmt.Sprintf("services[%d]", i), ps.GetBackendPolicy()); err != nil {
			return nil, err
		}
		if _, dup := c.byKey[svc.key]; dup {
			return nil, invalid("services[%d]: duplicate service %s", i, svc.key)
		}
		c.byKey[svc.key] = svc
		policies[i] = pol
		byName[ps.GetName()]++
	}
	// Pass 2: routes.
	for i, ps := range s.GetServices() {
		svc := c.byKey[ps.GetName()+"."+ps.GetNamespace()]
		for j, r := range ps.GetRoutes() {
			rt, err := c.compileRoute(fmt.Sprintf("services[%d].routes[%d]", i, j), r, ps.GetNamespace())
			if err != nil {
				return nil, err
			}
			svc.routes = append(svc.routes, rt)
		}
		if len(svc.routes) == 0 {
			svc.routes = []route{{name: "default", backends: []backend{{svc: svc}}, cum: []uint32{1}}}
		}
	}
	// Everything is valid: attach long-lived state, build the chains and
	// index host aliases. Resilience state first: a route's chain looks at
	// its backends' breakers and detectors.
	c.rateLimits = map[string]*ratelimit.Entry{}
	c.inbound.rateLimits = env.proxy.bindRateLimits(telemetry.Inbound, "service", inboundLimits, c.rateLimits)
	for i, ps := range s.GetServices() {
		svc := c.byKey[ps.GetName()+"."+ps.GetNamespace()]
		if env.resilience != nil {
			svc.res = env.resilience(svc.key, specs[i])
		} else {
			svc.res = specs[i].bind(nil)
		}
	}
	for i, ps := range s.GetServices() {
		name, ns := ps.GetName(), ps.GetNamespace()
		svc := c.byKey[name+"."+ns]
		svc.metrics = env.metrics(telemetry.Outbound, svc.key)
		for _, e := range svc.endpoints(ps) {
			if !e.GetHealthy() {
				continue
			}
			ep := env.endpoint(svc.key, e.GetAddress())
			svc.eps = append(svc.eps, ep)
			svc.peers = append(svc.peers, env.peerFor(svc, e))
			if svc.res.detector != nil {
				svc.hosts = append(svc.hosts, hostFor(env, svc.key, ep))
			}
		}
		// After the endpoints: a hashing picker is built over them.
		p, err := env.picker(svc.key, policies[i], svc.eps)
		if err != nil {
			return nil, invalid("services[%d].backend_policy: %v", i, err)
		}
		svc.picker = p
		for j := range svc.routes {
			rt := &svc.routes[j]
			rt.retry = svc.res.retry
			if rt.retry.perTry > 0 {
				rt.attemptTimeout = rt.retry.perTry
			}
			rt.rateLimits = env.proxy.bindRateLimits(telemetry.Outbound, routeObject(rt.name), rt.rateLimitSpecs, c.rateLimits)
			rt.handler = env.proxy.routeChain(rt, env)
		}
		c.byHost[svc.key] = svc
		c.byHost[svc.key+".svc"] = svc
		c.byHost[svc.key+".svc."+c.domain] = svc
		// A bare name means the caller's namespace, as in Kubernetes; when
		// the caller's namespace has no such service, a name unique in the
		// snapshot still resolves.
		if ns == env.ownNS || (byName[name] == 1 && c.byKey[name+"."+env.ownNS] == nil) {
			c.byHost[name] = svc
		}
		svc.indexExternalHosts(c.byHost)
	}
	// A global limit's safe share divides by the replicas of this proxy's
	// own service, as the snapshot has them (endpoints are set above).
	if own := c.byKey[c.inbound.key]; own != nil {
		c.replicas = len(own.eps)
	}
	if c.accessLog, err = env.proxy.accessLogOn(s); err != nil {
		return nil, err
	}
	for _, svc := range c.byKey {
		svc.compileSeries(env)
	}
	c.outbound = env.proxy.outboundChain()
	c.inboundH = env.proxy.inboundChain()
	c.tunnel = env.proxy.tunnelChain()
	return c, nil
}

// series returns the source-side series of l, nil without metrics.
func (env compileEnv) series(l telemetry.SeriesLabels) *telemetry.Series {
	if env.pm == nil {
		return nil
	}
	l.Reporter, l.Source = telemetry.ReporterSource, env.source
	return env.pm.Series(l)
}

// compileSeries precomputes the service's source-side series: one per
// route, backend and endpoint identity, so a request only picks one.
func (s *service) compileSeries(env compileEnv) {
	dst := telemetry.Peer{Service: s.name, Namespace: s.ns}
	s.noRoute = env.series(telemetry.SeriesLabels{Destination: dst})
	if env.pm != nil {
		s.tcp = env.pm.TCP(telemetry.SeriesLabels{Reporter: telemetry.ReporterSource, Source: env.source, Destination: dst})
	}
	for i := range s.routes {
		rt := &s.routes[i]
		rt.series = env.series(telemetry.SeriesLabels{Destination: dst, Route: rt.name})
		for j := range rt.backends {
			rt.backends[j].compileSeries(env, rt.name)
		}
		for j := range rt.mirrors {
			rt.mirrors[j].backend.compileSeries(env, rt.name)
		}
	}
}

func (b *backend) compileSeries(env compileEnv, route string) {
	dst := telemetry.Peer{Service: b.svc.name, Namespace: b.svc.ns}
	b.noEndpoint = env.series(telemetry.SeriesLabels{Destination: dst, Route: route})
	if env.pm == nil {
		return
	}
	b.series = make(map[string]*telemetry.Series)
	for _, pr := range b.svc.peers {
		if b.series[pr.identity] == nil {
			dst.Identity = pr.identity
			b.series[pr.identity] = env.series(telemetry.SeriesLabels{Destination: dst, Route: route})
		}
	}
}

func hostFor(env compileEnv, key string, ep *lb.Endpoint) *resilience.Host {
	if env.host != nil {
		return env.host(key, ep)
	}
	return resilience.NewHost(ep)
}

// compileService checks one service, its ports and endpoints, and returns
// its balancer config; routes, endpoints' state and chains come later.
func compileService(f string, ps *meshv1.Service, env compileEnv) (*service, lb.Config, error) {
	var none lb.Config
	if !meshname.IsLabel(ps.GetName()) {
		return nil, none, invalid("%s.name: %q is not a DNS label", f, ps.GetName())
	}
	if !meshname.IsLabel(ps.GetNamespace()) {
		return nil, none, invalid("%s.namespace: %q is not a DNS label", f, ps.GetNamespace())
	}
	svc := &service{key: ps.GetName() + "." + ps.GetNamespace(), name: ps.GetName(), ns: ps.GetNamespace()}
	ports, err := compilePorts(f, ps.GetPorts(), "")
	if err != nil {
		return nil, none, err
	}
	svc.ports = ports
	svc.defPort = 80
	if len(ports) > 0 {
		svc.defPort = ports[0].port
		for _, p := range ports {
			if p.port == 80 {
				svc.defPort = 80
			}
		}
	}
	if ps.GetExternal() != nil {
		// An external service's endpoints are checked as such.
		if svc.ext, err = compileExternal(f, ps); err != nil {
			return nil, none, err
		}
	}
	for j, e := range ps.GetEndpoints() {
		if svc.ext != nil {
			break
		}
		ef := fmt.Sprintf("%s.endpoints[%d]", f, j)
		if _, _, err := net.SplitHostPort(e.GetAddress()); err != nil || e.GetAddress() == "" {
			return nil, none, invalid("%s.address: %q is not host:port", ef, e.GetAddress())
		}
		if !strings.HasPrefix(e.GetIdentity(), "spiffe://") {
			return nil, none, invalid("%s.identity: %q is not a SPIFFE ID; peers are verified against it", ef, e.GetIdentity())
		}
	}
	cfg, err := compileBalancer(f+".backend_policy", ps.GetBackendPolicy(), env.balancer)
	if err != nil {
		return nil, none, err
	}
	return svc, cfg, nil
}

// balancerPolicy maps a snapshot load balancer to lb's policy;
// LOAD_BALANCER_UNSPECIFIED (the proxy's default) and unknown values are not
// mapped.
func balancerPolicy(k meshv1.LoadBalancer) (lb.Policy, bool) {
	switch k {
	case meshv1.LoadBalancer_P2C_PEAK_EWMA:
		return lb.PeakEWMA, true
	case meshv1.LoadBalancer_ROUND_ROBIN:
		return lb.RoundRobin, true
	case meshv1.LoadBalancer_RANDOM:
		return lb.Random, true
	case meshv1.LoadBalancer_LEAST_REQUEST:
		return lb.LeastRequest, true
	case meshv1.LoadBalancer_RING_HASH:
		return lb.RingHash, true
	case meshv1.LoadBalancer_MAGLEV:
		return lb.Maglev, true
	}
	return "", false
}

// compileBalancer reads a backend policy's balancing fields (load_balancer,
// hash, slow_start) into a picker config; def is the proxy's default
// balancer. A hash policy only matters to a hashing balancer and is
// dropped for others, so that it does not split the picker cache.
func compileBalancer(f string, bp *meshv1.BackendPolicy, def lb.Policy) (lb.Config, error) {
	cfg := lb.Config{Policy: def}
	if k := bp.GetLoadBalancer(); k != meshv1.LoadBalancer_LOAD_BALANCER_UNSPECIFIED {
		pol, ok := balancerPolicy(k)
		if !ok {
			return cfg, invalid("%s.load_balancer: unknown balancer %d", f, k)
		}
		cfg.Policy = pol
	}
	if d := bp.GetSlowStart(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
			return cfg, invalid("%s.slow_start: %v is not a non-negative duration", f, d)
		}
		cfg.SlowStart = d.AsDuration()
	}
	if !cfg.Policy.Hashing() {
		return cfg, nil
	}
	h := bp.GetHash()
	switch k := h.GetKey().(type) {
	case nil:
		// No key: every request is balanced randomly (the proto's rule).
	case *meshv1.HashPolicy_Header:
		if !httpguts.ValidHeaderFieldName(k.Header) {
			return cfg, invalid("%s.hash.header: %q is not a header name", f, k.Header)
		}
		cfg.Hash = lb.HashKey{Kind: lb.HashHeader, Name: k.Header}
	case *meshv1.HashPolicy_Cookie:
		if !httpguts.ValidHeaderFieldName(k.Cookie) { // a cookie name is an RFC 7230 token too
			return cfg, invalid("%s.hash.cookie: %q is not a cookie name", f, k.Cookie)
		}
		cfg.Hash = lb.HashKey{Kind: lb.HashCookie, Name: k.Cookie}
	case *meshv1.HashPolicy_QueryParam:
		if k.QueryParam == "" {
			return cfg, invalid("%s.hash.query_param: empty", f)
		}
		cfg.Hash = lb.HashKey{Kind: lb.HashQuery, Name: k.QueryParam}
	case *meshv1.HashPolicy_SourceIdentity:
		if k.SourceIdentity {
			cfg.Hash = lb.HashKey{Kind: lb.HashSource}
		}
	}
	return cfg, nil
}

func (c *compiled) compileInbound(in *meshv1.Service, env compileEnv) error {
	key := "unknown." + env.ownNS
	if in.GetName() != "" {
		key = in.GetName() + "." + in.GetNamespace()
	}
	ports, err := compilePorts("inbound", in.GetPorts(), env.appHost)
	if err != nil {
		return err
	}
	dst := env.source
	if in.GetName() != "" {
		dst.Service, dst.Namespace = in.GetName(), in.GetNamespace()
	}
	c.inbound = inboundConfig{key: key, ports: ports, dst: dst, permissive: c.inbound.permissive}
	if env.pm != nil {
		c.inbound.sources = env.pm.Sources(dst)
	}
	c.inbound.def = portSpec{proto: meshv1.Protocol_HTTP}
	if env.appHost == "" {
		return nil
	}
	// The service's first port is the app at --app, whatever its targetPort
	// says: several replicas (say inventory v1 and v2) share one Service but
	// listen on different local ports. Further ports go to the app's host at
	// their targetPort.
	appAddr := net.JoinHostPort(env.appHost, strconv.FormatUint(uint64(env.appPort), 10))
	c.inbound.def.appAddr = appAddr
	if len(ports) > 0 {
		ports[0].appAddr = appAddr
		c.inbound.def = ports[0]
	}
	return nil
}

func compilePorts(field string, in []*meshv1.Port, appHost string) ([]portSpec, error) {
	var out []portSpec
	for i, p := range in {
		if p.GetPort() == 0 || p.GetPort() > 65535 {
			return nil, invalid("%s.ports[%d].port: %d is not 1..65535", field, i, p.GetPort())
		}
		if p.GetTargetPort() > 65535 {
			return nil, invalid("%s.ports[%d].target_port: %d is not 0..65535", field, i, p.GetTargetPort())
		}
		for _, o := range out {
			if o.port == p.GetPort() {
				return nil, invalid("%s.ports[%d].port: duplicate port %d", field, i, p.GetPort())
			}
		}
		pstr := strconv.FormatUint(uint64(p.GetPort()), 10)
		ps := portSpec{port: p.GetPort(), portStr: pstr, portHdr: []string{pstr}, proto: p.GetProtocol()}
		if ps.proto == meshv1.Protocol_PROTOCOL_UNSPECIFIED {
			ps.proto = meshv1.Protocol_HTTP
		}
		if appHost != "" {
			t := p.GetTargetPort()
			if t == 0 {
				t = p.GetPort()
			}
			ps.appAddr = net.JoinHostPort(appHost, strconv.FormatUint(uint64(t), 10))
		}
		out = append(out, ps)
	}
	return out, nil
}

func (c *compiled) compileRoute(f string, r *meshv1.Route, ns string) (route, error) {
	rt := route{name: r.GetName(), port: r.GetPort()}
	if rt.port > 65535 {
		return rt, invalid("%s.port: %d is not 0..65535", f, rt.port)
	}
	for i, m := range r.GetMatches() {
		mf := fmt.Sprintf("%s.matches[%d]", f, i)
		cm := match{method: m.GetMethod()}
		if pm := m.GetPath(); pm != nil {
			cm.hasPath, cm.pathType, cm.path = true, pm.GetType(), pm.GetValue()
			switch pm.GetType() {
			case meshv1.PathMatch_REGEX:
				re, err := regexp.Compile(`^(?:` + pm.GetValue() + `)$`)
				if err != nil {
					return rt, invalid("%s.path.value: bad regex: %v", mf, err)
				}
				cm.pathRe = re
			case meshv1.PathMatch_EXACT, meshv1.PathMatch_PREFIX:
				if cm.path == "" && pm.GetType() == meshv1.PathMatch_PREFIX {
					cm.path = "/"
				}
				if !strings.HasPrefix(cm.path, "/") {
					return rt, invalid("%s.path.value: %q must start with /", mf, cm.path)
				}
				if pm.GetType() == meshv1.PathMatch_PREFIX && len(cm.path) > 1 {
					cm.path = strings.TrimSuffix(cm.path, "/")
				}
			default:
				return rt, invalid("%s.path.type: unknown type %d", mf, pm.GetType())
			}
		}
		for j, h := range m.GetHeaders() {
			hf := fmt.Sprintf("%s.headers[%d]", mf, j)
			if h.GetName() == "" {
				return rt, invalid("%s.name: empty", hf)
			}
			hm := headerMatch{name: http.CanonicalHeaderKey(h.GetName()), value: h.GetValue()}
			switch h.GetType() {
			case meshv1.HeaderMatch_REGEX:
				re, err := regexp.Compile(`^(?:` + h.GetValue() + `)$`)
				if err != nil {
					return rt, invalid("%s.value: bad regex: %v", hf, err)
				}
				hm.re = re
			case meshv1.HeaderMatch_EXACT:
			default:
				return rt, invalid("%s.type: unknown type %d", hf, h.GetType())
			}
			cm.headers = append(cm.headers, hm)
		}
		for j, q := range m.GetQueryParams() {
			qf := fmt.Sprintf("%s.query_params[%d]", mf, j)
			if q.GetName() == "" {
				return rt, invalid("%s.name: empty", qf)
			}
			qm := queryMatch{name: q.GetName(), value: q.GetValue()}
			switch q.GetType() {
			case meshv1.QueryParamMatch_REGEX:
				re, err := regexp.Compile(`^(?:` + q.GetValue() + `)$`)
				if err != nil {
					return rt, invalid("%s.value: bad regex: %v", qf, err)
				}
				qm.re = re
			case meshv1.QueryParamMatch_EXACT:
			default:
				return rt, invalid("%s.type: unknown type %d", qf, q.GetType())
			}
			cm.queries = append(cm.queries, qm)
		}
		rt.matches = append(rt.matches, cm)
	}
	if err := c.compileFilters(f, &rt, r.GetFilters(), ns); err != nil {
		return rt, err
	}
	var err error
	if rt.rateLimitSpecs, err = compileRateLimits(f+".rate_limits", r.GetRateLimits()); err != nil {
		return rt, err
	}
	if len(r.GetBackends()) == 0 && rt.redirect != nil {
		// The proxy answers every request itself.
		return rt, rt.compileTimeouts(f+".timeouts", r.GetTimeouts())
	}
	if len(r.GetBackends()) == 0 {
		return rt, invalid("%s.backends: empty; a route must send traffic somewhere", f)
	}
	var total uint64
	for i, b := range r.GetBackends() {
		bf := fmt.Sprintf("%s.backends[%d]", f, i)
		bns := b.GetNamespace()
		if bns == "" {
			bns = ns
		}
		svc := c.byKey[b.GetService()+"."+bns]
		if svc == nil {
			return rt, invalid("%s.service: %s.%s is not in the snapshot", bf, b.GetService(), bns)
		}
		if b.GetPort() > 65535 {
			return rt, invalid("%s.port: %d is not 0..65535", bf, b.GetPort())
		}
		if b.GetWeight() == 0 {
			continue
		}
		total += uint64(b.GetWeight())
		if total > 1<<31 {
			return rt, invalid("%s.weight: weights sum past 2^31", bf)
		}
		rt.backends = append(rt.backends, backend{svc: svc, port: b.GetPort()})
		rt.cum = append(rt.cum, uint32(total))
	}
	if total == 0 {
		return rt, invalid("%s.backends: every weight is 0", f)
	}
	return rt, rt.compileTimeouts(f+".timeouts", r.GetTimeouts())
}

// compileFilters checks and compiles a route's filters, in order. A filter
// of a kind this proxy does not know arrives as an empty oneof and is
// refused: silently skipping it would route differently than asked.
func (c *compiled) compileFilters(f string, rt *route, fs []*meshv1.RouteFilter, ns string) error {
	for i, rf := range fs {
		ff := fmt.Sprintf("%s.filters[%d]", f, i)
		switch k := rf.GetFilter().(type) {
		case *meshv1.RouteFilter_RequestHeaderModifier:
			hm, err := compileHeaderModifier(ff+".request_header_modifier", k.RequestHeaderModifier)
			if err != nil {
				return err
			}
			rt.requestHeaders = append(rt.requestHeaders, hm)
		case *meshv1.RouteFilter_ResponseHeaderModifier:
			hm, err := compileHeaderModifier(ff+".response_header_modifier", k.ResponseHeaderModifier)
			if err != nil {
				return err
			}
			rt.responseHeaders = append(rt.responseHeaders, hm)
		default:
			known, err := c.compileRouteFilter(ff, rt, rf, ns)
			if err != nil {
				return err
			}
			if !known {
				return invalid("%s: empty or unknown filter kind; this proxy knows request_header_modifier, response_header_modifier, url_rewrite, request_redirect, request_mirror and fault", ff)
			}
		}
	}
	return nil
}

func compileHeaderModifier(f string, m *meshv1.HeaderModifier) (headerModifier, error) {
	var hm headerModifier
	if m == nil {
		return hm, invalid("%s: empty", f)
	}
	check := func(field, name, value string) error {
		if !httpguts.ValidHeaderFieldName(name) {
			return invalid("%s.name: %q is not a header name", field, name)
		}
		if !httpguts.ValidHeaderFieldValue(value) {
			return invalid("%s.value: %q is not a header value", field, value)
		}
		if hopHeader(http.CanonicalHeaderKey(name)) {
			return invalid("%s.name: %s is a hop-by-hop header the proxy owns", field, name)
		}
		return nil
	}
	for i, h := range m.GetSet() {
		if err := check(fmt.Sprintf("%s.set[%d]", f, i), h.GetName(), h.GetValue()); err != nil {
			return hm, err
		}
		hm.set = append(hm.set, headerValue{http.CanonicalHeaderKey(h.GetName()), []string{h.GetValue()}})
	}
	for i, h := range m.GetAdd() {
		if err := check(fmt.Sprintf("%s.add[%d]", f, i), h.GetName(), h.GetValue()); err != nil {
			return hm, err
		}
		hm.add = append(hm.add, headerValue{http.CanonicalHeaderKey(h.GetName()), []string{h.GetValue()}})
	}
	for i, name := range m.GetRemove() {
		if err := check(fmt.Sprintf("%s.remove[%d]", f, i), name, ""); err != nil {
			return hm, err
		}
		hm.remove = append(hm.remove, http.CanonicalHeaderKey(name))
	}
	return hm, nil
}

// compileTimeouts reads Gateway API HTTPRouteTimeouts: zero or unset is no
// timeout, and one attempt may not outlast the whole request.
func (rt *route) compileTimeouts(f string, t *meshv1.RouteTimeouts) error {
	get := func(field string, d *durationpb.Duration) (time.Duration, error) {
		if d == nil {
			return 0, nil
		}
		if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
			return 0, invalid("%s.%s: %v is not a non-negative duration", f, field, d)
		}
		return d.AsDuration(), nil
	}
	var err error
	if rt.timeout, err = get("request", t.GetRequest()); err != nil {
		return err
	}
	if rt.attemptTimeout, err = get("backend_request", t.GetBackendRequest()); err != nil {
		return err
	}
	if rt.timeout > 0 && rt.attemptTimeout > rt.timeout {
		return invalid("%s.backend_request: %v is longer than request %v", f, rt.attemptTimeout, rt.timeout)
	}
	return nil
}

// compileConcurrencyLimit binds the inbound adaptive concurrency limit.
func (c *compiled) compileConcurrencyLimit(ip *meshv1.InboundPolicy, env compileEnv) error {
	cfg, err := compileConcurrency(ip.GetConcurrency())
	if err != nil || cfg == nil {
		return err
	}
	newLimiter := concurrency.New
	if env.limiter != nil {
		newLimiter = env.limiter
	}
	if c.inbound.limiter, err = newLimiter(*cfg); err != nil {
		return invalid("inbound_policy.concurrency: %v", err)
	}
	if env.concMetrics != nil {
		c.inbound.concMetrics = env.concMetrics(c.inbound.key)
	}
	return nil
}
