package proxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"trellis.dev/trellis/internal/telemetry"
)

// The listener edge: an http.Handler per listener that turns the request
// into an Exchange, runs the listener's chain and is the one writer of the
// response. Nothing past this file and upstream.go sees net/http's types.

type listenerKind uint8

const (
	outboundListener listenerKind = iota
	upstreamListener
	inboundListener
)

type edge struct {
	p    *Proxy
	kind listenerKind
	up   *upstream // upstreamListener only
}

func (e *edge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ex := e.p.exchanges.get()
	ex.Start = time.Now()
	fromRequest(ex, r)
	c := e.p.cfg.Load()
	ex.cfg, ex.stats = c, e.p.stats
	if resp := e.p.refuseAtEdge(ex, r, w, e.kind); resp != nil {
		if e.kind == inboundListener {
			ex.sources, ex.active = c.inbound.sources, e.p.activeIn
		} else {
			ex.series, ex.active = c.unknown, e.p.activeOut
		}
		e.p.write(w, r, ex, e.p.telemetrySlot()(HandlerFunc(func(*Exchange) *Response { return resp })).Serve(ex))
		return
	}
	var h Handler
	switch e.kind {
	case inboundListener:
		ex.sources, ex.active = c.inbound.sources, e.p.activeIn
		ex.PeerID, ex.peerIDHdr = connPeer(r)
		ex.Plaintext = r.TLS == nil
		h = c.inboundH
		if r.Method == http.MethodConnect {
			// Proxies tunnel to each other by ALPN (tunnel.go), never by
			// CONNECT; an app is not a forward proxy.
			h = e.p.telemetrySlot()(refuseConnect)
		}
	case outboundListener:
		ex.series, ex.active = c.unknown, e.p.activeOut
		e.p.stripApp(r)
		h = c.outbound
		if r.Method == http.MethodConnect {
			h = c.tunnel
		}
	case upstreamListener:
		ex.series, ex.active = c.unknown, e.p.activeOut
		e.p.stripApp(r)
		ex.host, ex.hostPort = e.up.host, e.up.port
		h = c.outbound
		if r.Method == http.MethodConnect {
			h = e.p.telemetrySlot()(refuseConnect)
		}
	}
	e.p.write(w, r, ex, h.Serve(ex))
}

// refuseAtEdge answers, before any chain, a request whose header is over
// the limit (431), and closes the connection after; else it arms the body
// read timeout. (Ambiguous framing never gets this far: the HTTP/1.1
// server refuses it, engine.go.)
func (p *Proxy) refuseAtEdge(ex *Exchange, r *http.Request, w http.ResponseWriter, kind listenerKind) *Response {
	limit := p.limits.MaxHeaderBytes
	if kind == inboundListener {
		limit *= inboundHeaderFactor
	}
	var resp *Response
	switch {
	case headerSize(r) > limit:
		p.refusals.Refused(telemetry.RefusedHeaderTooLarge)
		resp = ex.fail(http.StatusRequestHeaderFieldsTooLarge, FlagDPE, "request header over "+strconv.Itoa(limit)+" bytes")
	default:
		if ex.Body != nil && ex.Body != http.NoBody {
			ex.reqBody = &clientBody{rc: ex.Body, w: w, d: p.limits.BodyReadTimeout, ref: p.refusals}
			ex.Body = ex.reqBody
		}
		return nil
	}
	resp.Header["Connection"] = connClose
	return resp
}

var connClose = []string{"close"}

// inboundHeaderFactor is how much more header the inbound port accepts
// than the ports apps call: what one proxy let through, the next takes.
const inboundHeaderFactor = 16

// stripApp removes the mesh's own headers and declared trailers from a
// request the local app sent: only proxies speak for the mesh, so an app
// cannot claim an identity or a port. Counted once per request.
func (p *Proxy) stripApp(r *http.Request) {
	n := stripMeshHeaders(r.Header, "")
	if r.Trailer != nil {
		n += stripMeshHeaders(r.Trailer, "")
	}
	if n > 0 {
		p.refusals.Refused(telemetry.RefusedMeshHeader)
	}
}

var refuseConnect = HandlerFunc(func(ex *Exchange) *Response {
	return ex.fail(http.StatusMethodNotAllowed, FlagDPE, "CONNECT is for the outbound proxy port")
})

// fromRequest copies what filters may see of r into ex.
func fromRequest(ex *Exchange, r *http.Request) {
	ex.Method = r.Method
	ex.Authority = r.Host
	ex.Path, ex.RawPath, ex.RawQuery = r.URL.Path, r.URL.RawPath, r.URL.RawQuery
	ex.Header = r.Header
	ex.Body, ex.ContentLength = r.Body, r.ContentLength
	ex.ProtoMajor = r.ProtoMajor
	if r.ProtoMajor == 1 {
		ex.Upgrade = upgradeType(r.Header)
	}
	ex.RemoteAddr = r.RemoteAddr
	ex.ctx, ex.clientCtx = r.Context(), r.Context()
}

// connInfo is per inbound connection: the peer's SPIFFE ID, read from its
// certificate on the connection's first request instead of every request.
type connInfo struct {
	once  sync.Once
	id    string
	idHdr []string // {id}, shared by the connection's requests
}

type connInfoKey struct{}

// withConnInfo is the inbound server's ConnContext.
func withConnInfo(ctx context.Context, _ net.Conn) context.Context {
	return context.WithValue(ctx, connInfoKey{}, &connInfo{})
}

func connPeer(r *http.Request) (string, []string) {
	ci, _ := r.Context().Value(connInfoKey{}).(*connInfo)
	if ci == nil {
		ci = &connInfo{}
	}
	ci.once.Do(func() {
		if r.TLS != nil {
			if id := peerID(r.TLS.PeerCertificates); id != "" {
				ci.id, ci.idHdr = id, []string{id}
			}
		}
	})
	return ci.id, ci.idHdr
}

// write sends resp to the client: header, body streamed (flushed chunk by
// chunk when its length is unknown), trailers; upgrades and tunnels by
// splicing. An upstream that fails mid-body aborts the client's stream, so
// the client sees a broken response, not a short one.
func (p *Proxy) write(w http.ResponseWriter, r *http.Request, ex *Exchange, resp *Response) {
	if resp.Upgraded != nil {
		p.writeUpgraded(w, r, ex, resp)
		_ = resp.Body.Close()
		ex.release()
		return
	}
	dst := adoptHeader(w, resp.Header)
	streaming := resp.ContentLength == -1
	w.WriteHeader(resp.Status)
	if streaming {
		// gRPC and event streams: headers go out now, each chunk as it comes.
		_ = http.NewResponseController(w).Flush()
	}
	rerr, werr := copyBody(w, resp.Body, streaming)
	if werr != nil {
		ex.Flags |= FlagDC
	}
	if rerr == nil && werr == nil && resp.Trailer != nil {
		// The mesh sends nothing in trailers: a mesh-owned one is forged.
		if stripMeshHeaders(*resp.Trailer, "") > 0 {
			p.refusals.Refused(telemetry.RefusedMeshHeader)
		}
		for k, vv := range *resp.Trailer {
			dst[http.TrailerPrefix+k] = vv
		}
	}
	_ = resp.Body.Close()
	ex.release()
	if rerr != nil && werr == nil {
		panic(http.ErrAbortHandler)
	}
}

// copyBody copies body to w and says which side failed.
func copyBody(w http.ResponseWriter, body io.Reader, flush bool) (rerr, werr error) {
	bp := getBuf()
	defer putBuf(bp)
	buf := *bp
	var fl http.Flusher
	if flush {
		fl, _ = w.(http.Flusher)
	}
	for {
		n, err := body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return nil, werr
			}
			if fl != nil {
				fl.Flush()
			}
		}
		if err == io.EOF {
			return nil, nil
		}
		if err != nil {
			return err, nil
		}
	}
}

// adoptHeader gives w the upstream's header h: the map itself where the
// server takes it (the HTTP/1.1 engine: one map and copy fewer per
// request), else a copy into w.Header(). It returns w's header.
func adoptHeader(w http.ResponseWriter, h http.Header) http.Header {
	if a, ok := w.(interface{ AdoptHeader(http.Header) bool }); ok && h != nil && a.AdoptHeader(h) {
		return h
	}
	dst := w.Header()
	for k, vv := range h {
		dst[k] = vv
	}
	return dst
}

// writeUpgraded completes a 101 Switching Protocols or an established
// CONNECT tunnel: the client's stream is spliced to resp.Upgraded.
func (p *Proxy) writeUpgraded(w http.ResponseWriter, r *http.Request, ex *Exchange, resp *Response) {
	back := resp.Upgraded
	defer back.Close()
	connect := ex.Method == http.MethodConnect
	if connect && r.ProtoMajor >= 2 {
		// HTTP/2 CONNECT: the stream is the tunnel.
		rc := http.NewResponseController(w)
		_ = rc.EnableFullDuplex()
		w.WriteHeader(http.StatusOK)
		if err := rc.Flush(); err != nil {
			ex.Flags |= FlagDC
			return
		}
		spliceCounted(ex.tcpSeries(), r.Body, streamWriter{w, rc}, back, back)
		return
	}
	client, cbuf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		ex.Flags |= FlagDC
		return
	}
	defer client.Close()
	if connect {
		_, _ = cbuf.WriteString("HTTP/1.1 200 Connection established\r\n\r\n")
	} else {
		_, _ = cbuf.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
		_ = resp.Header.Write(cbuf)
		_, _ = cbuf.WriteString("\r\n")
	}
	if err := cbuf.Flush(); err != nil {
		ex.Flags |= FlagDC
		return
	}
	if !p.track(client, true) {
		return
	}
	defer p.track(client, false)
	if connect {
		spliceCounted(ex.tcpSeries(), cbuf.Reader, client, back, back)
		return
	}
	splice(cbuf.Reader, client, back, back)
}

// serveRaw is the edge of an upstream listener's opaque TCP connection:
// the tunnel chain, then bytes both ways.
func (p *Proxy) serveRaw(ctx context.Context, conn net.Conn, c *compiled, svc *service, port uint32) {
	ex := p.exchanges.get()
	ex.Start = time.Now()
	ex.raw, ex.Method = true, "TCP"
	ex.ctx, ex.clientCtx = ctx, ctx
	ex.RemoteAddr = conn.RemoteAddr().String()
	ex.cfg, ex.Service, ex.Port, ex.metrics = c, svc, port, svc.metrics
	resp := c.tunnel.Serve(ex)
	if back := resp.Upgraded; back != nil {
		if p.track(conn, true) {
			spliceCounted(svc.tcp, conn, conn, back, back)
			p.track(conn, false)
		}
		_ = back.Close()
	} else {
		p.log.Debug("tcp tunnel failed", "service", svc.key, "port", strconv.FormatUint(uint64(port), 10), "err", ex.err)
	}
	_ = resp.Body.Close()
	ex.release()
}
