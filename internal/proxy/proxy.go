// Package proxy is the sidecar's data plane: the outbound HTTP proxy and
// per-upstream listeners the app calls, the inbound mTLS listener peers call,
// the proxy-to-proxy transports and tunnels between them, and the admin port.
//
// Every request becomes an Exchange (exchange.go) and runs through its
// listener's filter chain; chain.go is the order of every chain and the
// place a new filter goes. The chains are compiled with each snapshot
// (snapshot.go), never per request. net/http lives only at the two edges:
// server.go turns a request into an exchange and writes the response the
// chain returns; upstream.go builds each attempt's outgoing request and
// returns the upstream's response.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/accesslog"
	"trellis.dev/trellis/internal/http1"
	"trellis.dev/trellis/internal/lb"
	"trellis.dev/trellis/internal/meshname"
	"trellis.dev/trellis/internal/ratelimit"
	"trellis.dev/trellis/internal/ratelog"
	"trellis.dev/trellis/internal/tap"
	"trellis.dev/trellis/internal/telemetry"
	"trellis.dev/trellis/internal/tracing"
)

// Options configure a Proxy. Empty listener addresses leave that listener off.
type Options struct {
	Service, Namespace string // this proxy's own service
	// AppAddr is the local app (HTTP), e.g. 127.0.0.1:8080; "" for a
	// client-only proxy. Inbound ports map to AppAddr's host.
	AppAddr                              string
	InboundAddr, OutboundAddr, AdminAddr string
	// Upstreams maps a service ("name", "name.namespace", optionally
	// ":port") to a local listen address, for apps that can't use an HTTP
	// proxy. A TCP port is tunnelled raw.
	Upstreams map[string]string
	// ServerTLS is the inbound mTLS config; it must require and verify
	// client certificates. Its certificate callbacks are kept, not copied.
	ServerTLS *tls.Config
	// ClientTLS returns the outbound mTLS config toward an endpoint whose
	// SPIFFE ID must be peerIdentity.
	ClientTLS func(peerIdentity string) *tls.Config
	// Balancer balances the services whose snapshot backend policy names
	// no load balancer; default lb.PeakEWMA.
	Balancer lb.Policy
	// Identity is this proxy's own SPIFFE ID: outbound, the source identity
	// a hashing balancer hashes (HashPolicy.source_identity). "" hashes
	// nothing: such requests are balanced randomly.
	Identity string
	// Subscribe asks the control plane for a service ("name.namespace")
	// not in the snapshot. It must not block.
	Subscribe    func(service string)
	DrainTimeout time.Duration        // default 10s
	Registry     *prometheus.Registry // nil: a new one
	Logger       *slog.Logger
	// Tracing, when set, traces every HTTP request: a client span
	// outbound, a server span inbound, W3C and B3 context propagated,
	// spans exported over OTLP. nil: no tracing, and no tracing work per
	// request. Its SamplingPercent is used until a snapshot's telemetry
	// sets one, unless SamplingFixed.
	Tracing *tracing.Config
	// SamplingFixed keeps Tracing.SamplingPercent whatever the snapshot
	// says (the proxy's flag wins over the Telemetry resource).
	SamplingFixed bool
	// AccessLog is where access log lines go (stdout, a rotating file);
	// the proxy closes it on Shutdown. nil: never logged.
	AccessLog io.WriteCloser
	// AccessLogs says when lines are written (default: as the snapshot's
	// telemetry says); AccessLogQueue bounds the lines waiting for the
	// sink (default accesslog.DefaultQueue), beyond which they are
	// dropped and counted.
	AccessLogs     AccessLogMode
	AccessLogQueue int
	// MaxMirrors bounds the RequestMirror copies in flight; beyond it
	// copies are dropped (and counted). Default DefaultMaxMirrors.
	MaxMirrors int
	// Limits bound what clients may hold of every listener (timeouts,
	// header size); zero fields take their defaults.
	Limits Limits
	// EnablePprof serves /debug/pprof/ on the admin port. Off by default:
	// profiles and the command line are not for any local user.
	EnablePprof bool
	// DisableMetrics leaves the per-request metrics out (the telemetry
	// filter and its families; --disable-metrics), so their cost can be
	// measured. Event counters (retries, breakers, tunnels) stay.
	DisableMetrics bool
	// CertNotAfter, when set, is read at scrape time for the certificate
	// expiry gauge.
	CertNotAfter func() time.Time
}

// DefaultMaxMirrors is Options.MaxMirrors' default: enough for a mirror
// about as fast as the primary at a few thousand requests per second, small
// enough that a stalled mirror costs little memory.
const DefaultMaxMirrors = 128

// SubscribeWait bounds how long a request for an unknown service waits for
// the control plane to send it.
const SubscribeWait = 2 * time.Second

// Proxy is one sidecar's data plane.
type Proxy struct {
	opts    Options
	log     *slog.Logger
	metrics *telemetry.ProxyMetrics
	appHost string
	appPort uint32
	// ownServiceKey is this proxy's service, name.namespace.
	ownServiceKey string
	// tracer and alog are Options.Tracing's and Options.AccessLog's; nil: off.
	tracer *tracing.Tracer
	alog   *accesslog.Logger
	taps   *tap.Taps // the running taps (tap_filter.go); nil set: none
	// refusals counts what the proxy refused or cleaned (hardening).
	refusals *telemetry.Refusals
	limits   Limits // Options.Limits with defaults
	// telemetry is the telemetry slot of every chain; activeIn/activeOut
	// the in-flight gauges (nil with DisableMetrics); sourceHdr is
	// {Service}, the X-Trellis-Source-Service value every request carries.
	telemetry           Filter
	activeIn, activeOut prometheus.Gauge
	sourceHdr           []string
	stats               *proxyStats // the windowed summaries (stats_record.go)

	cfg       atomic.Pointer[compiled]
	updateMu  sync.Mutex // serializes Update; guards pickers, endpoints, peers
	pickers   map[pickerKey]pickerEntry
	endpoints map[endpointKey]*lb.Endpoint
	peers     map[string]*peer
	resil     resilienceState
	egress    *egressState // egress.go: pass-through and external pools
	conc      concurrencyState
	timers    sync.Pool // *exTimer, the route timeouts'
	exchanges exchangePool
	// rateLimits holds the running rate limits across snapshots; epoch is the
	// zero of their clock (nanotime); slotTimers are the leaky buckets'
	// waits' (*time.Timer).
	rateLimits *ratelimit.Registry
	epoch      time.Time
	slotTimers sync.Pool

	// refusalLog rate-limits the log lines of denials and refusals.
	refusalLog *ratelog.Limiter

	subscribed sync.Map // service key → struct{}, Subscribe called once each
	ready      atomic.Bool
	appHealth  atomic.Pointer[appHealth] // nil: healthy (health.go)
	draining   atomic.Bool
	done       chan struct{}

	// hopH2 sends HTTP/1.1 app traffic between proxies over HTTP/2 instead
	// of HTTP/1.1 keep-alive connections (see BenchmarkHop).
	hopH2 bool
	// subscribeWait is SubscribeWait; tests shorten it.
	subscribeWait time.Duration

	appH1  *http1.Transport
	appH2C *http.Transport

	// mirrorSlots bounds the mirrored requests in flight (MaxMirrors);
	// mirrorChain sends them.
	mirrorSlots chan struct{}
	mirrorChain Handler

	mu        sync.Mutex
	started   bool
	servers   []httpServer
	admin     *http.Server
	listeners map[string]net.Listener // by role: inbound, outbound, admin, upstream:<key>
	upstreams []*upstream
	tracked   connTracker
	wg        sync.WaitGroup
}

// hopH2Default is the measured choice for HTTP/1.1 traffic between proxies.
// Since both ends run internal/http1 (no goroutine per connection, the
// response read on the caller's goroutine), HTTP/1.1 keep-alive beats the
// multiplexed HTTP/2 transport: BenchmarkHop, 2 cores, 8 parallel clients,
// benchstat over 6 runs: 196.7 against 274.1 CPU-µs per request (-28%),
// 97 against 149 allocations. Under net/http at both ends it was a tie.
const hopH2Default = false

type upstream struct {
	key  string // as given in Options.Upstreams
	host string
	port uint32
	ln   net.Listener
	h1   *http1.Server // its HTTP connections (h2c handed on)
}

// New checks o and builds a Proxy; Start binds its listeners.
func New(o Options) (*Proxy, error) {
	if o.Namespace == "" {
		o.Namespace = "default"
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = 10 * time.Second
	}
	if o.Balancer == "" {
		o.Balancer = lb.PeakEWMA
	}
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if _, err := lb.New(o.Balancer); err != nil {
		return nil, fmt.Errorf("proxy: balancer: %w", err)
	}
	if o.ClientTLS == nil && (o.OutboundAddr != "" || len(o.Upstreams) > 0) {
		return nil, errors.New("proxy: ClientTLS is required for outbound traffic")
	}
	if o.InboundAddr != "" {
		if o.ServerTLS == nil {
			return nil, errors.New("proxy: ServerTLS is required for the inbound listener")
		}
		if o.ServerTLS.ClientAuth < tls.RequireAnyClientCert ||
			(o.ServerTLS.ClientAuth == tls.RequireAnyClientCert && o.ServerTLS.VerifyPeerCertificate == nil && o.ServerTLS.VerifyConnection == nil && o.ServerTLS.GetConfigForClient == nil) {
			return nil, errors.New("proxy: ServerTLS must require and verify client certificates")
		}
	}
	p := &Proxy{
		opts:          o,
		log:           o.Logger.With("component", "proxy"),
		refusalLog:    ratelog.New(o.Logger.With("component", "proxy"), ratelog.Options{}),
		pickers:       make(map[pickerKey]pickerEntry),
		endpoints:     make(map[endpointKey]*lb.Endpoint),
		peers:         make(map[string]*peer),
		resil:         newResilienceState(),
		epoch:         time.Now(),
		done:          make(chan struct{}),
		hopH2:         hopH2Default,
		subscribeWait: SubscribeWait,
		listeners:     make(map[string]net.Listener),
		ownServiceKey: o.Service + "." + o.Namespace,
		stats:         newProxyStats(),
	}
	if o.AppAddr != "" {
		h, ps, err := net.SplitHostPort(o.AppAddr)
		port, ok := parsePort(ps)
		if err != nil || !ok {
			return nil, fmt.Errorf("proxy: AppAddr %q is not host:port", o.AppAddr)
		}
		p.appHost, p.appPort = h, port
	}
	for key := range o.Upstreams {
		host, port, err := splitAuthority(key)
		if err != nil {
			return nil, fmt.Errorf("proxy: upstream %q: %w", key, err)
		}
		if _, _, ok := meshname.ParseHost(host, o.Namespace, defaultDomain); !ok {
			return nil, fmt.Errorf("proxy: upstream %q is not a service name (name, name.namespace)", key)
		}
		p.upstreams = append(p.upstreams, &upstream{key: key, host: host, port: port})
	}
	p.rateLimits = ratelimit.NewRegistry(p.nanotime)
	m, err := telemetry.NewProxyMetrics(o.Registry, telemetry.ProxyMetricsOptions{DisableRequests: o.DisableMetrics})
	if err != nil {
		return nil, fmt.Errorf("proxy: metrics: %w", err)
	}
	if o.CertNotAfter != nil {
		if err := telemetry.RegisterCertExpiry(o.Registry, o.CertNotAfter); err != nil {
			return nil, fmt.Errorf("proxy: metrics: %w", err)
		}
	}
	p.metrics = m
	p.egress = newEgressState(m.Egress)
	if err := p.startObserving(); err != nil {
		return nil, err
	}
	p.refusals, p.taps = m.Refusals(), tap.NewTaps(m.Tap)
	p.limits = o.Limits.withDefaults()
	p.telemetry, p.sourceHdr = telemetryFilter, []string{o.Service}
	if o.DisableMetrics {
		p.telemetry = noTelemetry
	}
	p.activeIn, p.activeOut = m.Active(telemetry.ReporterDestination), m.Active(telemetry.ReporterSource)
	if o.MaxMirrors <= 0 {
		o.MaxMirrors = DefaultMaxMirrors
		p.opts.MaxMirrors = o.MaxMirrors
	}
	p.mirrorSlots = make(chan struct{}, o.MaxMirrors)
	p.mirrorChain = p.buildMirrorChain()
	var h2c http.Protocols
	h2c.SetUnencryptedHTTP2(true)
	p.appH1 = &http1.Transport{MaxIdlePerHost: 1024, IdleTimeout: 90 * time.Second}
	p.appH2C = &http.Transport{Protocols: &h2c, DisableCompression: true, IdleConnTimeout: 90 * time.Second}
	// An empty snapshot until the first Update, so waiting for one works.
	empty, err := compile(&meshv1.Snapshot{}, p.env())
	if err != nil {
		return nil, err
	}
	empty.snap = nil
	p.cfg.Store(empty)
	return p, nil
}

// pickerKey and endpointKey index the balancing state kept across
// snapshots: a service's picker per balancer config, an endpoint per
// address.
type pickerKey struct {
	service string
	cfg     lb.Config
}

// pickerEntry is a cached picker and, for a hashing one, the endpoint set
// its ring or table was built from.
type pickerEntry struct {
	picker lb.Picker
	eps    []*lb.Endpoint
}

type endpointKey struct{ service, addr string }

func (p *Proxy) env() compileEnv {
	return compileEnv{
		ownNS:    p.opts.Namespace,
		appHost:  p.appHost,
		appPort:  p.appPort,
		balancer: p.opts.Balancer,
		picker:   p.picker,
		endpoint: func(svc, addr string) *lb.Endpoint {
			k := endpointKey{svc, addr}
			e := p.endpoints[k]
			if e == nil {
				e = lb.NewEndpoint(addr)
				p.endpoints[k] = e
			}
			return e
		},
		peer: func(addr, identity string) *peer {
			if pr := p.peers[addr]; pr != nil && pr.identity == identity {
				return pr
			}
			pr := p.newPeer(addr, identity)
			if old := p.peers[addr]; old != nil {
				old.closeIdle()
			}
			p.peers[addr] = pr
			return pr
		},
		metrics:     p.metrics.Dest,
		pm:          p.metrics,
		source:      telemetry.Peer{Service: p.opts.Service, Namespace: p.opts.Namespace, Identity: p.opts.Identity},
		resilience:  p.resil.service,
		limiter:     p.conc.limiter,
		concMetrics: p.metrics.Concurrency,
		host:        p.resil.host,
		proxy:       p,
	}
}

// picker returns service svc's picker for cfg over eps: the cached one
// while cfg is unchanged and, for a hashing balancer (whose ring or table
// is built from the endpoints), while eps holds the same endpoints in the
// same order; else a new one, built here, at compile, never per request.
func (p *Proxy) picker(svc string, cfg lb.Config, eps []*lb.Endpoint) (lb.Picker, error) {
	k := pickerKey{svc, cfg}
	if pe, ok := p.pickers[k]; ok && (!cfg.Policy.Hashing() || slices.Equal(pe.eps, eps)) {
		return pe.picker, nil
	}
	pk, err := lb.NewPicker(cfg, eps)
	if err != nil {
		return nil, fmt.Errorf("proxy: balancer: %w", err)
	}
	p.pickers[k] = pickerEntry{picker: pk, eps: eps}
	return pk, nil
}

// Update validates s and swaps it in atomically. On error nothing changes and
// the error says what is wrong (the NACK's text).
func (p *Proxy) Update(s *meshv1.Snapshot) error {
	p.updateMu.Lock()
	defer p.updateMu.Unlock()
	c, err := compile(s, p.env())
	if err == nil {
		old := p.cfg.Swap(c)
		close(old.changed)
		p.rateLimits.SetReplicas(c.replicas)
		p.applySampling(s)
		p.conc.commit(c.inbound.limiter, c.inbound.concMetrics, p.done)
	}
	p.forget(p.cfg.Load())
	if err != nil {
		return err
	}
	p.log.Debug("snapshot applied", "version", s.GetVersion(), "revision", s.GetRevision(), "services", len(c.byKey))
	return nil
}

// forget drops balancing state and connection pools the live snapshot no
// longer refers to (a refused one may have made some); in-flight requests
// keep their own references.
func (p *Proxy) forget(c *compiled) {
	livePickers := make(map[lb.Picker]bool)
	liveEps := make(map[*lb.Endpoint]bool)
	livePeers := make(map[*peer]bool)
	for _, svc := range c.byKey {
		livePickers[svc.picker] = true
		for i, e := range svc.eps {
			liveEps[e] = true
			livePeers[svc.peers[i]] = true
		}
	}
	for k, pe := range p.pickers {
		if !livePickers[pe.picker] {
			delete(p.pickers, k)
		}
	}
	for k, e := range p.endpoints {
		if !liveEps[e] {
			delete(p.endpoints, k)
		}
	}
	for addr, pr := range p.peers {
		if !livePeers[pr] {
			pr.closeIdle()
			delete(p.peers, addr)
		}
	}
	p.resil.forget(c)
	p.egress.forget(livePeers)
	p.rateLimits.Keep(c.rateLimits)
}

// timerPool is the pool of the route chains' timeout timers (nil for a
// nil proxy: compile-only tests).
func (p *Proxy) timerPool() *sync.Pool {
	if p == nil {
		return nil
	}
	return &p.timers
}

// SetReady marks the app side ready; /ready also needs a first snapshot.
func (p *Proxy) SetReady(ok bool) { p.ready.Store(ok) }

// Ready reports what /ready answers.
func (p *Proxy) Ready() bool {
	return p.ready.Load() && !p.draining.Load() && p.cfg.Load().snap != nil && p.appHealth.Load() == nil
}

// InboundAddr returns the bound inbound address ("" before Start or if off).
func (p *Proxy) InboundAddr() string { return p.addr("inbound") }

// OutboundAddr returns the bound outbound address.
func (p *Proxy) OutboundAddr() string { return p.addr("outbound") }

// AdminAddr returns the bound admin address.
func (p *Proxy) AdminAddr() string { return p.addr("admin") }

// UpstreamAddr returns the bound address of the upstream listener named as in
// Options.Upstreams.
func (p *Proxy) UpstreamAddr(name string) string { return p.addr("upstream:" + name) }

func (p *Proxy) addr(role string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ln := p.listeners[role]; ln != nil {
		return ln.Addr().String()
	}
	return ""
}

// Start binds every listener and serves them in the background.
func (p *Proxy) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started {
		return errors.New("proxy: already started")
	}
	p.started = true
	var lns []net.Listener
	listen := func(role, addr string) (net.Listener, error) {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, fmt.Errorf("proxy: listen %s %s: %w", role, addr, err)
		}
		lns = append(lns, ln)
		p.listeners[role] = ln
		return ln, nil
	}
	errLog := slog.NewLogLogger(p.log.Handler(), slog.LevelDebug)
	// Each listener's connections are counted in the open-connections
	// gauge by the servers' ConnState hooks.
	type serve struct {
		srv httpServer
		run func()
	}
	var toServe []serve
	// h2cBehind is the net/http server that takes the HTTP/2 connections
	// of an app-facing HTTP/1.1 server (engine.go).
	h2cBehind := func(h http.Handler, listener string, addr net.Addr) *chanListener {
		ln := newChanListener(addr)
		srv := p.appServer(h, errLog)
		srv.ConnState = p.metrics.ConnState(listener)
		toServe = append(toServe, serve{srv, func() { _ = srv.Serve(ln) }})
		return ln
	}
	if a := p.opts.OutboundAddr; a != "" {
		ln, err := listen("outbound", a)
		if err != nil {
			return err
		}
		h := &edge{p: p, kind: outboundListener}
		h1 := p.h1Server(h, "outbound", 2*p.limits.MaxHeaderBytes, 1, h2cBehind(h, "outbound", ln.Addr()))
		toServe = append(toServe, serve{h1, func() { _ = h1.Serve(ln) }})
	}
	for _, u := range p.upstreams {
		ln, err := listen("upstream:"+u.key, p.opts.Upstreams[u.key])
		if err != nil {
			return err
		}
		u.ln = ln
		h := &edge{p: p, kind: upstreamListener, up: u}
		u.h1 = p.h1Server(h, "upstream", 2*p.limits.MaxHeaderBytes, 1, h2cBehind(h, "upstream", ln.Addr()))
		toServe = append(toServe, serve{u.h1, func() {}}) // fed by acceptUpstream
	}
	if a := p.opts.InboundAddr; a != "" {
		ln, err := listen("inbound", a)
		if err != nil {
			return err
		}
		var protos http.Protocols
		protos.SetHTTP1(true)
		protos.SetHTTP2(true)
		protos.SetUnencryptedHTTP2(true) // PERMISSIVE plaintext callers may speak h2c
		h := &edge{p: p, kind: inboundListener}
		srv := &http.Server{
			Handler:           h,
			ConnContext:       withConnInfo,
			Protocols:         &protos,
			ReadHeaderTimeout: p.limits.ReadHeaderTimeout,
			IdleTimeout:       p.limits.IdleTimeout,
			MaxHeaderBytes:    2 * inboundHeaderFactor * p.limits.MaxHeaderBytes,
			ErrorLog:          errLog,
			TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){ALPNTCP: p.serveTCPTunnel},
			HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: 1000},
			ConnState:         p.metrics.ConnState("inbound"),
		}
		in := inboundLn{chanListener: newChanListener(ln.Addr()), raw: ln}
		h1 := p.h1Server(h, "inbound", 2*inboundHeaderFactor*p.limits.MaxHeaderBytes, inboundHeaderFactor, in.chanListener)
		toServe = append(toServe, serve{srv, func() { _ = srv.Serve(in) }}, serve{h1, func() {}})
		inTLS := p.inboundTLS()
		p.wg.Add(1)
		go func() { defer p.wg.Done(); p.acceptInbound(in, inTLS, h1) }()
	}
	if a := p.opts.AdminAddr; a != "" {
		ln, err := listen("admin", a)
		if err != nil {
			return err
		}
		p.admin = &http.Server{Handler: p.adminHandler(), ReadHeaderTimeout: p.limits.ReadHeaderTimeout,
			ReadTimeout: time.Minute, IdleTimeout: p.limits.IdleTimeout, ErrorLog: errLog}
		p.wg.Add(1)
		go func() { defer p.wg.Done(); _ = p.admin.Serve(ln) }()
	}
	for _, s := range toServe {
		p.servers = append(p.servers, s.srv)
		p.wg.Add(1)
		go func() { defer p.wg.Done(); s.run() }()
	}
	for _, u := range p.upstreams {
		p.wg.Add(1)
		go func() { defer p.wg.Done(); p.acceptUpstream(u) }()
	}
	p.log.Info("proxy listening", "inbound", p.opts.InboundAddr, "outbound", p.opts.OutboundAddr, "admin", p.opts.AdminAddr, "upstreams", len(p.upstreams))
	return nil
}

// appServer serves h2c from the local app: the connections the HTTP/1.1
// server hands over (engine.go). Its header limit is twice Limits': the
// edge answers 431 (counted) above Limits, net/http above twice that.
func (p *Proxy) appServer(h http.Handler, errLog *log.Logger) *http.Server {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:           h,
		Protocols:         &protos,
		ReadHeaderTimeout: p.limits.ReadHeaderTimeout,
		IdleTimeout:       p.limits.IdleTimeout,
		MaxHeaderBytes:    2 * p.limits.MaxHeaderBytes,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: 1000},
		ErrorLog:          errLog,
	}
	return srv
}

// inboundTLS derives the inbound listener's config from ServerTLS: ALPN for
// HTTP/2, HTTP/1.1 and tunnels, and a peer that must present a SPIFFE ID.
func (p *Proxy) inboundTLS() *tls.Config {
	adjust := func(c *tls.Config) *tls.Config {
		c = c.Clone()
		c.NextProtos = []string{"h2", "http/1.1", ALPNTCP}
		c.VerifyConnection = p.verifyInboundPeer(c.VerifyConnection)
		if v := c.VerifyPeerCertificate; v != nil {
			c.VerifyPeerCertificate = p.countPeerCertificate(v)
		}
		return c
	}
	c := adjust(p.opts.ServerTLS)
	var next func(*tls.ClientHelloInfo) (*tls.Config, error)
	if get := p.opts.ServerTLS.GetConfigForClient; get != nil {
		next = func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
			cc, err := get(hi)
			if err != nil || cc == nil {
				return cc, err
			}
			return adjust(cc), nil
		}
	}
	c.GetConfigForClient = p.refuseOldTLS(c.MinVersion, next)
	return c
}

// Shutdown stops accepting, lets in-flight requests and tunnels finish for
// up to DrainTimeout (or ctx), then closes everything.
func (p *Proxy) Shutdown(ctx context.Context) error {
	if !p.draining.CompareAndSwap(false, true) {
		return errors.New("proxy: already shut down")
	}
	close(p.done)
	ctx, cancel := context.WithTimeout(ctx, p.opts.DrainTimeout)
	defer cancel()
	p.mu.Lock()
	servers := append([]httpServer(nil), p.servers...)
	admin := p.admin
	p.mu.Unlock()
	for _, u := range p.upstreams {
		if u.ln != nil {
			u.ln.Close()
		}
	}
	var wg sync.WaitGroup
	for _, s := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Shutdown(ctx); err != nil {
				_ = s.Close()
			}
		}()
	}
	wg.Add(1)
	go func() { defer wg.Done(); p.tracked.drain(ctx) }()
	wg.Wait()
	err := ctx.Err()
	if admin != nil {
		_ = admin.Close()
	}
	p.wg.Wait()
	p.updateMu.Lock()
	for _, pr := range p.peers {
		pr.closeIdle()
	}
	p.updateMu.Unlock()
	p.appH1.CloseIdleConnections()
	p.appH2C.CloseIdleConnections()
	p.stopObserving()
	if err != nil {
		return fmt.Errorf("proxy: drain cut short: %w", err)
	}
	return nil
}

// acceptUpstream serves one Upstreams listener: connections to a TCP port
// are tunnelled raw, the rest go to the HTTP server.
func (p *Proxy) acceptUpstream(u *upstream) {
	for {
		conn, err := u.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		go func() {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			svc, _, _ := p.resolve(ctx, u.host)
			if svc != nil {
				port := u.port
				if port == 0 {
					port = svc.defPort
				}
				if svc.port(port).proto == meshv1.Protocol_TCP {
					defer conn.Close()
					p.serveRaw(ctx, conn, p.cfg.Load(), svc, port)
					return
				}
			}
			if !u.h1.ServeConn(conn) {
				conn.Close()
			}
		}()
	}
}

// chanListener hands connections accepted elsewhere to an http.Server.
type chanListener struct {
	addr   net.Addr
	ch     chan net.Conn
	once   sync.Once
	closed chan struct{}
}

func newChanListener(a net.Addr) *chanListener {
	return &chanListener{addr: a, ch: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *chanListener) deliver(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.closed:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }
