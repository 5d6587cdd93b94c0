package http1

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

// serveRequest runs the handler on r and finishes its response; false if
// the connection must close after it.
func (sc *serverConn) serveRequest(r *http.Request) bool {
	w := &sc.w
	if w.bodyDone {
		sc.watch.arm()
	}
	if !sc.runHandler(w, r) {
		return false
	}
	if w.hijacked {
		sc.hijacked = true
		return false
	}
	keep := w.finish()
	w.req, w.body, w.bodyRd = nil, nil, nil // an idle connection keeps no request
	sc.spare.release()
	return keep && !sc.watch.gone
}

// runHandler runs the handler; false if it panicked. A handler panics with
// http.ErrAbortHandler to break off a response (the client must see a
// broken stream, not a short one): what was written is flushed without
// the chunked terminator and the connection is closed, as net/http does.
// Any other panic is logged with its stack.
func (sc *serverConn) runHandler(w *response, r *http.Request) (ok bool) {
	defer func() {
		w.seal() // before stop: a late body read must not re-arm the watch
		sc.watch.stop()
		if ok {
			return
		}
		err := recover()
		if w.hijacked {
			sc.hijacked = true // the connection is the handler's
			return
		}
		if err != http.ErrAbortHandler && sc.s.ErrorLog != nil {
			buf := make([]byte, 64<<10)
			buf = buf[:runtime.Stack(buf, false)]
			sc.s.ErrorLog.Printf("http1: panic serving %s: %v\n%s", sc.remote, err, buf)
		}
		_ = sc.bw.Flush()
	}()
	sc.s.Handler.ServeHTTP(w, r)
	return true
}

// response is the handler's http.ResponseWriter, reused by a connection's
// requests.
type response struct {
	sc     *serverConn
	req    *http.Request
	header http.Header
	status int
	// committed: the head is in bw; chunking: the body is framed chunked;
	// until close: it is delimited by closing (an HTTP/1.0 client).
	committed, chunking, untilClose bool
	closeAfter                      bool
	bodyless                        bool  // HEAD, 1xx, 204, 304
	length                          int64 // the declared Content-Length, -1 none
	written                         int64
	pending                         []byte // body before the head is committed
	cw                              ChunkedWriter
	scratch                         []byte
	hijacked                        bool

	// The request body.
	body                 io.ReadCloser
	bodyDone, bodyBroken bool
	expect100, sent100   bool
	gate                 *bodyGate  // body's gate (nil: no body)
	bodyRd               bodyReader // body's own read, for the drain
}

// pendingMax is how much body is held back before the head is written, so
// a short response of unknown length still goes out with a Content-Length
// (as net/http does).
const pendingMax = 4 << 10

func (w *response) reset(sc *serverConn) {
	pending, scratch, cw := w.pending[:0], w.scratch[:0], w.cw
	w.sc, w.req, w.status = sc, nil, 0
	w.committed, w.chunking, w.untilClose, w.closeAfter, w.bodyless = false, false, false, false, false
	w.written, w.pending, w.scratch, w.cw, w.hijacked = 0, pending, scratch, cw, false
	w.body, w.gate, w.bodyRd = nil, nil, nil
	w.bodyDone, w.bodyBroken, w.sent100 = false, false, false
	w.header = nil // made by Header(), or adopted
	w.length = -1
	w.expect100 = sc.head.Expect100
	w.closeAfter = sc.head.Close || sc.head.Minor == 0
}

func (w *response) Header() http.Header {
	if w.header == nil { // shed while idle: only a handler that outlived its request asks now
		w.header = http.Header{}
	}
	return w.header
}

// AdoptHeader makes h the response's header, as if each of its fields
// had been set through Header(), and reports whether it did: not once the
// header has fields or the response began. A proxy passing on an
// upstream's header saves a map and a copy per request; h is the
// response's from then on.
func (w *response) AdoptHeader(h http.Header) bool {
	if w.committed || w.status != 0 || len(w.header) > 0 || w.hijacked {
		return false
	}
	w.header = h
	return true
}

// shed drops what a response keeps for the next one on its connection
// (the header map, the head and body buffers): a connection idle past
// idleHandoff holds none of it.
func (w *response) shed() {
	w.header, w.pending, w.scratch = nil, nil, nil
}

func (w *response) WriteHeader(code int) {
	if w.hijacked || w.status != 0 {
		return
	}
	if code < 100 || code > 999 {
		panic("http1: invalid WriteHeader code " + strconv.Itoa(code))
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		w.writeInterim(code)
		return
	}
	w.status = code
	w.bodyless = w.req.Method == http.MethodHead || code == http.StatusNoContent || code == http.StatusNotModified || code < 200
	if cl := w.header["Content-Length"]; len(cl) == 1 {
		if n, ok := parseLength([]byte(cl[0])); ok {
			w.length = n
		}
	}
}

// writeInterim sends a 1xx response (103 Early Hints) with the header so far.
func (w *response) writeInterim(code int) {
	b := AppendStatusLine(w.scratch[:0], code)
	b = AppendFields(b, w.header)
	b = append(b, '\r', '\n')
	w.scratch = b
	_, _ = w.sc.bw.Write(b)
	_ = w.sc.bw.Flush()
}

func (w *response) Write(p []byte) (int, error) {
	if w.hijacked {
		return 0, http.ErrHijacked
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.bodyless {
		if w.req.Method == http.MethodHead {
			return len(p), nil
		}
		return 0, http.ErrBodyNotAllowed
	}
	if w.length >= 0 && w.written+int64(len(p)) > w.length {
		return 0, http.ErrContentLength
	}
	w.written += int64(len(p))
	if !w.committed {
		if w.length < 0 && len(w.pending)+len(p) <= pendingMax {
			w.pending = append(w.pending, p...)
			return len(p), nil
		}
		w.commit(false)
	}
	return w.bodyWrite(p)
}

func (w *response) WriteString(s string) (int, error) {
	// bufio copies it; the conversion does not escape.
	return w.Write([]byte(s))
}

func (w *response) bodyWrite(p []byte) (int, error) {
	if w.chunking {
		return w.cw.Write(p)
	}
	return w.sc.bw.Write(p)
}

// commit writes the head; final: the handler has returned, so a body of
// unknown length is all in pending.
func (w *response) commit(final bool) {
	if w.committed {
		return
	}
	w.committed = true
	if w.sc.s.draining.Load() {
		w.closeAfter = true
	}
	b := AppendStatusLine(w.scratch[:0], w.status)
	trailers := false
	for k, vv := range w.header {
		switch {
		case strings.HasPrefix(k, http.TrailerPrefix):
			trailers = true
			continue
		case k == "Trailer":
			trailers = true
		case k == "Transfer-Encoding" || k == "Content-Length" && w.length < 0:
			continue
		case k == "Connection":
			if hasToken(vv, "close") {
				w.closeAfter = true
			}
			continue
		}
		if !isToken([]byte(k)) {
			continue
		}
		for _, v := range vv {
			b = append(b, k...)
			b = append(b, ':', ' ')
			b = appendValue(b, v)
			b = append(b, '\r', '\n')
		}
	}
	switch {
	case w.bodyless || w.length >= 0:
	case final && !trailers:
		w.length = int64(len(w.pending))
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, w.length, 10)
		b = append(b, '\r', '\n')
	case w.req.ProtoMinor == 0:
		w.untilClose, w.closeAfter = true, true
	default:
		w.chunking = true
		w.cw.Reset(w.sc.bw)
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
	}
	if w.closeAfter {
		b = append(b, "Connection: close\r\n"...)
	}
	b = append(b, '\r', '\n')
	w.scratch = b
	_, _ = w.sc.bw.Write(b)
	if len(w.pending) > 0 {
		p := w.pending
		w.pending = w.pending[:0]
		_, _ = w.bodyWrite(p)
	}
}

// Flush sends the head and the body so far.
func (w *response) Flush() { _ = w.FlushError() }

func (w *response) FlushError() error {
	if w.hijacked {
		return http.ErrHijacked
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	w.commit(false)
	return w.sc.bw.Flush()
}

// finish ends the response after the handler returned; false if the
// connection cannot carry another request.
func (w *response) finish() bool {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	w.commit(true)
	if w.chunking {
		_ = w.cw.Close(w.trailer())
	}
	err := w.sc.bw.Flush()
	if err != nil || w.closeAfter || w.untilClose {
		return false
	}
	if w.length >= 0 && w.written < w.length && !w.bodyless {
		return false // a short body: the client would wait for the rest
	}
	return w.drainBody()
}

// trailer collects the trailers the handler set: "Trailer:"-declared
// names and TrailerPrefix keys.
func (w *response) trailer() http.Header {
	var t http.Header
	for k, vv := range w.header {
		name, ok := strings.CutPrefix(k, http.TrailerPrefix)
		if !ok {
			continue
		}
		if t == nil {
			t = http.Header{}
		}
		t[http.CanonicalHeaderKey(name)] = vv
	}
	for _, v := range w.header["Trailer"] {
		for _, name := range strings.Split(v, ",") {
			name = http.CanonicalHeaderKey(strings.TrimSpace(name))
			if vv, ok := w.header[name]; ok && name != "" {
				if t == nil {
					t = http.Header{}
				}
				t[name] = vv
			}
		}
	}
	return t
}

// continue100 answers "Expect: 100-continue" when the handler first reads
// the body.
func (w *response) continue100() {
	if w.expect100 && !w.sent100 && !w.committed {
		w.sent100 = true
		_, _ = w.sc.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
		_ = w.sc.bw.Flush()
	}
}

// finishedBody: the request body was read to its end.
func (w *response) finishedBody() {
	if !w.bodyDone {
		w.bodyDone = true
		if !w.gate.sealed { // not the server's own drain after the handler
			w.sc.watch.arm()
		}
	}
}

// Hijack hands the connection to the handler with what is buffered.
func (w *response) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.hijacked {
		return nil, nil, http.ErrHijacked
	}
	if w.committed {
		return nil, nil, errors.New("http1: hijack after the response began")
	}
	w.sc.watch.stop()
	w.hijacked = true
	w.sc.s.state(w.sc.c, http.StateHijacked)
	_ = w.sc.c.SetDeadline(time.Time{})
	return w.sc.c, bufio.NewReadWriter(w.sc.br, w.sc.bw), nil
}

func (w *response) SetReadDeadline(t time.Time) error {
	w.sc.ownDeadline.Store(false)
	return w.sc.c.SetReadDeadline(t)
}
func (w *response) SetWriteDeadline(t time.Time) error { return w.sc.c.SetWriteDeadline(t) }

// EnableFullDuplex: a handler may read the request body after it began
// writing the response; this server always lets it.
func (w *response) EnableFullDuplex() error { return nil }

// watcher notices a client going away while a handler runs, as net/http's
// background read does, but only for handlers that outlive watchDelay: a
// timer per connection, and a read only once it fires.
type watcher struct {
	sc      *serverConn
	t       *time.Timer
	mu      sync.Mutex
	armed   bool
	armedAt time.Time
	// pending: t is set. It is not reset and stopped per request (two
	// timer changes per request, ~1.5% of a sidecar's CPU): a firing
	// finds the watch off, or re-arms for a handler armed since.
	pending bool
	read    chan struct{} // a read in progress; closed when it returns
	gone    bool          // the read failed: the client went away
}

func (wt *watcher) init(sc *serverConn) {
	wt.sc = sc
	wt.t = time.AfterFunc(time.Hour, wt.fire)
	wt.t.Stop()
}

// arm starts watching once the request body has been read.
func (wt *watcher) arm() {
	now := time.Now()
	wt.mu.Lock()
	wt.armed, wt.armedAt = true, now
	start := !wt.pending
	wt.pending = true
	wt.mu.Unlock()
	if start {
		wt.t.Reset(wt.delay())
	}
}

func (wt *watcher) delay() time.Duration {
	if wt.sc.s.watchDelay > 0 {
		return wt.sc.s.watchDelay
	}
	return watchDelay
}

func (wt *watcher) fire() {
	wt.mu.Lock()
	if !wt.armed || wt.read != nil {
		wt.pending = false
		wt.mu.Unlock()
		return
	}
	if rest := wt.delay() - time.Since(wt.armedAt); rest > 0 {
		wt.t.Reset(rest) // armed since the timer was set: not due yet
		wt.mu.Unlock()
		return
	}
	wt.pending = false
	// A long handler is no slow head: lift the server's deadline, under
	// the lock, so stop's deadline (which breaks this read) comes after.
	wt.sc.clearDeadline()
	done := make(chan struct{})
	wt.read = done
	wt.mu.Unlock()
	_, err := wt.sc.br.Peek(1)
	wt.mu.Lock()
	if err != nil && wt.armed {
		wt.gone = true
		wt.sc.cancel()
	}
	wt.mu.Unlock()
	close(done)
}

// stop ends watching, interrupting a read in progress.
func (wt *watcher) stop() {
	wt.mu.Lock()
	wt.armed = false
	read := wt.read
	wt.read = nil
	wt.mu.Unlock()
	if read != nil {
		_ = wt.sc.c.SetReadDeadline(aLongTimeAgo)
		<-read
		_ = wt.sc.c.SetReadDeadline(time.Time{})
	}
}
