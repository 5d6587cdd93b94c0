package proxy

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"

	"trellis.dev/trellis/internal/http1"
	"trellis.dev/trellis/internal/telemetry"
)

// The engines under the listener edge. HTTP/1.1 — what apps send, and
// what proxies send each other for it — is served by internal/http1's
// strict server (one goroutine per connection, the smuggling shapes
// refused by its parser, counted here). HTTP/2 (h2c from apps with prior
// knowledge, h2 between proxies: gRPC, multiplexed hops) and the inbound
// port's TCP tunnels stay with net/http and x/net/http2: the HTTP/1.1
// server hands a connection that opens with the HTTP/2 preface to a
// chanListener that net/http's server accepts from, and the inbound
// admission sends ALPN "h2" and tunnel connections there directly.

// httpServer is what Shutdown drains: net/http's and http1's servers.
type httpServer interface {
	Shutdown(context.Context) error
	Close() error
}

// The HTTP/1.1 limits besides the header size: a request line within
// nginx's and HAProxy's usual bounds (414 above), and as many fields as
// Envoy's default (431 above). The inbound port takes inboundHeaderFactor
// times as much, so what one proxy let through, the next takes.
const (
	maxRequestLine = 16 << 10
	maxHeaderCount = 128
)

// h1Server serves HTTP/1.1 for one listener with handler h. maxHead
// bounds a request head; factor scales the line and field-count limits;
// connections opening with the HTTP/2 preface go to h2 (nil: refused).
func (p *Proxy) h1Server(h http.Handler, listener string, maxHead, factor int, h2 *chanListener) *http1.Server {
	s := &http1.Server{
		Handler:           h,
		Limits:            http1.Limits{MaxHeadBytes: maxHead, MaxRequestLine: factor * maxRequestLine, MaxHeaders: factor * maxHeaderCount},
		ReadHeaderTimeout: p.limits.ReadHeaderTimeout,
		IdleTimeout:       p.limits.IdleTimeout,
		MaxTrailerBytes:   maxHead,
		ConnContext:       withConnInfo,
		ConnState:         p.metrics.ConnState(listener),
		Refused:           p.countRefusedHead,
		ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelError),
	}
	if h2 != nil {
		s.Preface = func(c net.Conn) {
			if !h2.deliver(c) {
				c.Close()
			}
		}
	}
	return s
}

// countRefusedHead counts what the HTTP/1.1 server refused before any
// chain: ambiguous framing (of a head or a chunked body), oversize heads,
// and every other malformed request.
func (p *Proxy) countRefusedHead(e *http1.Error) {
	switch {
	case e.Framing():
		p.refusals.Refused(telemetry.RefusedFraming)
	case e.Status == http.StatusRequestHeaderFieldsTooLarge || e.Status == http.StatusRequestURITooLong:
		p.refusals.Refused(telemetry.RefusedHeaderTooLarge)
	default:
		p.refusals.Refused(telemetry.RefusedMalformed)
	}
}

// routeInbound sends an admitted inbound connection to its engine: HTTP/2
// and TCP tunnels (by ALPN) to net/http's server behind h2, the rest
// (HTTP/1.1 over mTLS, PERMISSIVE plaintext) to the HTTP/1.1 server.
func (p *Proxy) routeInbound(c net.Conn, h1 *http1.Server, h2 *chanListener) bool {
	if tc, ok := c.(*tls.Conn); ok {
		switch tc.ConnectionState().NegotiatedProtocol {
		case "h2", ALPNTCP:
			return h2.deliver(c)
		}
	}
	return h1.ServeConn(c)
}
