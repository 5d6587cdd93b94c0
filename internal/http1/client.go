package http1

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Transport is an http.RoundTripper speaking HTTP/1.1 with keep-alive over
// the connections Dial gives it. Unlike net/http's Transport it runs no
// goroutine per connection: RoundTrip writes the request and reads the
// response head on the calling goroutine, and the response body is read
// from the connection by whoever reads Body. A connection whose body ended
// cleanly goes back to an idle pool keyed by req.URL.Host.
//
// The URL's scheme is not looked at: TLS, if any, is Dial's to do. Header
// fields are passed as they are (no User-Agent or Accept-Encoding is
// added); Host, Content-Length, Transfer-Encoding, Connection, Upgrade and
// Trailer are the transport's to write. CONNECT is not supported. The
// request is written whole before the response is read, so a server that
// answers before it has read a large request body, and stops reading it,
// fails the exchange instead of delivering its early answer.
//
// A Transport must not be copied after first use.
type Transport struct {
	// Dial connects to addr ("host:port"); nil dials TCP. Its error is
	// returned as it is, so errors.As finds the caller's types.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// MaxIdlePerHost bounds the idle connections kept per address: 0 is
	// DefaultMaxIdlePerHost, below 0 keeps none.
	MaxIdlePerHost int
	// IdleTimeout closes a connection idle for that long; 0 is
	// DefaultIdleTimeout.
	IdleTimeout time.Duration
	// Limits bound a response head (MaxRequestLine bounds the status
	// line).
	Limits Limits
	// MaxResponseHeaderBytes, when > 0, bounds the response head in place
	// of Limits.MaxHeadBytes.
	MaxResponseHeaderBytes int

	mu   sync.Mutex
	idle map[string][]*clientConn
}

// Defaults for Transport's zero fields.
const (
	DefaultMaxIdlePerHost = 2
	DefaultIdleTimeout    = 90 * time.Second
)

const (
	connBufSize = 4 << 10
	// max1xx bounds the interim responses skipped before the final one
	// (net/http allows 5).
	max1xx = 5
)

var (
	errConnect      = errors.New("http1: CONNECT is not supported")
	errNoURLHost    = errors.New("http1: no host in request URL")
	errBadHost      = errors.New("http1: invalid Host")
	errBadTarget    = errors.New("control character or space in request URL")
	errBadMethod    = errors.New("http1: invalid method")
	errBodyClosed   = errors.New("http1: read on closed response body")
	errTooMany1xx   = errors.New("too many 1xx informational responses")
	errBodyTooLong  = errors.New("request body longer than ContentLength")
	errBodyTooShort = errors.New("request body shorter than ContentLength")
)

// RoundTrip sends req and returns the response head; the body is read
// from the connection as Body is. It always closes req.Body. An idle
// connection found dead before any response byte arrived is replaced by a
// fresh one, once, when req can be sent again (as net/http decides: no
// body or GetBody, and an idempotent method or an Idempotency-Key).
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	return t.RoundTripNoting(req, nil)
}

// RoundTripNoting is RoundTrip that tells note (if not nil) how long each
// connection it had to make for req took.
func (t *Transport) RoundTripNoting(req *http.Request, note DialNoter) (*http.Response, error) {
	addr, err := checkRequest(req)
	if err != nil {
		closeReqBody(req)
		return nil, err
	}
	ctx := req.Context()
	c, err := t.getConn(ctx, addr, false, note)
	if err != nil {
		closeReqBody(req)
		return nil, err
	}
	resp, err := c.roundTrip(ctx, req)
	if err == nil {
		return resp, nil
	}
	dead, ok := err.(*deadConnError)
	if !ok {
		return nil, err
	}
	if !replayable(req) {
		return nil, dead.err
	}
	if req, err = rewind(req); err != nil {
		return nil, err
	}
	if c, err = t.getConn(ctx, addr, true, note); err != nil {
		closeReqBody(req)
		return nil, err
	}
	return c.roundTrip(ctx, req)
}

// checkRequest refuses what cannot be written and returns the address to
// dial.
func checkRequest(req *http.Request) (string, error) {
	switch {
	case req.URL == nil || req.URL.Host == "":
		return "", errNoURLHost
	case req.Method == http.MethodConnect:
		return "", errConnect
	case req.Method != "" && !isTokenString(req.Method):
		return "", errBadMethod
	case req.ContentLength > 0 && noBody(req):
		return "", fmt.Errorf("http1: ContentLength %d with no Body", req.ContentLength)
	case req.Host != "" && !validHostString(req.Host), !validHostString(req.URL.Host):
		return "", errBadHost
	}
	addr := req.URL.Host
	if req.URL.Port() == "" {
		port := "80"
		if req.URL.Scheme == "https" {
			port = "443"
		}
		addr = net.JoinHostPort(req.URL.Hostname(), port)
	}
	return addr, nil
}

func noBody(req *http.Request) bool { return req.Body == nil || req.Body == http.NoBody }

func closeReqBody(req *http.Request) {
	if !noBody(req) {
		_ = req.Body.Close()
	}
}

// replayable: net/http's rule for sending a request again on a new
// connection after the first died under it.
func replayable(req *http.Request) bool {
	if !noBody(req) && req.GetBody == nil {
		return false
	}
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, a := req.Header["Idempotency-Key"]
	_, b := req.Header["X-Idempotency-Key"]
	return a || b
}

// rewind gives the request a fresh body from GetBody for a second try.
func rewind(req *http.Request) (*http.Request, error) {
	if noBody(req) {
		return req, nil
	}
	b, err := req.GetBody()
	if err != nil {
		return nil, fmt.Errorf("http1: rewind request body: %w", err)
	}
	r := new(http.Request)
	*r = *req
	r.Body = b
	return r, nil
}

// deadConnError: a reused connection failed before any byte of the
// response arrived, so the server most likely closed it while idle.
type deadConnError struct{ err error }

func (e *deadConnError) Error() string { return e.err.Error() }
func (e *deadConnError) Unwrap() error { return e.err }

// isDeadConn: the errors a connection the peer closed gives.
func isDeadConn(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// CloseIdleConnections closes the connections the pool holds; those in
// use are kept and pooled again when their exchange ends.
func (t *Transport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = nil
	for _, list := range idle {
		for _, c := range list {
			c.idle = false
			c.idleTimer.Stop()
		}
	}
	t.mu.Unlock()
	for _, list := range idle {
		for _, c := range list {
			_ = c.nc.Close()
		}
	}
}

func (t *Transport) maxIdle() int {
	if t.MaxIdlePerHost == 0 {
		return DefaultMaxIdlePerHost
	}
	return t.MaxIdlePerHost
}

func (t *Transport) idleTimeout() time.Duration {
	if t.IdleTimeout <= 0 {
		return DefaultIdleTimeout
	}
	return t.IdleTimeout
}

func (t *Transport) limits() Limits {
	lim := t.Limits.withDefaults()
	if t.MaxResponseHeaderBytes > 0 {
		lim.MaxHeadBytes = t.MaxResponseHeaderBytes
	}
	return lim
}

// getConn takes the newest idle connection to addr, or dials one (always
// when fresh).
func (t *Transport) getConn(ctx context.Context, addr string, fresh bool, note DialNoter) (*clientConn, error) {
	if !fresh {
		if c := t.popIdle(addr); c != nil {
			return c, nil
		}
	}
	start := time.Now()
	nc, err := t.dial(ctx, addr)
	if err != nil {
		if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
			return nil, fmt.Errorf("http1: dial %s: %w (%w)", addr, ctx.Err(), err)
		}
		return nil, err
	}
	if note != nil {
		note.NoteDial(time.Since(start))
	}
	c := &clientConn{
		t:    t,
		addr: addr,
		nc:   nc,
		br:   bufio.NewReaderSize(nc, connBufSize),
		bw:   bufio.NewWriterSize(nc, connBufSize),
	}
	c.watching.F = c.abort // made once: a method value per watch would allocate
	return c, nil
}

// DialNoter is told how long a request's connection took to make (dial
// and handshake) when the request had to make one, so a latency measured
// around the round trip can leave that out.
type DialNoter interface{ NoteDial(time.Duration) }

func (t *Transport) dial(ctx context.Context, addr string) (net.Conn, error) {
	if t.Dial != nil {
		return t.Dial(ctx, addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

func (t *Transport) popIdle(addr string) *clientConn {
	t.mu.Lock()
	defer t.mu.Unlock()
	list := t.idle[addr]
	if len(list) == 0 {
		return nil
	}
	c := list[len(list)-1]
	list[len(list)-1] = nil
	t.idle[addr] = list[:len(list)-1]
	c.idle = false // its idle timer runs on: expire finds it busy
	return c
}

// putIdle pools c for the next request to its address, or closes it when
// the pool is full or c holds bytes nobody asked for.
func (t *Transport) putIdle(c *clientConn) {
	if c.br.Buffered() > 0 {
		_ = c.nc.Close()
		return
	}
	timeout := t.idleTimeout()
	t.mu.Lock()
	list := t.idle[c.addr]
	if len(list) >= t.maxIdle() {
		t.mu.Unlock()
		_ = c.nc.Close()
		return
	}
	if t.idle == nil {
		t.idle = make(map[string][]*clientConn)
	}
	c.idle, c.reused, c.idleAt = true, true, time.Now()
	t.idle[c.addr] = append(list, c)
	switch {
	case c.idleTimer == nil:
		c.idleTimer = time.AfterFunc(timeout, c.expire)
		c.timerSet = true
	case !c.timerSet:
		c.idleTimer.Reset(timeout)
		c.timerSet = true
	}
	t.mu.Unlock()
}

// clientConn is one connection to an upstream; one exchange uses it at a
// time.
type clientConn struct {
	t    *Transport
	addr string
	nc   net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	cw   ChunkedWriter
	cr   ChunkedReader
	head ResponseHead
	copy []byte // chunked request body buffer, made on first use
	// wrote is the result of a request body written on its own goroutine
	// while the response is read (full duplex); nil when none.
	wrote chan error

	// watching is the watch on the exchange's context (watch.go).
	watching ContextWatch

	// Guarded by t.mu.
	reused    bool
	idle      bool
	idleAt    time.Time
	idleTimer *time.Timer
	// timerSet: idleTimer is pending. It is not reset per request (two
	// timer changes per request, ~2% of a sidecar's CPU): expire re-arms
	// it for what is left, or leaves it for the next putIdle.
	timerSet bool
}

// expire closes c if it is still idle and has been for IdleTimeout (the
// timer may fire just as c is taken or pooled again).
func (c *clientConn) expire() {
	t := c.t
	t.mu.Lock()
	if !c.idle {
		c.timerSet = false // busy: the next putIdle arms it
		t.mu.Unlock()
		return
	}
	if rest := t.idleTimeout() - time.Since(c.idleAt); rest > 0 {
		c.idleTimer.Reset(rest) // used since the timer was set
		t.mu.Unlock()
		return
	}
	c.timerSet = false
	c.idle = false
	list := t.idle[c.addr]
	for i, x := range list {
		if x == c {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(t.idle, c.addr)
	} else {
		t.idle[c.addr] = list
	}
	t.mu.Unlock()
	_ = c.nc.Close()
}

// watch makes ctx's end abort whatever I/O c is doing: a deadline in the
// past fails a blocked read or write at once.
func (c *clientConn) watch(ctx context.Context) { c.watching.Start(ctx) }

// abort fails c's blocked I/O: a deadline in the past.
func (c *clientConn) abort() { _ = c.nc.SetDeadline(time.Unix(1, 0)) }

// unwatch ends the watch; false when ctx already ended, so the
// connection's deadline may be set and it cannot be reused.
func (c *clientConn) unwatch() bool { return c.watching.End() }

// release ends c's exchange: pooled when keep and the context did not
// end, else closed.
func (c *clientConn) release(keep bool) {
	if written, _ := c.bodyWritten(); !written {
		keep = false // a writer may still hold the connection
	}
	if c.unwatch() && keep {
		c.t.putIdle(c)
		return
	}
	_ = c.nc.Close()
}

// fail discards c after an error and returns the error to report: the
// context's when it ended (its deadline is what broke the I/O).
func (c *clientConn) fail(ctx context.Context, op string, err error) error {
	c.release(false)
	if ctx.Err() != nil {
		return fmt.Errorf("http1: %s: %w", op, ctx.Err())
	}
	return fmt.Errorf("http1: %s: %w", op, err)
}

func (c *clientConn) roundTrip(ctx context.Context, req *http.Request) (*http.Response, error) {
	if err := ctx.Err(); err != nil {
		closeReqBody(req)
		c.release(true)
		return nil, fmt.Errorf("http1: %w", err)
	}
	c.watch(ctx)
	reqClose, err := c.writeRequest(req)
	if err != nil {
		err = c.fail(ctx, "write request", err)
		if c.reused && ctx.Err() == nil && isDeadConn(err) {
			return nil, &deadConnError{err}
		}
		return nil, err
	}
	return c.readResponse(ctx, req, reqClose)
}

// Writing the request.

// writeRequest writes req's head and body and flushes once (a body larger
// than the buffer flushes as it fills it; a chunked body after each
// chunk, as it may be a stream). It closes req.Body, and reports whether
// the request asked to close the connection.
func (c *clientConn) writeRequest(req *http.Request) (reqClose bool, err error) {
	async := false
	defer func() {
		if !async {
			closeReqBody(req)
		}
	}()
	cl, chunked := req.ContentLength, false
	switch {
	case noBody(req):
		cl = -1
		if req.Method == http.MethodPost || req.Method == http.MethodPut || req.Method == http.MethodPatch {
			cl = 0
		}
	case cl <= 0:
		// net/http's reading of 0 with a Body: length unknown.
		cl, chunked = -1, true
	}
	b := c.bw.AvailableBuffer()
	b, reqClose, err = appendRequestHead(b, req, cl, chunked)
	if err != nil {
		return false, err
	}
	if _, err := c.bw.Write(b); err != nil {
		return false, err
	}
	stream := (chunked || cl > 0) && !inMemory(req, max(cl, 1))
	if stream {
		// The body may take its time (a stream, a slow client): the head
		// goes now, as net/http sends it, so the server sees the request,
		// and each piece of the body as it comes.
		if err := c.bw.Flush(); err != nil {
			return false, err
		}
	}
	if stream || cl > maxSyncBody {
		// A body that takes its time or is large goes on its own
		// goroutine while the response is read, as with net/http: a
		// server may answer (an echo, an early refusal) before it has
		// read it all, and would otherwise deadlock against this write.
		async = true
		c.wrote = make(chan error, 1)
		go c.writeBodyAsync(req, cl, chunked, stream)
		return reqClose, nil
	}
	err = c.writeBody(req, cl, chunked, stream)
	if err != nil {
		return false, err
	}
	return reqClose, c.bw.Flush()
}

// inMemory reports whether at least n bytes of req's body can be read
// without waiting: a body http.NewRequest could replay (GetBody: it is in
// memory), or a body that says how much of it is buffered (the server's, through the proxy's wrapper). Such a body goes
// out in the head's write.
func inMemory(req *http.Request, n int64) bool {
	if req.GetBody != nil {
		return true
	}
	b, ok := req.Body.(interface{ Buffered() int })
	return ok && int64(b.Buffered()) >= n
}

// appendRequestHead appends the request line, Host, req.Header's fields
// but the framing ones, and the framing this transport chose.
func appendRequestHead(b []byte, req *http.Request, cl int64, chunked bool) ([]byte, bool, error) {
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	b = append(b, method...)
	b = append(b, ' ')
	start := len(b)
	b = appendTarget(b, req.URL)
	if !visibleASCII(b[start:]) {
		return b, false, errBadTarget
	}
	b = append(b, " HTTP/1.1\r\nHost: "...)
	host := req.Host // checked by checkRequest
	if host == "" {
		host = req.URL.Host
	}
	b = append(b, host...)
	b = append(b, '\r', '\n')
	b = appendHeader(b, req.Header)
	upgrade := isUpgrade(req.Header)
	reqClose := req.Close || hasToken(req.Header["Connection"], "close")
	switch {
	case upgrade:
		b = append(b, "Connection: Upgrade\r\n"...)
		for _, v := range req.Header["Upgrade"] {
			b = append(b, "Upgrade: "...)
			b = appendValue(b, v)
			b = append(b, '\r', '\n')
		}
		reqClose = true // the connection becomes the upgraded stream, or is dropped
	case reqClose:
		b = append(b, "Connection: close\r\n"...)
	}
	switch {
	case chunked:
		b = appendTrailerNames(b, req.Trailer)
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
	case cl >= 0:
		b = append(b, "Content-Length: "...)
		b = appendInt(b, cl)
		b = append(b, '\r', '\n')
	}
	return append(b, '\r', '\n'), reqClose, nil
}

// appendTarget appends the origin-form target: the escaped path ("/" when
// empty) and the query.
func appendTarget(b []byte, u *url.URL) []byte {
	if u.Opaque != "" {
		return append(b, u.Opaque...)
	}
	p := u.EscapedPath()
	if p == "" {
		p = "/"
	}
	b = append(b, p...)
	if u.RawQuery != "" || u.ForceQuery {
		b = append(b, '?')
		b = append(b, u.RawQuery...)
	}
	return b
}

// appendHeader appends h's fields but those the transport writes itself;
// a malformed name is dropped and control bytes in a value become spaces.
func appendHeader(b []byte, h http.Header) []byte {
	for k, vv := range h {
		if transportField(k) || !isTokenString(k) {
			continue
		}
		for _, v := range vv {
			b = append(b, k...)
			b = append(b, ':', ' ')
			b = appendValue(b, v)
			b = append(b, '\r', '\n')
		}
	}
	return b
}

// transportField: a field whose value this transport decides.
func transportField(k string) bool {
	switch len(k) {
	case 4:
		return strings.EqualFold(k, "Host")
	case 7:
		return strings.EqualFold(k, "Upgrade") || strings.EqualFold(k, "Trailer")
	case 10:
		return strings.EqualFold(k, "Connection")
	case 14:
		return strings.EqualFold(k, "Content-Length")
	case 17:
		return strings.EqualFold(k, "Transfer-Encoding")
	}
	return false
}

// appendTrailerNames announces the trailer fields a chunked body ends with.
func appendTrailerNames(b []byte, tr http.Header) []byte {
	first := true
	for k := range tr {
		if !isTokenString(k) || framingField([]byte(k)) {
			continue
		}
		if first {
			b = append(b, "Trailer: "...)
		} else {
			b = append(b, ", "...)
		}
		first = false
		b = append(b, k...)
	}
	if !first {
		b = append(b, '\r', '\n')
	}
	return b
}

func appendInt(b []byte, n int64) []byte {
	var d [20]byte
	i := len(d)
	for {
		i--
		d[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			break
		}
	}
	return append(b, d[i:]...)
}

// writeLength copies exactly n body bytes, and fails (as net/http does) a
// body shorter or longer than that.
func (c *clientConn) writeLength(body io.Reader, n int64) error {
	got, err := io.CopyN(c.bw, body, n)
	if got < n {
		if err == nil || errors.Is(err, io.EOF) {
			return fmt.Errorf("%w: %d of %d bytes", errBodyTooShort, got, n)
		}
		return fmt.Errorf("read request body: %w", err)
	}
	var one [1]byte
	for {
		m, err := body.Read(one[:])
		if m > 0 {
			return errBodyTooLong
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read request body: %w", err)
		}
	}
}

// maxSyncBody is the largest in-memory body written before the response
// is read, on the caller's goroutine: socket buffers hold it whatever the
// server does.
const maxSyncBody = 64 << 10

// writeBody writes the request body framed as chosen.
func (c *clientConn) writeBody(req *http.Request, cl int64, chunked, stream bool) error {
	switch {
	case chunked:
		return c.writeChunked(req)
	case cl > 0 && stream:
		return c.streamLength(req.Body, cl)
	case cl > 0:
		return c.writeLength(req.Body, cl)
	}
	return nil
}

// writeBodyAsync writes the body and flushes, then reports on c.wrote; a
// failure breaks the response read in progress (the server would wait
// for the rest of the body).
func (c *clientConn) writeBodyAsync(req *http.Request, cl int64, chunked, stream bool) {
	defer closeReqBody(req)
	err := c.writeBody(req, cl, chunked, stream)
	if err == nil {
		err = c.bw.Flush()
	}
	if err != nil {
		c.abort()
	}
	c.wrote <- err
}

// writeFailure is the error to report for a response read that failed
// with err: the body writer's own when its failure broke the read (it
// aborts with a past deadline and reports at once).
func (c *clientConn) writeFailure(ctx context.Context, err error) error {
	if c.wrote == nil || ctx.Err() != nil || !errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	if werr := <-c.wrote; werr != nil {
		c.wrote = nil
		return werr
	}
	c.wrote = nil
	return err
}

// bodyWritten reports whether the request body was written whole; a
// writer still running (the server answered before reading it all)
// counts as not: the connection cannot carry another request.
func (c *clientConn) bodyWritten() (bool, error) {
	if c.wrote == nil {
		return true, nil
	}
	select {
	case err := <-c.wrote:
		c.wrote = nil
		return err == nil, err
	default:
		return false, nil
	}
}

// streamLength writes a body of n bytes that arrives over time, each read
// flushed as it comes (writeLength would hold it until bw fills) but the
// last: that waits until the body is known to end there (net/http's
// order), so a server never answers a body that proves too long.
func (c *clientConn) streamLength(body io.Reader, n int64) error {
	if c.copy == nil {
		c.copy = make([]byte, connBufSize)
	}
	var got int64
	for got < n {
		m, err := body.Read(c.copy[:min(int64(len(c.copy)), n-got)])
		if m > 0 {
			if _, werr := c.bw.Write(c.copy[:m]); werr != nil {
				return werr
			}
			got += int64(m)
			if got < n {
				if werr := c.bw.Flush(); werr != nil {
					return werr
				}
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read request body: %w", err)
		}
	}
	if got < n {
		return fmt.Errorf("%w: %d of %d bytes", errBodyTooShort, got, n)
	}
	return c.writeLength(body, 0) // and nothing more; the caller flushes
}

// writeChunked writes the body as chunks, each flushed as read, then the
// last chunk with req.Trailer.
func (c *clientConn) writeChunked(req *http.Request) error {
	if c.copy == nil {
		c.copy = make([]byte, connBufSize)
	}
	c.cw.Reset(c.bw)
	for {
		n, rerr := req.Body.Read(c.copy)
		if n > 0 {
			if _, err := c.cw.Write(c.copy[:n]); err != nil {
				return err
			}
			if err := c.bw.Flush(); err != nil {
				return err
			}
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			return fmt.Errorf("read request body: %w", rerr)
		}
	}
	return c.cw.Close(req.Trailer)
}

// Reading the response.

// readResponse reads the final response head (skipping interim 1xx) and
// returns the response with a body reading from c.
func (c *clientConn) readResponse(ctx context.Context, req *http.Request, reqClose bool) (*http.Response, error) {
	h := &c.head
	h.ForHEAD = req.Method == http.MethodHead
	lim := c.t.limits()
	for i := 0; ; i++ {
		n, err := c.readHead(lim, h)
		if err != nil {
			err = c.writeFailure(ctx, err)
			nothing := i == 0 && c.br.Buffered() == 0
			err = c.fail(ctx, "read response", err)
			if nothing && c.reused && ctx.Err() == nil && isDeadConn(err) {
				return nil, &deadConnError{err}
			}
			return nil, err
		}
		if h.Status >= 200 || h.Status == http.StatusSwitchingProtocols {
			resp := c.newResponse(req, h, n)
			return c.attachBody(ctx, resp, reqClose)
		}
		if i == max1xx {
			return nil, c.fail(ctx, "read response", errTooMany1xx)
		}
		_, _ = c.br.Discard(n)
	}
}

// readHead reads until the buffer holds a whole head, parses it into h and
// returns its length; the head stays buffered (h aliases it) until the
// caller discards it. It parses only once an empty line has arrived or
// the limit is reached, so a head trickling in costs linear time.
func (c *clientConn) readHead(lim Limits, h *ResponseHead) (int, error) {
	seen := 0
	for {
		buf, _ := c.br.Peek(c.br.Buffered())
		if len(buf) >= lim.MaxHeadBytes || hasEmptyLine(buf, seen) {
			return ParseResponse(buf, lim, h)
		}
		seen = len(buf)
		if len(buf) == c.br.Size() {
			c.growReader(lim.MaxHeadBytes)
		}
		if _, err := c.br.Peek(len(buf) + 1); err != nil {
			if len(buf) > 0 && errors.Is(err, io.EOF) {
				return 0, io.ErrUnexpectedEOF
			}
			return 0, err
		}
	}
}

// hasEmptyLine reports whether buf holds an LF followed by an empty line
// (CRLF or a bare LF, which the parser refuses); bytes before from were
// looked at already.
func hasEmptyLine(buf []byte, from int) bool {
	i := max(from-2, 0)
	for {
		j := bytes.IndexByte(buf[i:], '\n')
		if j < 0 {
			return false
		}
		i += j + 1
		rest := buf[i:]
		if len(rest) > 0 && rest[0] == '\n' || len(rest) > 1 && rest[0] == '\r' && rest[1] == '\n' {
			return true
		}
	}
}

// growReader gives c a reader big enough for a head of max bytes, the
// bytes already buffered first. Rare: most heads fit connBufSize.
func (c *clientConn) growReader(limit int) {
	if c.br.Size() >= limit {
		return
	}
	old, _ := c.br.Peek(c.br.Buffered())
	c.br = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(bytes.Clone(old)), c.nc), limit)
}

// newResponse builds the response of head h (n bytes, still buffered),
// then discards the head.
func (c *clientConn) newResponse(req *http.Request, h *ResponseHead, n int) *http.Response {
	buf, _ := c.br.Peek(n)
	resp := &http.Response{
		Status:     statusString(h.Status, h.Reason),
		StatusCode: h.Status,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: h.Minor,
		Header:     makeHeader(buf, h),
		Request:    req,
		Close:      h.Close,
	}
	if h.Minor == 0 {
		resp.Proto = "HTTP/1.0"
	}
	// net/http's ContentLength: the declared one for HEAD, 0 for a
	// status without a body, -1 when the body is chunked or runs to close.
	switch {
	case h.ForHEAD:
		resp.ContentLength = h.ContentLength
	case h.NoBody:
		resp.ContentLength = 0
	case h.Chunked:
		resp.ContentLength = -1
		resp.TransferEncoding = []string{"chunked"}
		resp.Trailer = declaredTrailer(h)
	default:
		resp.ContentLength = h.ContentLength
	}
	_, _ = c.br.Discard(n)
	return resp
}

// attachBody gives resp its body and decides c's fate: pooled at once
// when there is no body, at the body's clean end otherwise, the upgraded
// stream after a 101.
func (c *clientConn) attachBody(ctx context.Context, resp *http.Response, reqClose bool) (*http.Response, error) {
	h := &c.head
	keep := !h.Close && !reqClose
	switch {
	case resp.StatusCode == http.StatusSwitchingProtocols:
		if !c.unwatch() {
			_ = c.nc.Close()
			return nil, fmt.Errorf("http1: read response: %w", ctx.Err())
		}
		resp.Body = &upgraded{c: c}
		return resp, nil
	case h.NoBody || (!h.Chunked && h.ContentLength == 0):
		resp.Body = http.NoBody
		c.release(keep)
		return resp, nil
	}
	b := &body{c: c, ctx: ctx, resp: resp, keep: keep, left: h.ContentLength, kind: lengthBody}
	switch {
	case h.Chunked:
		b.kind = chunkedBody
		c.cr.Reset(c.br, c.t.limits().MaxHeadBytes)
	case h.ContentLength < 0:
		b.kind = closeBody // h.Close is set: keep is false
	}
	resp.Body = b
	return resp, nil
}

type bodyKind uint8

const (
	lengthBody  bodyKind = iota // Content-Length bytes
	chunkedBody                 // chunked, trailers after
	closeBody                   // to the connection's close
)

// body states; Close and the Read that reaches the end race for the
// connection, and only the winner of the swap from bodyReading touches it.
const (
	bodyReading int32 = iota
	bodyDone          // ended cleanly, connection released
	bodyClosed        // closed by the caller
)

// body is a response body read from its connection.
type body struct {
	c     *clientConn
	ctx   context.Context
	resp  *http.Response
	kind  bodyKind
	keep  bool  // the connection may serve another exchange after the body
	left  int64 // lengthBody: bytes still to read
	err   error // sticky, once Read failed
	state atomic.Int32
}

func (b *body) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	switch b.state.Load() {
	case bodyDone:
		return 0, io.EOF
	case bodyClosed:
		return 0, errBodyClosed
	}
	n, err := b.read(p)
	switch {
	case errors.Is(err, io.EOF):
		if b.state.CompareAndSwap(bodyReading, bodyDone) {
			b.c.release(b.keep)
		}
		return n, io.EOF
	case err != nil:
		if b.state.CompareAndSwap(bodyReading, bodyClosed) {
			err = b.c.fail(b.ctx, "read response body", err)
		}
		b.err = err
	}
	return n, err
}

func (b *body) read(p []byte) (int, error) {
	br := b.c.br
	switch b.kind {
	case chunkedBody:
		n, err := b.c.cr.Read(p)
		if err == io.EOF {
			b.setTrailer()
		}
		return n, err
	case closeBody:
		return br.Read(p)
	}
	if b.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := br.Read(p)
	b.left -= int64(n)
	if b.left == 0 {
		return n, io.EOF // the end: pool the connection without another Read
	}
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// setTrailer merges the trailer fields into resp.Trailer, as net/http
// does: the declared names are there (nil) from the head on.
func (b *body) setTrailer() {
	tr := b.c.cr.Trailer
	if len(tr) == 0 {
		return
	}
	if b.resp.Trailer == nil {
		b.resp.Trailer = make(http.Header, len(tr))
	}
	for _, f := range tr {
		k := textproto.CanonicalMIMEHeaderKey(string(f.Name))
		b.resp.Trailer[k] = append(b.resp.Trailer[k], string(f.Value))
	}
}

// Close before the end closes the connection: the rest of the body is not
// worth reading to save it.
func (b *body) Close() error {
	if b.state.CompareAndSwap(bodyReading, bodyClosed) {
		b.c.release(false)
		return nil
	}
	b.state.CompareAndSwap(bodyDone, bodyClosed)
	return nil
}

// upgraded is a 101's body: the connection itself, the bytes already
// buffered read first.
type upgraded struct {
	c *clientConn
}

func (u *upgraded) Read(p []byte) (int, error)  { return u.c.br.Read(p) }
func (u *upgraded) Write(p []byte) (int, error) { return u.c.nc.Write(p) }
func (u *upgraded) Close() error                { return u.c.nc.Close() }

// Response head helpers.

// makeHeader builds the header map from h's fields: one string holds all
// their bytes, and one slice all the values, so a response costs a few
// allocations, not two per field. Transfer-Encoding (in TransferEncoding)
// and a chunked response's Trailer (in Trailer) are left out, as net/http
// leaves them. buf is the buffer h was parsed from.
func makeHeader(buf []byte, h *ResponseHead) http.Header {
	hdr := make(http.Header, len(h.Fields))
	if len(h.Fields) == 0 {
		return hdr
	}
	first, last := h.Fields[0], h.Fields[len(h.Fields)-1]
	base := cap(buf) - cap(first.Name)
	s := string(buf[base : cap(buf)-cap(last.Value)+len(last.Value)])
	sub := func(b []byte) string {
		i := cap(buf) - cap(b) - base
		return s[i : i+len(b)]
	}
	vals := make([]string, len(h.Fields))
	for i, f := range h.Fields {
		if equalFold(f.Name, "transfer-encoding") || h.Chunked && equalFold(f.Name, "trailer") {
			continue
		}
		k := textproto.CanonicalMIMEHeaderKey(sub(f.Name))
		vals[i] = sub(f.Value)
		if vv, ok := hdr[k]; ok {
			hdr[k] = append(vv, vals[i])
		} else {
			hdr[k] = vals[i : i+1 : i+1]
		}
	}
	return hdr
}

// declaredTrailer: the names a chunked response's Trailer field announces,
// each with a nil value until the trailer arrives (net/http's shape).
func declaredTrailer(h *ResponseHead) http.Header {
	var tr http.Header
	for _, f := range h.Fields {
		if !equalFold(f.Name, "trailer") {
			continue
		}
		eachElement(f.Value, func(name []byte) bool {
			if tr == nil {
				tr = make(http.Header)
			}
			tr[textproto.CanonicalMIMEHeaderKey(string(name))] = nil
			return true
		})
	}
	return tr
}

// statusString is http.Response.Status: "200 OK"; the common ones
// without allocating.
func statusString(code int, reason []byte) string {
	if string(reason) == http.StatusText(code) {
		switch code {
		case 200:
			return "200 OK"
		case 201:
			return "201 Created"
		case 204:
			return "204 No Content"
		case 301:
			return "301 Moved Permanently"
		case 302:
			return "302 Found"
		case 304:
			return "304 Not Modified"
		case 400:
			return "400 Bad Request"
		case 404:
			return "404 Not Found"
		case 500:
			return "500 Internal Server Error"
		case 502:
			return "502 Bad Gateway"
		case 503:
			return "503 Service Unavailable"
		}
	}
	b := make([]byte, 0, 4+len(reason))
	b = appendInt(b, int64(code))
	b = append(b, ' ')
	return string(append(b, reason...))
}

func isTokenString(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTchar(s[i]) {
			return false
		}
	}
	return true
}

// visibleASCII: no control byte, space or non-ASCII (a target must be
// one token on the request line).
func visibleASCII(b []byte) bool {
	for _, c := range b {
		if c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}

// validHostString: a Host value that cannot split the head or carry a
// path or userinfo.
func validHostString(h string) bool {
	if h == "" {
		return false
	}
	for i := 0; i < len(h); i++ {
		if c := h[i]; c <= ' ' || c >= 0x7f || c == '/' || c == '?' || c == '#' || c == '@' || c == '\\' {
			return false
		}
	}
	return true
}

// isUpgrade: Connection names upgrade and Upgrade is set.
func isUpgrade(h http.Header) bool {
	return len(h["Upgrade"]) > 0 && hasToken(h["Connection"], "upgrade")
}

// hasToken reports whether the comma-separated values hold token
// (lower-case), in any case.
func hasToken(values []string, token string) bool {
	for _, v := range values {
		for v != "" {
			el, rest, _ := strings.Cut(v, ",")
			if strings.EqualFold(textproto.TrimString(el), token) {
				return true
			}
			v = rest
		}
	}
	return false
}
