package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/lb"
	"trellis.dev/trellis/internal/telemetry"
)

// ALPNTCP is the ALPN protocol of an opaque TCP tunnel between proxies. The
// client then sends the preamble "<service port>\n" and the server answers
// "ok\n" or "error <reason>\n" before the bytes flow.
const ALPNTCP = "trellis-tcp/1"

const (
	maxPreamble      = 8 // "65535\n" fits with room to spare
	handshakeTimeout = 10 * time.Second
)

var errPreamble = errors.New("proxy: tunnel: malformed preamble")

// parsePreamble parses one preamble line (without its '\n') into a port.
func parsePreamble(line []byte) (uint32, error) {
	p, ok := parsePort(string(line))
	if !ok {
		return 0, errPreamble
	}
	return p, nil
}

// readLine reads up to max bytes through '\n' and returns the line without it.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	for n := 1; n <= max; n++ {
		b, err := br.Peek(n)
		if err != nil {
			return nil, err
		}
		if b[n-1] == '\n' {
			line := append([]byte(nil), b[:n-1]...)
			_, _ = br.Discard(n)
			return line, nil
		}
	}
	return nil, errPreamble
}

// dialTunnel opens an mTLS tunnel to the peer for the service port and
// returns the connection and a reader holding anything the server sent past
// its reply.
func dialTunnel(ctx context.Context, pr *peer, port uint32) (*tls.Conn, *bufio.Reader, error) {
	ctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	d := net.Dialer{}
	raw, err := d.DialContext(ctx, "tcp", pr.addr)
	if err != nil {
		return nil, nil, &DialError{Addr: pr.addr, Err: err}
	}
	conn := tls.Client(raw, pr.tcpTLS)
	fail := func(err error) (*tls.Conn, *bufio.Reader, error) {
		conn.Close()
		return nil, nil, fmt.Errorf("proxy: tunnel to %s: %w", pr.addr, err)
	}
	if err := conn.HandshakeContext(ctx); err != nil {
		return fail(err)
	}
	if conn.ConnectionState().NegotiatedProtocol != ALPNTCP {
		return fail(errors.New("peer does not speak " + ALPNTCP))
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if _, err := conn.Write([]byte(strconv.FormatUint(uint64(port), 10) + "\n")); err != nil {
		return fail(err)
	}
	br := bufio.NewReaderSize(conn, 4096)
	line, err := readLine(br, 128)
	if err != nil {
		return fail(err)
	}
	if string(line) != "ok" {
		return fail(fmt.Errorf("refused: %s", line))
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, br, nil
}

// tunnelConn is an established tunnel: reads drain what the preamble's
// reader already buffered; writes and CloseWrite go to the TLS connection.
type tunnelConn struct {
	*tls.Conn
	r *bufio.Reader
}

func (t tunnelConn) Read(b []byte) (int, error) { return t.r.Read(b) }

// tunnelUpstream is the tunnel chain's last stage: it picks an endpoint of
// the service and opens an mTLS tunnel to its port there. The writer (or
// the raw TCP edge) splices the client to it.
func (p *Proxy) tunnelUpstream() Handler {
	return HandlerFunc(func(ex *Exchange) *Response {
		svc := ex.Service
		if len(svc.eps) == 0 {
			return ex.fail(http.StatusServiceUnavailable, FlagUH, "no healthy endpoints for "+svc.key)
		}
		ex.lbReq = lb.Request{Method: ex.Method, Authority: ex.Authority, Header: ex.Header}
		call, ok := svc.picker.Pick(&ex.lbReq, svc.eps, nil)
		if !ok {
			return ex.fail(http.StatusServiceUnavailable, FlagUH, "no healthy endpoints for "+svc.key)
		}
		ex.Endpoint, ex.peer = call.Endpoint(), svc.peerOf(call.Endpoint())
		ex.Tried = append(ex.Tried, ex.Endpoint)
		ex.Attempts++
		conn, br, err := dialTunnel(ex.ctx, ex.peer, ex.Port)
		if err != nil {
			ex.err = err
			if ex.clientCtx.Err() != nil {
				call.Done(lb.Abandoned)
				return ex.fail(statusClientClosed, FlagDC, "client went away")
			}
			call.Done(lb.Failure)
			p.log.Debug("tunnel dial failed", "service", svc.key, "err", err)
			return ex.fail(http.StatusBadGateway, FlagUF, "tunnel to "+svc.key+" failed")
		}
		call.Done(lb.Success)
		return &Response{Status: http.StatusOK, Upgraded: tunnelConn{conn, br}}
	})
}

// tunnelPortFilter lets a CONNECT through only to a port the service
// declares tcp: a tunnel to an HTTP port would carry requests past the
// route chain and the receiving proxy's HTTP hygiene.
func (p *Proxy) tunnelPortFilter(next Handler) Handler {
	return HandlerFunc(func(ex *Exchange) *Response {
		if ex.Service == nil {
			return next.Serve(ex) // outside the registry: the egress policy's
		}
		if ex.Service.port(ex.Port).proto != meshv1.Protocol_TCP {
			p.refusals.Refused(telemetry.RefusedTunnelPort)
			return ex.fail(http.StatusForbidden, FlagNR, "CONNECT tunnels only to ports declared tcp; port "+
				strconv.FormatUint(uint64(ex.Port), 10)+" of "+ex.Service.key+" is not")
		}
		return next.Serve(ex)
	})
}

// serveTCPTunnel is the inbound side of a tunnel (http.Server.TLSNextProto):
// it forwards only to ports the proxy's own service declares.
func (p *Proxy) serveTCPTunnel(_ *http.Server, conn *tls.Conn, _ http.Handler) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(handshakeTimeout))
	br := bufio.NewReaderSize(conn, 4096)
	line, err := readLine(br, maxPreamble)
	if err != nil {
		return
	}
	refuse := func(reason string) { _, _ = conn.Write([]byte("error " + reason + "\n")) }
	port, err := parsePreamble(line)
	if err != nil {
		refuse("malformed preamble")
		return
	}
	cfg := p.cfg.Load()
	ps, ok := cfg.inbound.port(port)
	if !ok || ps.appAddr == "" {
		refuse("port " + strconv.FormatUint(uint64(port), 10) + " is not declared by " + cfg.inbound.key)
		return
	}
	if ps.proto != meshv1.Protocol_TCP {
		// Raw bytes to an HTTP port would skip the inbound chain: the
		// identity header, authorization, limits, the app's routes.
		p.refusals.Refused(telemetry.RefusedTunnelPort)
		refuse("port " + ps.portStr + " of " + cfg.inbound.key + " is not a tcp port")
		return
	}
	if reason, ok := p.authorizeTunnel(cfg, conn, port); !ok {
		refuse(reason)
		return
	}
	d := net.Dialer{Timeout: handshakeTimeout}
	app, err := d.Dial("tcp", ps.appAddr)
	if err != nil {
		refuse("app unreachable")
		return
	}
	defer app.Close()
	if _, err := conn.Write([]byte("ok\n")); err != nil {
		return
	}
	_ = conn.SetDeadline(time.Time{})
	if !p.track(conn, true) {
		return
	}
	defer p.track(conn, false)
	src := telemetry.SourcePeer("", peerID(conn.ConnectionState().PeerCertificates))
	tcp := p.metrics.TCP(telemetry.SeriesLabels{Reporter: telemetry.ReporterDestination, Source: src, Destination: cfg.inbound.dst})
	spliceCounted(tcp, br, conn, app, app)
}

// spliceCounted is splice counted as one tunnel of t: a is the source's
// side, b the destination's.
func spliceCounted(t *telemetry.TCPSeries, aR io.Reader, aW io.Writer, bR io.Reader, bW io.Writer) {
	if t == nil {
		splice(aR, aW, bR, bW)
		return
	}
	t.Opened()
	received, sent := splice(aR, aW, bR, bW)
	t.Closed(sent, received)
}

type streamWriter struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

func (s streamWriter) Write(b []byte) (int, error) {
	n, err := s.w.Write(b)
	if err == nil {
		err = s.rc.Flush()
	}
	return n, err
}

type closeWriter interface{ CloseWrite() error }

// splice copies a→b and b→a until both directions end, and returns the
// bytes each way. EOF on one side half-closes the other where the
// connection allows, so request/response protocols that shut down their
// write side still get their answer.
func splice(aR io.Reader, aW io.Writer, bR io.Reader, bW io.Writer) (aToB, bToA int64) {
	var wg sync.WaitGroup
	one := func(dst io.Writer, src io.Reader, other io.Writer, n *int64) {
		defer wg.Done()
		buf := getBuf()
		var err error
		*n, err = io.CopyBuffer(dst, src, *buf)
		putBuf(buf)
		if cw, ok := dst.(closeWriter); ok && err == nil {
			_ = cw.CloseWrite()
			return
		}
		// Not half-closable or broken: end both directions.
		closeIt(dst)
		closeIt(other)
	}
	wg.Add(2)
	go one(bW, aR, aW, &aToB)
	go one(aW, bR, bW, &bToA)
	wg.Wait()
	closeIt(aW)
	closeIt(bW)
	return aToB, bToA
}

func closeIt(w io.Writer) {
	if c, ok := w.(io.Closer); ok {
		_ = c.Close()
	}
}

// connTracker remembers connections the http.Servers no longer own
// (hijacked upgrades and tunnels) so Shutdown can wait for and close them.
type connTracker struct {
	mu     sync.Mutex
	conns  map[io.Closer]struct{}
	closed bool
	wg     sync.WaitGroup
}

// track adds (add=true) or removes c; adding fails once shut down.
func (p *Proxy) track(c io.Closer, add bool) bool {
	t := &p.tracked
	t.mu.Lock()
	defer t.mu.Unlock()
	if !add {
		delete(t.conns, c)
		t.wg.Done()
		return true
	}
	if t.closed {
		_ = c.Close()
		return false
	}
	if t.conns == nil {
		t.conns = make(map[io.Closer]struct{})
	}
	t.conns[c] = struct{}{}
	t.wg.Add(1)
	return true
}

// drainTracked waits for tracked connections to finish until ctx ends,
// then closes what is left.
func (t *connTracker) drain(ctx context.Context) {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	done := make(chan struct{})
	go func() { t.wg.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-ctx.Done():
	}
	t.mu.Lock()
	for c := range t.conns {
		_ = c.Close()
	}
	t.mu.Unlock()
	<-done
}
