package proxy

import (
	"context"
	"crypto/rand"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/meshname"
	"trellis.dev/trellis/internal/telemetry"
)

// Egress: requests for hosts outside the mesh. A host is one of three
// things, decided in the resolve step (resolveFilter → resolve):
//
//   - a mesh service: it has the mesh's form (name, name.ns with ns a
//     namespace of the mesh, name.ns.svc[.<domain>]);
//   - an ExternalService: one of its hosts (the snapshot lists them all), a
//     Service with external set, reached directly by egress peers
//     (egress_upstream.go) through the same route chain as a mesh service;
//   - outside the registry: anything else. The egress policy filter
//     (egressFilter, right after resolve in both the outbound and tunnel
//     chains) passes it through directly under ALLOW_ANY or refuses it
//     under REGISTRY_ONLY, counting either way.

// egressConfig is a snapshot's outbound traffic policy, compiled.
type egressConfig struct {
	// known: the snapshot carries an outbound traffic policy. A snapshot
	// without one (a control plane that predates egress) knows no
	// namespaces, so every host of the mesh's form is taken as a mesh
	// service, as before.
	known        bool
	registryOnly bool
	namespaces   map[string]struct{}
	// external maps an ExternalService host to its service's key
	// ("name.namespace"), to subscribe to it on first use.
	external map[string]string
}

// compileEgress checks and indexes the snapshot's outbound traffic policy.
func compileEgress(p *meshv1.OutboundTrafficPolicy) (egressConfig, error) {
	if p == nil {
		return egressConfig{}, nil
	}
	e := egressConfig{
		known:        true,
		registryOnly: p.GetMode() == meshv1.OutboundTrafficPolicy_REGISTRY_ONLY,
		namespaces:   make(map[string]struct{}, len(p.GetNamespaces())),
		external:     make(map[string]string, len(p.GetExternalHosts())),
	}
	switch p.GetMode() {
	case meshv1.OutboundTrafficPolicy_ALLOW_ANY, meshv1.OutboundTrafficPolicy_REGISTRY_ONLY:
	default:
		return e, invalid("outbound_traffic_policy.mode: unknown mode %d", p.GetMode())
	}
	for i, ns := range p.GetNamespaces() {
		if !meshname.IsLabel(ns) {
			return e, invalid("outbound_traffic_policy.namespaces[%d]: %q is not a DNS label", i, ns)
		}
		e.namespaces[ns] = struct{}{}
	}
	for i, h := range p.GetExternalHosts() {
		f := "outbound_traffic_policy.external_hosts[" + strconv.Itoa(i) + "]"
		if !validExternalHost(h.GetHost()) {
			return e, invalid("%s.host: %q is not a DNS name or IP", f, h.GetHost())
		}
		if !meshname.IsLabel(h.GetService()) || !meshname.IsLabel(h.GetNamespace()) {
			return e, invalid("%s: service %q in namespace %q is not a service name", f, h.GetService(), h.GetNamespace())
		}
		if _, dup := e.external[h.GetHost()]; dup {
			return e, invalid("%s.host: %q is listed twice", f, h.GetHost())
		}
		e.external[h.GetHost()] = h.GetService() + "." + h.GetNamespace()
	}
	return e, nil
}

// validExternalHost: what splitAuthority returns for a Host, lower case,
// and a DNS name or an IP.
func validExternalHost(h string) bool {
	got, port, err := splitAuthority(h)
	if err == nil && got == h && port == 0 {
		return true
	}
	return net.ParseIP(h) != nil && !strings.Contains(h, "%")
}

// meshForm reports whether host, which ParseHost took as name and ns, is a
// mesh name: a bare name or a .svc form always; "a.b" only when b is the
// proxy's own namespace or one the mesh has (so example.com is not
// service example in namespace com).
func (e *egressConfig) meshForm(host, ns, ownNS string) bool {
	if !e.known || ns == ownNS || strings.IndexByte(host, '.') < 0 {
		return true
	}
	if strings.Count(host, ".") >= 2 {
		return true // name.ns.svc…, which ParseHost accepted
	}
	_, ok := e.namespaces[ns]
	return ok
}

// egressState is the proxy's egress machinery: the pass-through transport,
// the pools to external endpoints, the decision counters.
type egressState struct {
	metrics *telemetry.EgressMetrics
	// passthrough sends HTTP requests for hosts outside the registry
	// straight to them. Never through an HTTP proxy of its own (the app's
	// HTTP_PROXY is this proxy).
	passthrough *http.Transport
	dialer      net.Dialer
	// via is this proxy's Via entry on what it passes through: a request
	// that arrives carrying it has looped (the app asked for one of this
	// proxy's own ports), and is refused rather than sent round again.
	via    string
	viaHdr []string // {via}, shared by requests that came without one

	mu    sync.Mutex // guards peers; taken at compile, never per request
	peers map[egressPeerKey]*peer
}

func newEgressState(m *telemetry.EgressMetrics) *egressState {
	d := net.Dialer{Timeout: handshakeTimeout, KeepAlive: 30 * time.Second}
	via := "1.1 trellis-" + rand.Text()[:10]
	return &egressState{
		viaHdr:  []string{via},
		metrics: m,
		dialer:  d,
		via:     via,
		passthrough: &http.Transport{
			Proxy: nil,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				c, err := d.DialContext(ctx, network, addr)
				if err != nil {
					return nil, &DialError{Addr: addr, Err: err}
				}
				return c, nil
			},
			DisableCompression:  true,
			IdleConnTimeout:     90 * time.Second,
			MaxIdleConnsPerHost: 64,
		},
		peers: map[egressPeerKey]*peer{},
	}
}

// egressFilter is the outbound traffic policy: it sits right after resolve
// (outbound and tunnel chains) and takes the exchanges resolve found
// outside the registry (no Service); CONNECTs to an ExternalService's tcp
// or https port are tunnelled to it directly here too. Everything else
// goes on.
func (p *Proxy) egressFilter(next Handler) Handler {
	return HandlerFunc(func(ex *Exchange) *Response {
		if ex.Service == nil {
			return p.outside(ex)
		}
		if ex.Service.ext != nil && (ex.Method == http.MethodConnect || ex.raw) {
			return p.tunnelExternal(ex)
		}
		return next.Serve(ex)
	})
}

// outside applies the policy to a host outside the registry (ex.host,
// ex.hostPort, set by resolve).
func (p *Proxy) outside(ex *Exchange) *Response {
	e := &ex.cfg.egress
	tunnel := ex.Method == http.MethodConnect
	if !tunnel && p.egress.looped(ex.Header) {
		return ex.fail(http.StatusLoopDetected, FlagEG, "request for "+ex.host+" came back to this proxy: it names one of the proxy's own ports")
	}
	p.egress.metrics.Count(e.registryOnly, e.registryOnly, tunnel)
	if e.registryOnly {
		msg := ex.host + " is not a mesh service or an ExternalService, and the mesh's outbound traffic policy is REGISTRY_ONLY: register it with an ExternalService"
		if tunnel {
			return ex.fail(http.StatusForbidden, FlagEG, msg)
		}
		return ex.fail(http.StatusBadGateway, FlagEG, msg)
	}
	addr := outsideAddr(ex)
	if tunnel {
		return p.dialDirect(ex, addr)
	}
	o := outHeader(ex, 1)
	if via := o.header["Via"]; len(via) > 0 {
		o.header["Via"] = append(via[:len(via):len(via)], p.egress.via)
	} else {
		o.header["Via"] = p.egress.viaHdr
	}
	resp := roundTrip(ex, p.egress.passthrough, "http", addr, o)
	if ex.err == nil && resp.Header != nil {
		stripMeshHeaders(resp.Header, "") // an outside server does not speak for the mesh
	}
	return resp
}

// outsideAddr is host:port for a host outside the registry (port 80 when
// the request named none): the authority itself when it is already that,
// sparing a join per request.
func outsideAddr(ex *Exchange) string {
	h, a := ex.host, ex.Authority
	if ex.hostPort != 0 && len(a) > len(h)+1 && a[:len(h)] == h && a[len(h)] == ':' {
		return a
	}
	port := ex.hostPort
	if port == 0 {
		port = 80
	}
	return net.JoinHostPort(h, strconv.FormatUint(uint64(port), 10))
}

// looped reports whether h carries this proxy's own Via entry.
func (es *egressState) looped(h http.Header) bool {
	for _, v := range h["Via"] {
		if strings.Contains(v, es.via) {
			return true
		}
	}
	return false
}

// dialDirect opens a plain TCP connection to addr for a tunnel.
func (p *Proxy) dialDirect(ex *Exchange, addr string) *Response {
	ctx, cancel := context.WithTimeout(ex.ctx, handshakeTimeout)
	defer cancel()
	conn, err := p.egress.dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		ex.err = &DialError{Addr: addr, Err: err}
		if ex.clientCtx.Err() != nil {
			return ex.fail(statusClientClosed, FlagDC, "client went away")
		}
		p.log.Debug("egress dial failed", "addr", addr, "err", err)
		return ex.fail(http.StatusBadGateway, FlagUF, "cannot connect to "+addr)
	}
	return &Response{Status: http.StatusOK, Upgraded: conn}
}
