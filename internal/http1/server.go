package http1

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Server serves HTTP/1.1 on connections with the strict head parser, and
// hands each request to an http.Handler as net/http's server would: the
// handler sees an *http.Request and an http.ResponseWriter that flushes,
// hijacks and sets deadlines through http.ResponseController. It differs
// from net/http's server in what it refuses (see the package comment) and
// in how little it does per request: one goroutine per connection, the
// request read and the response written on it, no goroutine per request
// unless a handler outlives watchDelay (then one watches for the client
// going away, as net/http's background read does).
type Server struct {
	Handler http.Handler
	Limits  Limits
	// ReadHeaderTimeout bounds reading a request head; IdleTimeout how
	// long a keep-alive connection may wait for the next one.
	ReadHeaderTimeout, IdleTimeout time.Duration
	// MaxTrailerBytes bounds a chunked body's trailer section.
	MaxTrailerBytes int
	// ConnContext, if set, derives a connection's base context.
	ConnContext func(context.Context, net.Conn) context.Context
	// ConnState, if set, is told of each connection's state changes.
	ConnState func(net.Conn, http.ConnState)
	// Refused, if set, is told of each request refused before the handler
	// (malformed or oversize head, malformed chunked body).
	Refused func(*Error)
	// ErrorLog, if set, logs handler panics.
	ErrorLog *log.Logger
	// Preface, if set, takes connections that open with the HTTP/2
	// client preface (h2c with prior knowledge); conn replays the bytes
	// already read. Without it such a connection is refused (505).
	Preface func(conn net.Conn)

	mu       sync.Mutex
	lns      []net.Listener
	conns    map[*serverConn]struct{}
	draining atomic.Bool
	done     sync.WaitGroup
	// watchDelay, if set, replaces the package's (tests).
	watchDelay time.Duration
}

// watchDelay is how long a handler runs before its connection is watched
// for the client going away: most requests finish sooner and pay nothing.
// Watching costs a goroutine and three deadline changes, about 5% of a
// sidecar's CPU when it began at 2 ms and every proxied request under
// load outlived that; a client gone is noticed at most this late.
const watchDelay = 50 * time.Millisecond

// h2Preface is the start of an HTTP/2 connection (RFC 9113 §3.4).
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

var errServerClosed = errors.New("http1: server closed")

// Serve accepts connections from ln and serves each on its own goroutine
// until ln fails or the server shuts down.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.draining.Load() {
		s.mu.Unlock()
		return errServerClosed
	}
	s.lns = append(s.lns, ln)
	s.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.draining.Load() {
				return errServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		if !s.ServeConn(c) {
			_ = c.Close()
		}
	}
}

// ServeConn serves c on a new goroutine; false if the server is shutting
// down (c is then the caller's).
func (s *Server) ServeConn(c net.Conn) bool {
	sc := &serverConn{s: s, c: c}
	s.mu.Lock()
	if s.draining.Load() {
		s.mu.Unlock()
		return false
	}
	if s.conns == nil {
		s.conns = map[*serverConn]struct{}{}
	}
	s.conns[sc] = struct{}{}
	s.done.Add(1)
	s.mu.Unlock()
	s.state(c, http.StateNew)
	go sc.serve()
	return true
}

func (s *Server) state(c net.Conn, st http.ConnState) {
	if s.ConnState != nil {
		s.ConnState(c, st)
	}
}

func (s *Server) forget(sc *serverConn) {
	s.mu.Lock()
	delete(s.conns, sc)
	s.mu.Unlock()
	s.done.Done()
}

// Shutdown stops taking connections, closes idle ones, and waits for the
// rest to finish their request (each is then closed) or for ctx.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.stopLocked()
	for sc := range s.conns {
		sc.wakeIfIdle()
	}
	s.mu.Unlock()
	finished := make(chan struct{})
	go func() { s.done.Wait(); close(finished) }()
	select {
	case <-finished:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close closes every connection now.
func (s *Server) Close() error {
	s.mu.Lock()
	s.stopLocked()
	for sc := range s.conns {
		_ = sc.c.Close()
	}
	s.mu.Unlock()
	return nil
}

// stopLocked marks the server draining and closes its listeners.
func (s *Server) stopLocked() {
	s.draining.Store(true)
	for _, ln := range s.lns {
		_ = ln.Close()
	}
	s.lns = nil
}

// pools of per-connection buffers, returned when a connection closes.
var (
	readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
	// heads: a RequestHead is 1.6 KiB, needed only until its request is
	// built; an idle connection holds none.
	heads = sync.Pool{New: func() any { return new(RequestHead) }}
)

// serverConn is one connection's state.
type serverConn struct {
	s      *Server
	c      net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	ctx    context.Context
	cancel context.CancelFunc
	base   *http.Request // carries ctx: each request is a copy
	remote string
	tls    *tls.ConnectionState
	head   *RequestHead // while a head is read and its request built
	rest   []byte       // what followed a head larger than br's buffer
	first  firstByte
	// spare is the last request's *http.Request, URL, header map and value
	// slice, for the next request to reuse once the last one's handler
	// has returned and its response is finished (serveRequest): four
	// allocations fewer per request. A connection idle past idleHandoff
	// drops them.
	spare spareRequest

	idle atomic.Bool // waiting for a request's first byte
	// ownDeadline: the read deadline in force is the server's (idle or
	// header timeout), to lift before the handler's reads.
	ownDeadline atomic.Bool
	hijacked    bool
	w           response
	watch       watcher
}

func (sc *serverConn) wakeIfIdle() {
	if sc.idle.Load() {
		_ = sc.c.SetReadDeadline(aLongTimeAgo)
	}
}

var aLongTimeAgo = time.Unix(1, 0)

func (sc *serverConn) serve() {
	s := sc.s
	ctx := context.Background()
	if s.ConnContext != nil {
		ctx = s.ConnContext(ctx, sc.c)
	}
	sc.ctx, sc.cancel = newConnCtx(ctx)
	sc.base = (&http.Request{}).WithContext(sc.ctx)
	sc.remote = sc.c.RemoteAddr().String()
	if tc, ok := sc.c.(*tls.Conn); ok {
		st := tc.ConnectionState()
		sc.tls = &st
	}
	sc.takeBuffers(sc.c)
	sc.watch.init(sc)
	sc.run(true)
}

// run serves the connection's requests until it ends. Between requests
// it waits for the next one on its own goroutine, with its buffers, for
// up to idleHandoff: a busy connection keeps the stack its requests grew
// (a fresh goroutine starts at 2 KiB and regrows it, four copies per
// request, ~10% of a sidecar's CPU at full load) and reads each request
// whole. A connection idle longer is waited on by a new goroutine
// (resume) reading one byte without buffers, so 10,000 idle keep-alive
// connections hold neither 8 KiB of bufio each nor that stack.
func (sc *serverConn) run(first bool) {
	for {
		switch sc.loop(first) {
		case loopIdle:
			switch sc.awaitByte(idleHandoff) {
			case awaitGot:
				first = false
				continue
			case awaitLonger:
				sc.dropBuffers()
				sc.w.shed()
				sc.spare = spareRequest{}
				go sc.resume()
				return
			}
			sc.end(true)
		case loopOver:
			sc.end(true)
		case loopHandedOff:
			sc.end(false)
		}
		return
	}
}

// idleHandoff is how long a connection between requests keeps the
// goroutine that served them: past it, the connection costs the stack it
// grew, and a request this rare pays little for regrowing one.
const idleHandoff = 250 * time.Millisecond

// resume waits for the first byte of an idle connection's next request,
// then serves on.
func (sc *serverConn) resume() {
	if sc.awaitByte(0) != awaitGot {
		sc.end(true)
		return
	}
	sc.takeBuffers(&sc.first)
	sc.run(false)
}

// end releases what the connection holds; closing it unless it was
// handed on (hijacked, or to Preface).
func (sc *serverConn) end(closeConn bool) {
	defer sc.s.forget(sc)
	defer sc.cancel()
	sc.watch.t.Stop()
	if !closeConn || sc.hijacked {
		return // the buffers went with the connection
	}
	sc.dropBuffers()
	_ = sc.c.Close()
	sc.s.state(sc.c, http.StateClosed)
}

func (sc *serverConn) takeBuffers(r io.Reader) {
	sc.br = readers.Get().(*bufio.Reader)
	sc.br.Reset(r)
	sc.bw = writers.Get().(*bufio.Writer)
	sc.bw.Reset(sc.c)
}

func (sc *serverConn) dropBuffers() {
	if sc.br != nil {
		sc.br.Reset(nil)
		readers.Put(sc.br)
		sc.bw.Reset(nil)
		writers.Put(sc.bw)
		sc.br, sc.bw = nil, nil
	}
}

type awaitResult uint8

const (
	awaitOver   awaitResult = iota // the connection ends (closed, timed out, draining)
	awaitGot                       // the first byte is in sc.first
	awaitLonger                    // still idle after the limit given
)

// awaitByte waits for the next request's first byte: into the read
// buffer while the connection has one, else alone into sc.first. It waits
// up to the idle timeout, or up to limit (> 0) if that is shorter, after
// which the wait goes on from resume; resume's wait (limit 0) gets what is
// left of the idle timeout.
func (sc *serverConn) awaitByte(limit time.Duration) awaitResult {
	s := sc.s
	d := s.IdleTimeout
	if d <= 0 {
		d = s.ReadHeaderTimeout
	}
	short := limit > 0 && (d <= 0 || limit < d)
	switch {
	case short:
		d = limit
	case limit == 0 && d > idleHandoff:
		d -= idleHandoff
	}
	sc.setDeadline(d)
	sc.idle.Store(true)
	defer sc.idle.Store(false)
	if s.draining.Load() {
		return awaitOver
	}
	for {
		var err error
		if sc.br != nil {
			if _, err = sc.br.Peek(1); err == nil {
				return awaitGot
			}
		} else if n, rerr := sc.c.Read(sc.first.b[:]); n == 1 {
			sc.first.c, sc.first.has = sc.c, true
			return awaitGot
		} else {
			err = rerr
		}
		if err != nil {
			if short && !s.draining.Load() && errors.Is(err, os.ErrDeadlineExceeded) {
				return awaitLonger
			}
			return awaitOver
		}
	}
}

// firstByte replays a connection's first byte read while it was idle.
type firstByte struct {
	c   net.Conn
	b   [1]byte
	has bool
}

func (f *firstByte) Read(p []byte) (int, error) {
	if f.has && len(p) > 0 {
		f.has = false
		p[0] = f.b[0]
		return 1, nil
	}
	return f.c.Read(p)
}

type loopEnd uint8

const (
	loopOver      loopEnd = iota // the connection ends
	loopIdle                     // no request buffered: wait without buffers
	loopHandedOff                // to Preface
)

// loop serves requests while they come, buffered or first.
func (sc *serverConn) loop(first bool) loopEnd {
	s := sc.s
	for ; ; first = false {
		if s.draining.Load() && !first {
			return loopOver
		}
		if !first && sc.br.Buffered() == 0 && !sc.first.has && len(sc.rest) == 0 {
			return loopIdle // (sc.rest: bytes after a big head, not yet in br)
		}
		if !sc.awaitRequest(first) {
			return loopOver
		}
		if first && s.Preface != nil && sc.isPreface() {
			s.state(sc.c, http.StateHijacked)
			s.Preface(&replayConn{Conn: sc.c, r: sc.br})
			return loopHandedOff
		}
		s.state(sc.c, http.StateActive)
		r, herr := sc.readRequest()
		if r == nil {
			sc.refuse(herr) // nil: the connection just ended
			return loopOver
		}
		if !sc.serveRequest(r) {
			return loopOver
		}
		s.state(sc.c, http.StateIdle)
	}
}

// awaitRequest waits for the first byte of a request: up to the idle
// timeout between requests, the read header timeout for the first. The
// rest of the head gets the read header timeout only if it does not come
// with that byte (readHead): one deadline per request, not three.
func (sc *serverConn) awaitRequest(first bool) bool {
	s := sc.s
	d := s.IdleTimeout
	if first || d <= 0 {
		d = s.ReadHeaderTimeout
	}
	if sc.br.Buffered() == 0 && !sc.first.has {
		sc.setDeadline(d)
		sc.idle.Store(true)
		if s.draining.Load() { // Shutdown may have missed this conn's idle
			sc.idle.Store(false)
			return false
		}
		_, err := sc.br.Peek(1)
		sc.idle.Store(false)
		if err != nil {
			return false
		}
	}
	return true
}

// setDeadline sets the connection's read deadline d from now (none for
// d <= 0) and notes that it is the server's, not the handler's.
func (sc *serverConn) setDeadline(d time.Duration) {
	if d > 0 {
		_ = sc.c.SetReadDeadline(time.Now().Add(d))
		sc.ownDeadline.Store(true)
		return
	}
	sc.clearDeadline()
}

// clearDeadline lifts the server's read deadline (the idle or header
// one) before a read the handler owns: a body, the client-gone watch.
func (sc *serverConn) clearDeadline() {
	if sc.ownDeadline.Swap(false) {
		_ = sc.c.SetReadDeadline(time.Time{})
	}
}

func (sc *serverConn) isPreface() bool {
	b, _ := sc.br.Peek(3)
	if string(b) != h2Preface[:3] {
		return false
	}
	b, err := sc.br.Peek(len(h2Preface))
	return err == nil && string(b) == h2Preface
}

// refuse answers a refused head and ends the connection.
func (sc *serverConn) refuse(err *Error) {
	if err == nil {
		return
	}
	if sc.s.Refused != nil {
		sc.s.Refused(err)
	}
	writeRefusal(sc.bw, err)
	_ = sc.bw.Flush()
	// Let the client read the answer before the close resets it: end
	// our side, then take what it is still sending (a 1 MiB header, a
	// body) for a while, so the close finds nothing unread to answer with
	// a reset that would discard the answer.
	if tc, ok := sc.c.(interface{ CloseWrite() error }); ok {
		_ = tc.CloseWrite()
	}
	_ = sc.c.SetReadDeadline(time.Now().Add(refusalLinger))
	_, _ = io.CopyN(io.Discard, sc.br, refusalDrainMax)
}

// After a refusal the server reads and drops up to refusalDrainMax bytes
// for up to refusalLinger (net/http only waits 500 ms, and its clients'
// large writes still meet a reset).
const (
	refusalLinger   = 500 * time.Millisecond
	refusalDrainMax = 4 << 20
)

// writeRefusal writes err's status with Connection: close.
func writeRefusal(bw *bufio.Writer, err *Error) {
	var b []byte
	b = AppendStatusLine(b, err.Status)
	b = append(b, "Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"...)
	b = append(b, http.StatusText(err.Status)...)
	b = append(b, ": "...)
	b = append(b, err.Reason...)
	b = append(b, '\n')
	_, _ = bw.Write(b)
}

// readRequest reads and parses one request head and returns the request,
// or the refusal to answer (nil when the connection just ended).
func (sc *serverConn) readRequest() (*http.Request, *Error) {
	sc.head = heads.Get().(*RequestHead)
	defer func() {
		heads.Put(sc.head)
		sc.head = nil
	}()
	lim := sc.s.Limits.withDefaults()
	buf, n, inPlace, err := sc.readHead(lim)
	if err != nil {
		var he *Error
		if errors.As(err, &he) {
			return nil, he
		}
		return nil, nil // read failed: timeout or closed, nothing to answer
	}
	sc.w.reset(sc)
	r, herr := sc.newRequest(buf[:n], lim)
	if herr != nil {
		return nil, herr
	}
	if inPlace {
		_, _ = sc.br.Discard(n)
	}
	if sc.head.Chunked {
		if e := sc.earlyChunkError(); e != nil {
			return nil, e
		}
	}
	return r, nil
}

// earlyChunkError checks the part of a chunked body that came with its
// head: a malformed chunk there refuses the request before any handler
// sees it, so a smuggling shape sent in one write never reaches an app
// even as a broken request. A later malformed chunk fails the body read.
func (sc *serverConn) earlyChunkError() *Error {
	n := sc.br.Buffered()
	if n == 0 {
		return nil
	}
	buf, _ := sc.br.Peek(n)
	var cr ChunkedReader
	cr.Reset(bufio.NewReaderSize(bytes.NewReader(buf), max(n, 16)), sc.s.MaxTrailerBytes)
	_, err := io.Copy(io.Discard, &cr)
	var he *Error
	if errors.As(err, &he) {
		return he
	}
	return nil
}

// readHead returns a buffer holding a whole head and the head's length.
// Heads up to br's size are parsed in place (inPlace: still buffered in
// br); longer ones are gathered in a buffer of their own up to the limit.
func (sc *serverConn) readHead(lim Limits) (buf []byte, n int, inPlace bool, err error) {
	for more := false; ; more = true {
		buf, _ = sc.br.Peek(sc.br.Buffered())
		n, err = ParseRequest(buf, lim, sc.head)
		if err != ErrIncomplete {
			return buf, n, true, err
		}
		if !more {
			sc.setDeadline(sc.s.ReadHeaderTimeout) // the head trickles in
		}
		if sc.br.Buffered() == sc.br.Size() {
			buf, n, err = sc.readBigHead(lim)
			return buf, n, false, err
		}
		if _, err := sc.br.Peek(sc.br.Buffered() + 1); err != nil {
			return nil, 0, false, err // a client gone mid-head gets no answer
		}
	}
}

func (sc *serverConn) readBigHead(lim Limits) ([]byte, int, error) {
	big := make([]byte, 0, 2*sc.br.Size())
	for {
		chunk, _ := sc.br.Peek(sc.br.Buffered())
		big = append(big, chunk...)
		_, _ = sc.br.Discard(len(chunk))
		n, err := ParseRequest(big, lim, sc.head)
		switch {
		case err == nil:
			// Give back what followed the head (a body, a pipelined
			// request): it is read before the connection.
			sc.rest = append(sc.rest, big[n:]...)
			sc.br.Reset(io.MultiReader(&restReader{sc}, sc.c))
			return big, n, nil
		case err != ErrIncomplete:
			return nil, 0, err
		}
		if _, err := sc.br.Peek(1); err != nil {
			return nil, 0, err
		}
	}
}

// restReader reads what followed a big head.
type restReader struct{ sc *serverConn }

func (b *restReader) Read(p []byte) (int, error) {
	if len(b.sc.rest) == 0 {
		return 0, io.EOF
	}
	n := copy(p, b.sc.rest)
	b.sc.rest = b.sc.rest[n:]
	return n, nil
}

// replayConn is a connection whose first bytes were already read into r.
type replayConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *replayConn) Read(p []byte) (int, error) {
	if c.r != nil {
		if c.r.Buffered() > 0 {
			return c.r.Read(p)
		}
		c.r = nil
	}
	return c.Conn.Read(p)
}
