package proxy

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/meshname"
	"trellis.dev/trellis/internal/telemetry"
)

// The route-level filters of issue 6 (chain.go orders them): redirect,
// URL rewrite, mirror and fault injection, plus the query-parameter part
// of route matching. Each is compiled into the route once per snapshot.

// pathRewrite is a compiled Gateway API HTTPPathModifier.
type pathRewrite struct {
	prefix bool // ReplacePrefixMatch; else ReplaceFullPath
	value  string
}

// apply returns the rewritten path. For a prefix rewrite, matched is the
// route's PathPrefix match that selected the request (compiled: no
// trailing slash except "/").
func (pr *pathRewrite) apply(path string, matched *match) string {
	if !pr.prefix {
		return pr.value
	}
	prefix := "/"
	if matched != nil && matched.hasPath && matched.pathType == meshv1.PathMatch_PREFIX {
		prefix = matched.path
	}
	if prefix == "/" {
		// Every path starts with the "/" prefix; keep its separator.
		if path == "/" || path == "" {
			return pr.value
		}
		return strings.TrimSuffix(pr.value, "/") + path
	}
	rest := path[len(prefix):] // "" or from a "/": prefixMatch is element-wise
	if rest == "" {
		return pr.value
	}
	if out := strings.TrimSuffix(pr.value, "/") + rest; out != "" {
		return out
	}
	return "/"
}

type urlRewrite struct {
	host string // "" keeps the request's
	path *pathRewrite
}

type redirectSpec struct {
	scheme, host string
	port         uint32
	path         *pathRewrite
	status       int
}

type mirrorSpec struct {
	backend  backend
	num, den uint32 // a request is mirrored when randN(den) < num
}

type faultSpec struct {
	delay              time.Duration
	delayPPM, abortPPM uint32 // parts per million of requests
	abortStatus        int
	grpcStatus         int // -1: answer gRPC requests with abortStatus too
}

const ppm = 1_000_000

func percentPPM(p float64) uint32 { return uint32(p*ppm/100 + 0.5) }

// compileRouteFilter compiles the issue-6 filter kinds; ok is false for a
// kind it does not know.
func (c *compiled) compileRouteFilter(ff string, rt *route, rf *meshv1.RouteFilter, ns string) (bool, error) {
	switch k := rf.GetFilter().(type) {
	case *meshv1.RouteFilter_UrlRewrite:
		if rt.rewrite != nil {
			return true, invalid("%s: a second url_rewrite", ff)
		}
		u := &urlRewrite{host: k.UrlRewrite.GetHostname()}
		if u.host != "" && !meshname.IsSubdomain(u.host) {
			return true, invalid("%s.url_rewrite.hostname: %q is not a host name", ff, u.host)
		}
		pr, err := compilePathModifier(ff+".url_rewrite.path", k.UrlRewrite.GetPath(), rt)
		if err != nil {
			return true, err
		}
		u.path = pr
		rt.rewrite = u
	case *meshv1.RouteFilter_RequestRedirect:
		if rt.redirect != nil {
			return true, invalid("%s: a second request_redirect", ff)
		}
		r := k.RequestRedirect
		rd := &redirectSpec{scheme: r.GetScheme(), host: r.GetHostname(), port: r.GetPort(), status: int(r.GetStatusCode())}
		switch rd.status {
		case 0:
			rd.status = http.StatusFound
		case 301, 302, 303, 307, 308:
		default:
			return true, invalid("%s.request_redirect.status_code: %d is not a redirect status", ff, rd.status)
		}
		if rd.scheme != "" && rd.scheme != "http" && rd.scheme != "https" {
			return true, invalid("%s.request_redirect.scheme: %q is not http or https", ff, rd.scheme)
		}
		if rd.port > 65535 {
			return true, invalid("%s.request_redirect.port: %d is not 0..65535", ff, rd.port)
		}
		pr, err := compilePathModifier(ff+".request_redirect.path", r.GetPath(), rt)
		if err != nil {
			return true, err
		}
		rd.path = pr
		rt.redirect = rd
	case *meshv1.RouteFilter_RequestMirror:
		m := k.RequestMirror
		b := m.GetBackend()
		bns := b.GetNamespace()
		if bns == "" {
			bns = ns
		}
		svc := c.byKey[b.GetService()+"."+bns]
		if svc == nil {
			return true, invalid("%s.request_mirror.backend.service: %s.%s is not in the snapshot", ff, b.GetService(), bns)
		}
		if b.GetPort() > 65535 {
			return true, invalid("%s.request_mirror.backend.port: %d is not 0..65535", ff, b.GetPort())
		}
		ms := mirrorSpec{backend: backend{svc: svc, port: b.GetPort()}, num: m.GetNumerator(), den: m.GetDenominator()}
		if ms.den == 0 {
			ms.num, ms.den = 1, 1
		}
		if ms.num > ms.den {
			return true, invalid("%s.request_mirror: numerator %d exceeds denominator %d", ff, ms.num, ms.den)
		}
		rt.mirrors = append(rt.mirrors, ms)
	case *meshv1.RouteFilter_Fault:
		if rt.fault != nil {
			return true, invalid("%s: a second fault", ff)
		}
		f, err := compileFault(ff+".fault", k.Fault)
		if err != nil {
			return true, err
		}
		rt.fault = f
	default:
		return false, nil
	}
	return true, nil
}

func compilePathModifier(f string, pm *meshv1.PathModifier, rt *route) (*pathRewrite, error) {
	if pm == nil {
		return nil, nil
	}
	pr := &pathRewrite{prefix: pm.GetType() == meshv1.PathModifier_REPLACE_PREFIX_MATCH, value: pm.GetValue()}
	switch pm.GetType() {
	case meshv1.PathModifier_REPLACE_FULL_PATH, meshv1.PathModifier_REPLACE_PREFIX_MATCH:
	default:
		return nil, invalid("%s.type: unknown type %d", f, pm.GetType())
	}
	if !strings.HasPrefix(pr.value, "/") {
		return nil, invalid("%s.value: %q must start with /", f, pr.value)
	}
	if pr.prefix {
		for i := range rt.matches {
			if m := &rt.matches[i]; m.hasPath && m.pathType != meshv1.PathMatch_PREFIX {
				return nil, invalid("%s: REPLACE_PREFIX_MATCH needs PathPrefix matches; matches[%d] is not one", f, i)
			}
		}
	}
	return pr, nil
}

func compileFault(f string, in *meshv1.Fault) (*faultSpec, error) {
	fs := &faultSpec{grpcStatus: -1}
	pct := func(field string, p float64) (uint32, error) {
		if p < 0 || p > 100 || p != p {
			return 0, invalid("%s.%s: %v is not 0..100", f, field, p)
		}
		return percentPPM(p), nil
	}
	var err error
	if d := in.GetDelay(); d != nil {
		if d.GetFixedDelay() != nil {
			if err := d.GetFixedDelay().CheckValid(); err != nil || d.GetFixedDelay().AsDuration() < 0 {
				return nil, invalid("%s.delay.fixed_delay: %v is not a non-negative duration", f, d.GetFixedDelay())
			}
			fs.delay = d.GetFixedDelay().AsDuration()
		}
		if fs.delayPPM, err = pct("delay.percent", d.GetPercent()); err != nil {
			return nil, err
		}
	}
	if a := in.GetAbort(); a != nil {
		if a.GetHttpStatus() < 200 || a.GetHttpStatus() > 599 {
			return nil, invalid("%s.abort.http_status: %d is not 200..599", f, a.GetHttpStatus())
		}
		fs.abortStatus = int(a.GetHttpStatus())
		if a.GrpcStatus != nil {
			if a.GetGrpcStatus() < 1 || a.GetGrpcStatus() > 16 {
				return nil, invalid("%s.abort.grpc_status: %d is not 1..16", f, a.GetGrpcStatus())
			}
			fs.grpcStatus = int(a.GetGrpcStatus())
		}
		if fs.abortPPM, err = pct("abort.percent", a.GetPercent()); err != nil {
			return nil, err
		}
	}
	return fs, nil
}

// redirectFilter answers the route's requests with a redirect itself
// (Gateway API RequestRedirect): nothing is sent on.
func redirectFilter(rd *redirectSpec) Filter {
	return func(next Handler) Handler {
		if rd == nil {
			return next
		}
		return HandlerFunc(func(ex *Exchange) *Response {
			loc := rd.location(ex)
			return &Response{
				Status: rd.status,
				Header: http.Header{"Location": []string{loc}, "Content-Length": []string{"0"}},
			}
		})
	}
}

// location builds the redirect target. A port given wins; with a scheme
// given and no port, the scheme's well-known port (left out); else the
// request's port. Default ports are never written.
func (rd *redirectSpec) location(ex *Exchange) string {
	scheme := rd.scheme
	if scheme == "" {
		scheme = "http"
	}
	host, reqPort, err := net.SplitHostPort(ex.Authority)
	if err != nil {
		host, reqPort = ex.Authority, ""
	}
	if rd.host != "" {
		host = rd.host
	}
	port := reqPort
	switch {
	case rd.port != 0:
		port = strconv.FormatUint(uint64(rd.port), 10)
	case rd.scheme != "":
		port = ""
	}
	if (scheme == "http" && port == "80") || (scheme == "https" && port == "443") {
		port = ""
	}
	if port != "" {
		host = net.JoinHostPort(host, port)
	}
	path := ex.Path
	if rd.path != nil {
		path = rd.path.apply(ex.Path, ex.matched)
	}
	u := url.URL{Scheme: scheme, Host: host, Path: path, RawQuery: ex.RawQuery}
	return u.String()
}

// rewriteFilter rewrites the request's host and path before it is sent on
// (Gateway API URLRewrite); routing already happened on the original.
func rewriteFilter(u *urlRewrite) Filter {
	return func(next Handler) Handler {
		if u == nil {
			return next
		}
		return HandlerFunc(func(ex *Exchange) *Response {
			if u.host != "" {
				ex.Authority = u.host
			}
			if u.path != nil {
				ex.Path = u.path.apply(ex.Path, ex.matched)
				ex.RawPath = "" // the escaped form is recomputed from Path
			}
			return next.Serve(ex)
		})
	}
}

// mirrorFilter sends a copy of a sampled fraction of the route's requests
// to each mirror backend, fire-and-forget: the copy runs on its own
// goroutine with its own context, and its answer, latency and failure are
// never seen by the request. At most Options.MaxMirrors copies are in
// flight per proxy; past that, copies are dropped and counted, so a slow
// mirror cannot pile up goroutines. A request body up to maxMirrorBody is
// copied as it streams to the backend, and the mirror sent when it is
// complete; larger bodies, upgrades and CONNECT are not mirrored.
func (p *Proxy) mirrorFilter(ms []mirrorSpec, randN func(uint32) uint32) Filter {
	return func(next Handler) Handler {
		if len(ms) == 0 {
			return next
		}
		return HandlerFunc(func(ex *Exchange) *Response {
			for i := range ms {
				m := &ms[i]
				if m.num == m.den || randN(m.den) < m.num {
					p.mirror(ex, m)
				}
			}
			return next.Serve(ex)
		})
	}
}

// mirrorTimeout bounds one mirrored request, header and body.
const mirrorTimeout = 10 * time.Second

// maxMirrorBody is the largest request body copied to a mirror (as
// Linkerd's and our retries' replay bound); larger ones are not mirrored.
const maxMirrorBody = 64 << 10

func (p *Proxy) mirror(ex *Exchange, m *mirrorSpec) {
	switch {
	case ex.Upgrade != "" || ex.Method == http.MethodConnect || ex.ContentLength > maxMirrorBody:
		p.metrics.Mirror(telemetry.MirrorDropped)
	case ex.bodiless():
		p.sendMirror(p.mirrorCopy(ex, m), nil)
	default:
		// The body is copied as the request's own send reads it, and the
		// copy goes out once it is complete: the request never waits.
		mx := p.mirrorCopy(ex, m)
		ex.Body = &mirrorBody{rc: ex.Body,
			done: func(body []byte, ok bool) {
				if !ok {
					p.metrics.Mirror(telemetry.MirrorDropped)
					return
				}
				p.sendMirror(mx, body)
			}}
	}
}

// mirrorCopy is the mirror's own exchange: a copy of the request's, sent
// to the mirror backend, owned by the mirror's goroutine.
func (p *Proxy) mirrorCopy(ex *Exchange, m *mirrorSpec) *Exchange {
	mx := &Exchange{
		Method: ex.Method, Authority: ex.Authority, Path: ex.Path, RawPath: ex.RawPath, RawQuery: ex.RawQuery,
		Header: ex.Header.Clone(), ProtoMajor: ex.ProtoMajor, RemoteAddr: ex.RemoteAddr,
		Service: ex.Service, Port: ex.Port, Route: ex.Route, Backend: &m.backend,
		cfg: ex.cfg, Start: time.Now(),
	}
	mx.Tried = mx.triedBk[:0]
	return mx
}

// sendMirror sends mx (with body, if any) on its own goroutine, when one of
// the MaxMirrors slots is free; else the copy is dropped.
func (p *Proxy) sendMirror(mx *Exchange, body []byte) {
	select {
	case p.mirrorSlots <- struct{}{}:
	default:
		p.metrics.Mirror(telemetry.MirrorDropped)
		return
	}
	if body != nil {
		mx.Body, mx.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
	}
	ctx, cancel := context.WithTimeout(context.Background(), mirrorTimeout)
	mx.ctx, mx.clientCtx = ctx, ctx
	go func() {
		defer func() { <-p.mirrorSlots }()
		defer cancel()
		go func() { // a proxy shutting down ends its mirrors
			select {
			case <-p.done:
				cancel()
			case <-ctx.Done():
			}
		}()
		resp := p.mirrorChain.Serve(mx)
		if resp.Body != nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
		}
		if mx.err != nil || resp.Status >= 500 {
			p.metrics.Mirror(telemetry.MirrorFailed)
			return
		}
		p.metrics.Mirror(telemetry.MirrorOK)
	}()
}

// mirrorBody copies a request body, up to maxMirrorBody, as it is read, and
// calls done once: with the copy when the body is complete (io.EOF: both
// of net/http's transports read to it, a known length included), with ok
// false when it was too large or closed first.
type mirrorBody struct {
	rc       io.ReadCloser
	buf      []byte
	over     bool
	finished atomic.Bool
	done     func(body []byte, ok bool)
}

func (t *mirrorBody) Read(b []byte) (int, error) {
	n, err := t.rc.Read(b)
	if !t.over {
		if len(t.buf)+n > maxMirrorBody {
			t.over, t.buf = true, nil
		} else {
			t.buf = append(t.buf, b[:n]...)
		}
	}
	if err == io.EOF {
		t.finish(!t.over)
	}
	return n, err
}

func (t *mirrorBody) finish(ok bool) {
	if t.finished.CompareAndSwap(false, true) {
		if ok {
			t.done(t.buf, true)
		} else {
			t.done(nil, false)
		}
	}
}

// Close ends the copy too: a body closed before it was complete (the
// request failed or was answered early) is not mirrored.
func (t *mirrorBody) Close() error {
	t.finish(false)
	return t.rc.Close()
}

// mirrorChain sends a mirrored copy: pick an endpoint of the mirror
// backend, send it to that endpoint's proxy.
func (p *Proxy) buildMirrorChain() Handler {
	return chain(p.peerUpstream(), p.pickFilter)
}

// faultFilter injects the route's fault: a fixed delay, then an abort,
// each for its share of requests (drawn independently, as Istio does).
func faultFilter(f *faultSpec, randN func(uint32) uint32) Filter {
	return func(next Handler) Handler {
		if f == nil || (f.delayPPM == 0 && f.abortPPM == 0) {
			return next
		}
		return HandlerFunc(func(ex *Exchange) *Response {
			if f.delayPPM > 0 && f.delay > 0 && (f.delayPPM >= ppm || randN(ppm) < f.delayPPM) {
				ex.Flags |= FlagDI
				ex.waited = true
				t := time.NewTimer(f.delay)
				select {
				case <-t.C:
				case <-ex.ctx.Done():
					t.Stop()
					return ex.fail(statusClientClosed, FlagDC, "client went away during an injected delay")
				}
			}
			if f.abortPPM > 0 && (f.abortPPM >= ppm || randN(ppm) < f.abortPPM) {
				return f.abort(ex)
			}
			return next.Serve(ex)
		})
	}
}

var grpcContentType = []string{"application/grpc"}

// abort answers as the fault says: for a gRPC request with a gRPC status
// configured, HTTP 200 carrying grpc-status in a trailers-only response,
// as a gRPC server would fail the call.
func (f *faultSpec) abort(ex *Exchange) *Response {
	if f.grpcStatus > 0 && isGRPC(ex.Header) {
		ex.Flags |= FlagFI
		return &Response{
			Status: http.StatusOK,
			Header: http.Header{
				"Content-Type": grpcContentType,
				"Grpc-Status":  []string{strconv.Itoa(f.grpcStatus)},
				"Grpc-Message": []string{"fault injected by the mesh"},
				headerError:    []string{FlagFI.String()},
			},
		}
	}
	return ex.fail(f.abortStatus, FlagFI, "fault injected by route "+ex.Route.name)
}

func isGRPC(h http.Header) bool {
	ct := h["Content-Type"]
	return len(ct) > 0 && strings.HasPrefix(ct[0], "application/grpc")
}

// queryMatch is one compiled query parameter match.
type queryMatch struct {
	name, value string
	re          interface{ MatchString(string) bool }
}

func (q *queryMatch) ok(rawQuery string) bool {
	v, found := queryValue(rawQuery, q.name)
	if !found {
		return false
	}
	if q.re != nil {
		return q.re.MatchString(v)
	}
	return v == q.value
}

// queryValue returns the value of the first parameter called name in a raw
// query (the Gateway API considers only the first). It allocates only to
// unescape a key or value that needs it.
func queryValue(raw, name string) (string, bool) {
	for raw != "" {
		var kv string
		kv, raw, _ = strings.Cut(raw, "&")
		k, v, _ := strings.Cut(kv, "=")
		if strings.ContainsAny(k, "%+") {
			uk, err := url.QueryUnescape(k)
			if err != nil {
				continue
			}
			k = uk
		}
		if k != name {
			continue
		}
		if strings.ContainsAny(v, "%+") {
			uv, err := url.QueryUnescape(v)
			if err != nil {
				return "", false
			}
			v = uv
		}
		return v, true
	}
	return "", false
}
