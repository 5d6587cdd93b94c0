package http1

import (
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// FuzzServerDifferential serves one connection's worth of client bytes
// (pipelined requests, bodies, garbage) to Server and to net/http's
// server with the same recording handler, and holds Server to what the
// package promises: every request it hands its handler with a completed
// body, net/http hands over too, at the same position, with the same
// fields. Server may refuse more and stop earlier; where it delivers, it
// agrees. It also never delivers a request after one it refused, nor more
// requests than the input has heads, and a body it fails to read while
// net/http reads it whole is one it refused (Refused), not bytes lost.
//
// split, taken modulo len(data)+1, cuts the input into two writes (none
// when 0 or the end), so that a request's head, body or chunk may arrive
// after the server began on what came before: the server's reads end at
// the cut.
func FuzzServerDifferential(f *testing.F) {
	for _, s := range serverDiffSeeds() {
		f.Add([]byte(s), uint16(0))
		// Cut after the first head: its body comes in a read of its own.
		if i := strings.Index(s, "\r\n\r\n"); i > 0 && i+4 < len(s) {
			f.Add([]byte(s), uint16(i+4))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, split uint16) {
		k := int(split) % (len(data) + 1)
		if err := serverDifferential(data, k); err != nil {
			t.Fatalf("%v\ninput: %q cut at %d", err, data, k)
		}
	})
}

// serverDiffSeeds: the framing table of server_test.go, FuzzDifferential's
// seeds, pipelined pairs and bodies of both framings.
func serverDiffSeeds() []string {
	var seeds []string
	for _, tc := range framingCases {
		seeds = append(seeds, tc.raw)
	}
	// FuzzDifferential's seeds (its list lives inside that function).
	seeds = append(seeds,
		"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /a/b?c=d HTTP/1.1\r\nHost: orders.default\r\nUser-Agent: x\r\nAccept: */*\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
		"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: h\r\nTrailer: X-T\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
		"GET http://h:1/x?y HTTP/1.1\r\nHost: h:1\r\n\r\n",
		"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: [::1]:8080\r\nPragma: no-cache\r\nX_A: b\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
	)
	// Pipelined pairs and bodies.
	seeds = append(seeds,
		"GET /a?x=1 HTTP/1.1\r\nHost: h\r\nAccept: a\r\nAccept: b\r\n\r\nHEAD /b HTTP/1.1\r\nHost: h\r\n\r\n",
		"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcPUT /b HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
		"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum, X-Absent\r\n\r\n3\r\nabc\r\n2;ext\r\nde\r\n0\r\nX-Sum: 5\r\nX-Sum: 6\r\n\r\nGET /c HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\nGET /never HTTP/1.0\r\n\r\n",
		"GET / HTTP/1.0\r\nConnection: keep-alive\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nshort",
		"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
		"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
		"GET /%41%2f?q=%zz#frag HTTP/1.1\r\nHost: h\r\n\r\n",
		"\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
		"garbage\r\n\r\n",
		// Shapes on which the two servers' rules could part.
		"GET / HTTP/1.1\r\nHost:\r\n\r\n",
		"get /lower HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET * HTTP/1.1\r\nHost: h\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 05\r\n\r\nhello",
		"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello",
		"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nContent-Length: 5\r\nHost: x\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: h\r\nTrailer: Content-Length\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: h\r\nTrailer: X-T\r\nContent-Length: 1\r\n\r\nx",
		"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
		"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
		"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\nx",
		"GET / HTTP/1.1\r\nHost: h\r\nX: a\x7fb\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h\r\nX: a\x80\xffb\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h:\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n",
		"GET //x/../y/%2e%2e/?a=1&a=2;b HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET http://h/p HTTP/1.1\r\nHost: h\r\n\r\nGET https://h:443/q HTTP/1.1\r\nHost: h:443\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, close\r\n\r\nGET /never HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
		// A head over the server's 4 KiB read buffer, then a body and a
		// pipelined request.
		"POST /big HTTP/1.1\r\nHost: h\r\nX-Big: "+strings.Repeat("b", 5000)+"\r\nContent-Length: 3\r\n\r\nxyzGET /2 HTTP/1.1\r\nHost: h\r\n\r\n",
		// A chunk that breaks mid-body: the request after it is smuggled.
		"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5z\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
	)
	return seeds
}

// seen is what the handler records of one request.
type seen struct {
	method, requestURI, host, path, rawPath, rawQuery string
	minor                                             int
	header                                            http.Header
	contentLength                                     int64
	te                                                []string
	complete                                          bool // the body read to EOF
	body                                              string
	trailer                                           http.Header // after the body
}

// event is one entry of a server's log: a request handed over, or a
// refusal (Server's Refused hook).
type event struct {
	req     *seen
	refused string
}

// eventLog is a server's ordered record of one connection.
type eventLog struct {
	mu     sync.Mutex
	events []event
}

func (l *eventLog) add(e event) {
	l.mu.Lock()
	l.events = append(l.events, e)
	l.mu.Unlock()
}

func (l *eventLog) snapshot() []event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.events)
}

// ServeHTTP records r and reads its body to the end; it answers nothing,
// so both servers send an empty 200.
func (l *eventLog) ServeHTTP(_ http.ResponseWriter, r *http.Request) {
	s := &seen{
		method: r.Method, requestURI: r.RequestURI, host: r.Host,
		path: r.URL.Path, rawPath: r.URL.RawPath, rawQuery: r.URL.RawQuery, minor: r.ProtoMinor,
		header: r.Header.Clone(), contentLength: r.ContentLength,
		te: slices.Clone(r.TransferEncoding),
	}
	// Logged before the body is read: a refusal of the body (Refused)
	// comes after its request, and before any request that follows.
	l.add(event{req: s})
	b, err := io.ReadAll(r.Body)
	l.mu.Lock()
	s.body, s.complete = string(b), err == nil
	s.trailer = r.Trailer.Clone()
	l.mu.Unlock()
}

// serverDifferential serves data to both servers and checks Server's log
// against net/http's.
func serverDifferential(data []byte, split int) error {
	var ours, theirs eventLog
	s := &Server{
		Handler:           &ours,
		ReadHeaderTimeout: time.Second,
		IdleTimeout:       time.Second,
		Refused:           func(e *Error) { ours.add(event{refused: e.Error()}) },
	}
	c, done := feed(data, split)
	if !s.ServeConn(c) {
		return errors.New("http1: fuzz: ServeConn refused a connection")
	}
	ended := waitEnd(done)
	_ = s.Close()
	if ended != nil {
		return fmt.Errorf("http1: fuzz: Server: %w", ended)
	}

	hs := &http.Server{
		Handler:           &theirs,
		ReadHeaderTimeout: time.Second,
		IdleTimeout:       time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
		// net/http answers OPTIONS * itself by default; Server hands it
		// to the handler, as net/http does with this set.
		DisableGeneralOptionsHandler: true,
	}
	c, done = feed(data, split)
	ln := &oneConnListener{c: c, closed: make(chan struct{})}
	go func() { _ = hs.Serve(ln) }()
	ended = waitEnd(done)
	_ = hs.Close()
	if ended != nil {
		return fmt.Errorf("http1: fuzz: net/http: %w", ended)
	}
	return compareLogs(data, ours.snapshot(), theirs.snapshot())
}

// endWithin bounds how long a server may keep a connection whose client
// sent everything and half-closed: its timeouts are a second.
const endWithin = 5 * time.Second

// waitEnd waits for the server to close the connection done watches.
func waitEnd(done <-chan struct{}) error {
	t := time.NewTimer(endWithin)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-t.C:
		return fmt.Errorf("connection still open %v after the client's last byte", endWithin)
	}
}

// compareLogs checks the three promises on the two servers' logs.
func compareLogs(data []byte, ours, theirs []event) error {
	var want []*seen
	for _, e := range theirs {
		want = append(want, e.req)
	}
	delivered, refusedAt := 0, -1
	for i, e := range ours {
		if e.req == nil {
			if refusedAt < 0 {
				refusedAt = i
			}
			continue
		}
		if refusedAt >= 0 {
			return fmt.Errorf("http1: fuzz: request %d (%s %q) delivered after a refusal (%s)", delivered, e.req.method, e.req.requestURI, ours[refusedAt].refused)
		}
		if !e.req.complete && delivered < len(want) && want[delivered].complete && !refusedAfter(ours, i) {
			// A refused body is Refused's; a read that fails otherwise
			// while net/http's completes lost bytes of the stream.
			return fmt.Errorf("http1: fuzz: request %d (%s %q): body read failed after %q with no refusal; net/http read %q",
				delivered, e.req.method, e.req.requestURI, e.req.body, want[delivered].body)
		}
		if e.req.complete {
			if delivered >= len(want) {
				return fmt.Errorf("http1: fuzz: request %d (%s %q) delivered; net/http delivered only %d", delivered, e.req.method, e.req.requestURI, len(want))
			}
			if err := compareSeen(e.req, want[delivered]); err != nil {
				return fmt.Errorf("http1: fuzz: request %d: %w", delivered, err)
			}
		}
		delivered++
	}
	// Each head ends in its own CRLFCRLF: Count's non-overlapping
	// occurrences bound how many requests the input holds.
	if heads := strings.Count(string(data), "\r\n\r\n"); delivered > heads {
		return fmt.Errorf("http1: fuzz: %d requests delivered from an input with %d heads", delivered, heads)
	}
	return nil
}

// refusedAfter: some refusal follows event i.
func refusedAfter(events []event, i int) bool {
	return slices.ContainsFunc(events[i+1:], func(e event) bool { return e.req == nil })
}

// TestServerDifferentialExpect: the disagreement the fuzzer found first,
// now gone: an Expect other than 100-continue is 417 from both servers,
// the handler never called.
func TestServerDifferentialExpect(t *testing.T) {
	for _, raw := range []string{
		"0 / HTTP/1.0\r\n0000:0\r\nEXpeCt:0\r\n\r\n0",
		"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continuex\r\nContent-Length: 1\r\n\r\nx",
	} {
		if err := serverDifferential([]byte(raw), 0); err != nil {
			t.Errorf("%q: %v", raw, err)
		}
	}
}

// compareSeen compares what Server's handler saw (got) with net/http's
// (want), after the documented, intended differences are normalised.
func compareSeen(got, want *seen) error {
	if !want.complete {
		return fmt.Errorf("body %q completed here, net/http's read failed after %q", got.body, want.body)
	}
	if want.minor > 1 {
		want.minor = 1 // a later HTTP/1.x is served as 1.1 here (RFC 9110 §6.2)
	}
	type pair struct {
		name      string
		got, want any
	}
	for _, p := range []pair{
		{"method", got.method, want.method},
		{"RequestURI", got.requestURI, want.requestURI},
		{"Host", got.host, want.host},
		{"URL.Path", got.path, want.path},
		{"URL.RawPath", got.rawPath, want.rawPath},
		{"URL.RawQuery", got.rawQuery, want.rawQuery},
		{"ProtoMinor", got.minor, want.minor},
		{"ContentLength", got.contentLength, want.contentLength},
		{"body", got.body, want.body},
	} {
		if p.got != p.want {
			return fmt.Errorf("%s: %#v here, %#v by net/http", p.name, p.got, p.want)
		}
	}
	if !slices.Equal(got.te, want.te) {
		return fmt.Errorf("TransferEncoding: %q here, %q by net/http", got.te, want.te)
	}
	if err := compareHeader("header", got.header, netHTTPHeader(want.header, got.header)); err != nil {
		return err
	}
	return compareHeader("trailer", got.trailer, want.trailer)
}

// netHTTPHeader undoes what net/http adds to a request's header that
// Server, on purpose, does not: Cache-Control: no-cache for a lone
// Pragma: no-cache (an HTTP/1.0 cache rule net/http applies to servers as
// well; a handler that wants it can read Pragma).
func netHTTPHeader(want, got http.Header) http.Header {
	want = want.Clone()
	if _, ok := want["Pragma"]; ok {
		if _, sent := got["Cache-Control"]; !sent {
			delete(want, "Cache-Control")
		}
	}
	return want
}

// compareHeader compares two maps as a handler would read them: a nil
// map and an empty one are the same.
func compareHeader(what string, got, want http.Header) error {
	for k, v := range want {
		if gv, ok := got[k]; !ok || !slices.Equal(gv, v) {
			return fmt.Errorf("%s %s: %q here, %q by net/http", what, k, gv, v)
		}
	}
	for k, v := range got {
		if _, ok := want[k]; !ok {
			return fmt.Errorf("%s %s: %q here, absent by net/http", what, k, v)
		}
	}
	return nil
}

// feed returns a server's end of a connection on which a client writes
// data, in two writes cut at split, and then closes its sending side, and a channel closed once the
// client has read everything the server sent until it closed. The two
// directions are separate pipes so that the client's half-close reads as
// EOF to the server while its answers still flow; net.Pipe gives both the
// deadlines the servers set.
func feed(data []byte, split int) (net.Conn, <-chan struct{}) {
	inC, inS := net.Pipe()
	outS, outC := net.Pipe()
	done := make(chan struct{})
	go func() {
		// net.Pipe hands each Write to reads of its own: a cut is a
		// read boundary on the server's side.
		parts := [][]byte{data}
		if 0 < split && split < len(data) {
			parts = [][]byte{data[:split], data[split:]}
		}
		for _, p := range parts {
			if _, err := inC.Write(p); err != nil {
				break // the server closed
			}
		}
		_ = inC.Close()
	}()
	go func() {
		defer close(done)
		_, _ = io.Copy(io.Discard, outC)
		_ = outC.Close()
	}()
	return &splitConn{in: inS, out: outS}, done
}

// splitConn reads from one pipe and writes to another.
type splitConn struct{ in, out net.Conn }

func (c *splitConn) Read(p []byte) (int, error)  { return c.in.Read(p) }
func (c *splitConn) Write(p []byte) (int, error) { return c.out.Write(p) }
func (c *splitConn) LocalAddr() net.Addr         { return c.in.LocalAddr() }
func (c *splitConn) RemoteAddr() net.Addr        { return c.in.RemoteAddr() }

func (c *splitConn) Close() error {
	return errors.Join(c.in.Close(), c.out.Close())
}

func (c *splitConn) SetDeadline(t time.Time) error {
	return errors.Join(c.in.SetReadDeadline(t), c.out.SetWriteDeadline(t))
}

func (c *splitConn) SetReadDeadline(t time.Time) error  { return c.in.SetReadDeadline(t) }
func (c *splitConn) SetWriteDeadline(t time.Time) error { return c.out.SetWriteDeadline(t) }

// oneConnListener hands out one connection, then waits to be closed.
type oneConnListener struct {
	mu     sync.Mutex
	c      net.Conn
	closed chan struct{}
	once   sync.Once
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	c := l.c
	l.c = nil
	l.mu.Unlock()
	if c != nil {
		return c, nil
	}
	<-l.closed
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }
