package proxy

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/lb"
)

// External services (ExternalService → Service.external): their endpoints
// are the external addresses themselves. Each gets an egress peer — the
// same pooled transports as a mesh peer, but dialling the address as given,
// in plaintext or with TLS the proxy originates, and verifying no SPIFFE
// ID — so the route chain (retries, timeouts, breaker, outlier detection,
// balancing) runs for them unchanged and only the last stage differs
// (peerUpstream → egressUpstream).

// externalService is a Service's external part, compiled.
type externalService struct {
	dns   bool     // dial the request's host, not a listed address
	hosts []string // lower case; hosts[0] stands in for a request routed here by another name
	// targets maps a declared port to the port dialled on an endpoint
	// given without one; authorities[i][j] is hosts[i]:targets[j].
	ports, targets []uint32
	authorities    [][]string
	// tls is the origination config (nil: plaintext); tlsKey identifies
	// its content, so a pool is kept while it is unchanged.
	tls    *tls.Config
	tlsKey string
	// endpoints replace the snapshot's for DNS resolution: one, named
	// after hosts[0], whose dial address is the request's host.
	endpoints []*meshv1.Endpoint
}

// compileExternal checks a Service's external part and loads its TLS
// files: a file this proxy cannot read refuses the snapshot (NACK).
func compileExternal(f string, ps *meshv1.Service) (*externalService, error) {
	x := ps.GetExternal()
	ext := &externalService{dns: x.GetResolution() == meshv1.External_DNS}
	switch x.GetResolution() {
	case meshv1.External_STATIC, meshv1.External_DNS:
	default:
		return nil, invalid("%s.external.resolution: unknown resolution %d", f, x.GetResolution())
	}
	if len(x.GetHosts()) == 0 {
		return nil, invalid("%s.external.hosts: an external service needs at least one host", f)
	}
	for i, h := range x.GetHosts() {
		if !validExternalHost(h) {
			return nil, invalid("%s.external.hosts[%d]: %q is not a DNS name or IP", f, i, h)
		}
		ext.hosts = append(ext.hosts, h)
	}
	for _, p := range ps.GetPorts() {
		t := p.GetTargetPort()
		if t == 0 {
			t = p.GetPort()
		}
		ext.ports, ext.targets = append(ext.ports, p.GetPort()), append(ext.targets, t)
	}
	for _, h := range ext.hosts {
		row := make([]string, len(ext.targets))
		for j, t := range ext.targets {
			row[j] = net.JoinHostPort(h, strconv.FormatUint(uint64(t), 10))
		}
		ext.authorities = append(ext.authorities, row)
	}
	if err := ext.checkEndpoints(f, ps.GetEndpoints()); err != nil {
		return nil, err
	}
	if ext.dns {
		ext.endpoints = []*meshv1.Endpoint{{Id: ps.GetName(), Service: ps.GetName(), Namespace: ps.GetNamespace(), Address: ext.hosts[0], Healthy: true}}
	}
	var err error
	if ext.tls, ext.tlsKey, err = loadOrigination(f+".external.tls", x.GetTls()); err != nil {
		return nil, err
	}
	return ext, nil
}

// checkEndpoints: a STATIC service's endpoints are host or host:port, with
// no identity (nothing at the other end has a SPIFFE ID); a DNS one has none.
func (ext *externalService) checkEndpoints(f string, eps []*meshv1.Endpoint) error {
	if ext.dns && len(eps) > 0 {
		return invalid("%s.endpoints: a DNS-resolved external service lists no endpoints", f)
	}
	for j, e := range eps {
		ef := fmt.Sprintf("%s.endpoints[%d]", f, j)
		if _, _, ok := splitEndpoint(e.GetAddress()); !ok {
			return invalid("%s.address: %q is not host, host:port or [ipv6]:port", ef, e.GetAddress())
		}
		if e.GetIdentity() != "" {
			return invalid("%s.identity: an external endpoint has no mesh identity, got %q", ef, e.GetIdentity())
		}
	}
	return nil
}

// splitEndpoint splits "host", "host:port", "[v6]" or "[v6]:port" (port ""
// when absent).
func splitEndpoint(a string) (host, port string, ok bool) {
	if h, p, err := net.SplitHostPort(a); err == nil {
		_, ok := parsePort(p)
		return h, p, ok && h != ""
	}
	h := strings.TrimSuffix(strings.TrimPrefix(a, "["), "]")
	if h == "" || strings.ContainsAny(h, "[]") {
		return "", "", false
	}
	if strings.Contains(h, ":") && net.ParseIP(h) == nil {
		return "", "", false
	}
	return h, "", true
}

// loadOrigination builds the TLS origination config, reading the files
// named by t on this proxy's machine.
func loadOrigination(f string, t *meshv1.TLSOrigination) (*tls.Config, string, error) {
	if t == nil || t.GetMode() == meshv1.TLSOrigination_DISABLE {
		return nil, "", nil
	}
	if t.GetMode() != meshv1.TLSOrigination_SIMPLE && t.GetMode() != meshv1.TLSOrigination_MUTUAL {
		return nil, "", invalid("%s.mode: unknown mode %d", f, t.GetMode())
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.GetSni()}
	key := sha256.New()
	fmt.Fprintf(key, "%d\x00%s\x00", t.GetMode(), t.GetSni())
	if path := t.GetCaCertificates(); path != "" {
		pem, err := os.ReadFile(path)
		if err != nil {
			return nil, "", invalid("%s.ca_certificates: %v", f, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, "", invalid("%s.ca_certificates: %s holds no PEM certificate", f, path)
		}
		cfg.RootCAs = pool
		key.Write(pem)
	}
	if t.GetMode() == meshv1.TLSOrigination_MUTUAL {
		certPEM, err := os.ReadFile(t.GetClientCertificate())
		if err != nil {
			return nil, "", invalid("%s.client_certificate: %v", f, err)
		}
		keyPEM, err := os.ReadFile(t.GetPrivateKey())
		if err != nil {
			return nil, "", invalid("%s.private_key: %v", f, err)
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, "", invalid("%s: client certificate %s and key %s: %v", f, t.GetClientCertificate(), t.GetPrivateKey(), err)
		}
		cfg.Certificates = []tls.Certificate{cert}
		key.Write(certPEM)
		key.Write(keyPEM)
	}
	return cfg, string(key.Sum(nil)), nil
}

// target is the port dialled for service port p on an endpoint given
// without one (p itself when undeclared), and its index in ports (-1).
func (ext *externalService) target(p uint32) (uint32, int) {
	for i, q := range ext.ports {
		if q == p {
			return ext.targets[i], i
		}
	}
	return p, -1
}

// hostIndex is the index of host h in hosts, or 0 (hosts[0]) when the
// request named the service otherwise (a route's backendRef).
func (ext *externalService) hostIndex(h string) int {
	for i, x := range ext.hosts {
		if x == h {
			return i
		}
	}
	return 0
}

// authority is the host:port a request for service port p, whose Host
// named h, is sent to: what the transport pools by and, for TLS, the
// server name it verifies unless the ExternalService sets sni.
func (ext *externalService) authority(h string, p uint32) string {
	i := ext.hostIndex(h)
	t, j := ext.target(p)
	if j >= 0 {
		return ext.authorities[i][j]
	}
	return net.JoinHostPort(ext.hosts[i], strconv.FormatUint(uint64(t), 10))
}

// egressPeerKey identifies an egress peer's pools: the address dialled
// ("" for DNS resolution: the request's authority) and the TLS content.
type egressPeerKey struct {
	addr, tls string
}

// egressPeer returns the pools to an external endpoint (addr; "" for DNS
// resolution), reused while its address and TLS config are unchanged.
// Called at compile only.
func (es *egressState) egressPeer(ext *externalService, addr string) *peer {
	k := egressPeerKey{addr: addr, tls: ext.tlsKey}
	es.mu.Lock()
	defer es.mu.Unlock()
	if pr := es.peers[k]; pr != nil {
		return pr
	}
	pr := es.newEgressPeer(ext, addr)
	es.peers[k] = pr
	return pr
}

// forget closes and drops the egress peers no live service uses.
func (es *egressState) forget(live map[*peer]bool) {
	es.mu.Lock()
	defer es.mu.Unlock()
	for k, pr := range es.peers {
		if !live[pr] {
			pr.closeIdle()
			delete(es.peers, k)
		}
	}
}

func (es *egressState) newEgressPeer(ext *externalService, fixed string) *peer {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		to := dialAddr(fixed, addr)
		c, err := es.dialer.DialContext(ctx, network, to)
		if err != nil {
			return nil, &DialError{Addr: to, Err: err}
		}
		return c, nil
	}
	var h1p, h2p http.Protocols
	h1p.SetHTTP1(true)
	mk := func(protos ...string) *tls.Config {
		if ext.tls == nil {
			return nil
		}
		c := ext.tls.Clone()
		c.NextProtos = protos
		c.ClientSessionCache = tls.NewLRUClientSessionCache(16)
		return c
	}
	if ext.tls != nil {
		h2p.SetHTTP2(true)
	} else {
		h2p.SetUnencryptedHTTP2(true)
	}
	display := fixed
	if display == "" {
		display = ext.hosts[0]
	}
	return &peer{
		addr: display,
		h1: &http.Transport{
			DialContext: dial, TLSClientConfig: mk("http/1.1"), TLSHandshakeTimeout: handshakeTimeout,
			Protocols: &h1p, DisableCompression: true, IdleConnTimeout: 90 * time.Second, MaxIdleConnsPerHost: 64,
		},
		h2: &http.Transport{
			DialContext: dial, TLSClientConfig: mk("h2"), TLSHandshakeTimeout: handshakeTimeout,
			Protocols: &h2p, DisableCompression: true, IdleConnTimeout: 90 * time.Second, MaxIdleConnsPerHost: 8,
		},
	}
}

// dialAddr is where a connection for authority addr goes: the endpoint's
// own address (with addr's port when it has none), or addr itself for DNS
// resolution (fixed "").
func dialAddr(fixed, addr string) string {
	if fixed == "" {
		return addr
	}
	h, p, _ := splitEndpoint(fixed)
	if p != "" {
		return fixed
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fixed
	}
	return net.JoinHostPort(h, port)
}

// egressUpstream is the last stage of an attempt on an external endpoint:
// the request goes to the external authority (TLS originated when the
// ExternalService says so) with the app's Host, and the answer comes back
// with any mesh header stripped — an outside server does not speak for
// the mesh.
func (p *Proxy) egressUpstream(ex *Exchange) *Response {
	svc := ex.Backend.svc
	ext := svc.ext
	port := ex.Backend.port
	if port == 0 {
		port = ex.Port
	}
	h, _, _ := splitAuthority(ex.Authority)
	tr, scheme := ex.peer.h1, "http"
	if ext.tls != nil {
		scheme = "https"
	}
	if svc.port(port).h2() || ex.ProtoMajor == 2 && ext.tls != nil {
		tr = ex.peer.h2
	}
	o := outHeader(ex, 0)
	resp := roundTrip(ex, tr, scheme, ext.authority(h, port), o)
	if ex.err == nil && resp.Header != nil {
		stripMeshHeaders(resp.Header, "")
	}
	return resp
}

// tunnelExternal opens a CONNECT tunnel (or a per-upstream TCP port's
// connection) straight to an endpoint of an external service: its tcp and
// https ports carry the app's own bytes, TLS included.
func (p *Proxy) tunnelExternal(ex *Exchange) *Response {
	svc := ex.Service
	ext := svc.ext
	if len(svc.eps) == 0 {
		return ex.fail(http.StatusServiceUnavailable, FlagUH, "no endpoints for "+svc.key)
	}
	ex.lbReq = lb.Request{Method: ex.Method, Authority: ex.Authority, Header: ex.Header}
	call, ok := svc.picker.Pick(&ex.lbReq, svc.eps, nil)
	if !ok {
		return ex.fail(http.StatusServiceUnavailable, FlagUH, "no endpoints for "+svc.key)
	}
	ex.Endpoint = call.Endpoint()
	ex.Tried = append(ex.Tried, ex.Endpoint)
	ex.Attempts++
	h, _, _ := splitAuthority(ex.Authority)
	fixed := ex.Endpoint.Addr()
	if ext.dns {
		fixed = ""
	}
	resp := p.dialDirect(ex, dialAddr(fixed, ext.authority(h, ex.Port)))
	switch {
	case ex.err == nil:
		call.Done(lb.Success)
	case ex.clientCtx.Err() != nil:
		call.Done(lb.Abandoned)
	default:
		call.Done(lb.Failure)
	}
	return resp
}

// endpoints are the snapshot's endpoints of s, or its stand-in for DNS
// resolution.
func (s *service) endpoints(ps *meshv1.Service) []*meshv1.Endpoint {
	if s.ext != nil && s.ext.dns {
		return s.ext.endpoints
	}
	return ps.GetEndpoints()
}

// indexExternalHosts makes an external service's hosts resolve to it.
func (s *service) indexExternalHosts(byHost map[string]*service) {
	if s.ext == nil {
		return
	}
	for _, h := range s.ext.hosts {
		byHost[h] = s
	}
}

// peerFor returns the pools of endpoint e of s: a mesh peer's mTLS
// transports, or an external endpoint's egress transports.
func (env compileEnv) peerFor(s *service, e *meshv1.Endpoint) *peer {
	if s.ext == nil {
		return env.peer(e.GetAddress(), e.GetIdentity())
	}
	addr := e.GetAddress()
	if s.ext.dns {
		addr = ""
	}
	if env.proxy == nil {
		return newEgressState(nil).newEgressPeer(s.ext, addr) // compile-only tests
	}
	return env.proxy.egress.egressPeer(s.ext, addr)
}
