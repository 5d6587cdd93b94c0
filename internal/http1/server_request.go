package http1

import (
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"
)

// newRequest builds the handler's request from the parsed head in buf.
// Every string of it (method, target, field names and values) is a
// substring of one copy of the head, so a request costs one allocation
// for its text, one for its header map and one for its value slices.
func (sc *serverConn) newRequest(buf []byte, lim Limits) (*http.Request, *Error) {
	h := sc.head
	text := string(buf)
	sub := func(b []byte) string {
		if len(b) == 0 {
			return ""
		}
		off := int(uintptr(unsafe.Pointer(unsafe.SliceData(b))) - uintptr(unsafe.Pointer(unsafe.SliceData(buf))))
		return text[off : off+len(b)]
	}
	r := sc.spare.take()
	*r = *sc.base // keeps the connection's context
	r.Method = method(h.Method, sub)
	r.RequestURI = sub(h.Target)
	u, err := sc.spare.url(r.Method, r.RequestURI)
	if err != nil {
		return nil, errTarget
	}
	r.URL = u
	r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/1.1", 1, h.Minor
	if h.Minor == 0 {
		r.Proto = "HTTP/1.0"
	}
	r.Header = sc.spare.header(h.Fields, sub)
	delete(r.Header, "Host") // it is r.Host, as net/http has it
	r.Host = sub(h.Host)
	r.Close = h.Close
	r.RemoteAddr = sc.remote
	r.TLS = sc.tls
	sc.w.req = r
	sc.body(r)
	return r, nil
}

// method returns the well-known methods without allocating.
func method(m []byte, sub func([]byte) string) string {
	switch string(m) {
	case http.MethodGet:
		return http.MethodGet
	case http.MethodPost:
		return http.MethodPost
	case http.MethodPut:
		return http.MethodPut
	case http.MethodHead:
		return http.MethodHead
	case http.MethodDelete:
		return http.MethodDelete
	case http.MethodPatch:
		return http.MethodPatch
	case http.MethodOptions:
		return http.MethodOptions
	case http.MethodConnect:
		return http.MethodConnect
	}
	return sub(m)
}

// requestURL parses a target as net/http does: a CONNECT's authority form
// is a URL of just a host.
func requestURL(method, target string) (*url.URL, error) {
	if method == http.MethodConnect && !strings.HasPrefix(target, "/") {
		u, err := url.ParseRequestURI("http://" + target)
		if err != nil {
			return nil, err
		}
		u.Scheme = ""
		return u, nil
	}
	return url.ParseRequestURI(target)
}

// spareRequest is what a connection's finished request leaves for the
// next one (serverConn.spare). The strings are never reused: the header's
// values may outlive the request (a metric's label, a log line).
type spareRequest struct {
	free bool // the request below is done with
	r    *http.Request
	u    *url.URL
	hdr  http.Header
	vals []string
}

// take returns the spare request if it is free, else a new one; either
// way it is the spare from now, not free until release.
func (sp *spareRequest) take() *http.Request {
	if !sp.free || sp.r == nil {
		sp.r, sp.u, sp.hdr, sp.vals = new(http.Request), nil, nil, nil
	}
	sp.free = false
	return sp.r
}

// url is the request's URL: for a plain origin-form target (plainTarget)
// the spare URL split at '?', which is what url.ParseRequestURI makes of
// it (FuzzPlainTarget); else ParseRequestURI's.
func (sp *spareRequest) url(method, target string) (*url.URL, error) {
	path, query, ok := plainTarget(target)
	if !ok {
		return requestURL(method, target)
	}
	if sp.u == nil {
		sp.u = new(url.URL)
	}
	*sp.u = url.URL{Path: path, RawQuery: query}
	return sp.u, nil
}

// plainTarget splits an origin-form target whose path holds only
// characters url.URL keeps as they are (no escapes: its Path is its text,
// RawPath empty) at its first '?'; false for anything else, for an empty
// query after '?' (ForceQuery) and for a control byte (refused).
func plainTarget(t string) (path, query string, ok bool) {
	if t == "" || t[0] != '/' {
		return "", "", false
	}
	path, query, hasQuery := strings.Cut(t, "?")
	if hasQuery && query == "" {
		return "", "", false
	}
	for i := 0; i < len(path); i++ {
		if !plainPathByte(path[i]) {
			return "", "", false
		}
	}
	for i := 0; i < len(query); i++ {
		if c := query[i]; c < 0x20 || c == 0x7f { // net/url refuses controls
			return "", "", false
		}
	}
	return path, query, true
}

// plainPathByte: a byte url.URL neither unescapes nor escapes in a path:
// RFC 3986's unreserved characters and the reserved ones net/url leaves in
// paths (it escapes the sub-delimiters ! ' ( ) *).
func plainPathByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '-', '_', '.', '~', '$', '&', '+', ',', '/', ':', ';', '=', '@':
		return true
	}
	return false
}

// release marks the spare free: its handler returned and the response
// is finished.
func (sp *spareRequest) release() { sp.free = true }

// header builds the request's canonical header map of fields in the
// spare map and value slice when take found them free.
func (sp *spareRequest) header(fields []Field, sub func([]byte) string) http.Header {
	if sp.hdr == nil || cap(sp.vals) < len(fields) {
		sp.hdr, sp.vals = header(fields, sub, nil, nil)
		return sp.hdr
	}
	clear(sp.hdr)
	sp.hdr, sp.vals = header(fields, sub, sp.hdr, sp.vals[:len(fields)])
	return sp.hdr
}

// header builds the canonical header map of fields, into h and vals
// (len(fields) long) when given.
func header(fields []Field, sub func([]byte) string, h http.Header, vals []string) (http.Header, []string) {
	if h == nil {
		h = make(http.Header, len(fields))
		vals = make([]string, len(fields))
	}
	for i, f := range fields {
		k := canonicalKey(f.Name, sub)
		vals[i] = sub(f.Value)
		if vv, ok := h[k]; ok {
			h[k] = append(vv, vals[i])
			continue
		}
		h[k] = vals[i : i+1 : i+1]
	}
	return h, vals
}

// canonicalKey is textproto's canonical form of a field name, taken from
// the head's own text when the client sent it canonical already.
func canonicalKey(name []byte, sub func([]byte) string) string {
	if isCanonical(name) {
		return sub(name)
	}
	return textproto.CanonicalMIMEHeaderKey(string(name))
}

// isCanonical: each dash-separated word capitalised, the rest lower case,
// and only token characters (textproto leaves other names unchanged).
func isCanonical(name []byte) bool {
	upper := true
	for _, c := range name {
		switch {
		case upper && 'a' <= c && c <= 'z':
			return false
		case !upper && 'A' <= c && c <= 'Z':
			return false
		}
		upper = c == '-'
	}
	return true
}

// body sets r's body and framing from the head.
func (sc *serverConn) body(r *http.Request) {
	h := sc.head
	switch {
	case h.Chunked:
		r.ContentLength = -1
		r.TransferEncoding = chunkedTE
		delete(r.Header, "Transfer-Encoding") // it is r.TransferEncoding, as net/http has it
		r.Trailer = requestTrailer(r.Header)
		b := &chunkedReqBody{bodyState: bodyState{sc: sc}, req: r}
		b.r.Reset(sc.br, sc.s.MaxTrailerBytes)
		sc.w.body, sc.w.gate, sc.w.bodyRd = b, &b.gate, b
		r.Body = b
	case h.ContentLength > 0:
		r.ContentLength = h.ContentLength
		// A body of its own per request: a reader the handler left
		// behind must find its own request sealed, never the next one's.
		b := &fixedBody{bodyState: bodyState{sc: sc}, left: h.ContentLength}
		sc.w.body, sc.w.gate, sc.w.bodyRd = b, &b.gate, b
		r.Body = b
	default:
		r.ContentLength = 0
		r.Body = http.NoBody
		sc.w.bodyDone = true
	}
}

var chunkedTE = []string{"chunked"}

// requestTrailer is the Trailer map of a chunked request: the names its
// Trailer field declares, with no values yet (net/http's convention); the
// field itself leaves the header. The parser refused framing names.
func requestTrailer(h http.Header) http.Header {
	t := http.Header{}
	for _, v := range h["Trailer"] {
		for _, name := range strings.Split(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				t[textproto.CanonicalMIMEHeaderKey(name)] = nil
			}
		}
	}
	delete(h, "Trailer")
	return t
}

// bodyState is what both request bodies share: the connection, the gate
// every read and close holds, and the handler's Close.
type bodyState struct {
	sc     *serverConn
	gate   bodyGate
	closed bool
}

func (b *bodyState) Close() error {
	if b.gate.lock() {
		b.closed = true
		b.gate.unlock()
	}
	return nil
}

func (b *bodyState) reopen() { b.closed = false }

// fixedBody reads a Content-Length body.
type fixedBody struct {
	bodyState
	left int64
}

func (b *fixedBody) Read(p []byte) (int, error) {
	if !b.gate.lock() {
		return 0, http.ErrBodyReadAfterClose
	}
	defer b.gate.unlock()
	return b.read(p)
}

func (b *fixedBody) read(p []byte) (int, error) {
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	if b.left == 0 {
		return 0, io.EOF
	}
	b.sc.clearDeadline()
	b.sc.w.continue100()
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.sc.br.Read(p)
	b.left -= int64(n)
	switch {
	case b.left == 0:
		b.sc.w.finishedBody()
		return n, io.EOF
	case err == io.EOF:
		b.sc.w.bodyBroken = true
		return n, io.ErrUnexpectedEOF
	case err != nil:
		b.sc.w.bodyBroken = true
	}
	return n, err
}

// Buffered is how much of the body can be read without waiting.
func (b *fixedBody) Buffered() int {
	if !b.gate.lock() {
		return 0
	}
	defer b.gate.unlock()
	return int(min(int64(b.sc.br.Buffered()), b.left))
}

// chunkedReqBody reads a chunked body, moving its trailers into the
// request's Trailer at the end.
type chunkedReqBody struct {
	bodyState
	req   *http.Request
	r     ChunkedReader
	ended bool
}

func (b *chunkedReqBody) Read(p []byte) (int, error) {
	if !b.gate.lock() {
		return 0, http.ErrBodyReadAfterClose
	}
	defer b.gate.unlock()
	return b.read(p)
}

func (b *chunkedReqBody) read(p []byte) (int, error) {
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	if b.ended {
		return 0, io.EOF
	}
	b.sc.clearDeadline()
	b.sc.w.continue100()
	n, err := b.r.Read(p)
	switch {
	case err == io.EOF:
		b.ended = true
		for _, f := range b.r.Trailer {
			k := textproto.CanonicalMIMEHeaderKey(string(f.Name))
			b.req.Trailer[k] = append(b.req.Trailer[k], string(f.Value))
		}
		b.sc.w.finishedBody()
	case err != nil:
		b.sc.w.bodyBroken = true
		if he, ok := err.(*Error); ok && b.sc.s.Refused != nil {
			b.sc.s.Refused(he)
		}
	}
	return n, err
}

// Buffered is how many bytes of chunked encoding are already read: a
// chunk (or its start) can be read without waiting when it is not 0.
func (b *chunkedReqBody) Buffered() int {
	if !b.gate.lock() {
		return 0
	}
	defer b.gate.unlock()
	if b.ended {
		return 0
	}
	return b.sc.br.Buffered()
}

// discardLimit is how much of an unread body the server reads to keep the
// connection (net/http reads up to 256 KiB).
const discardLimit = 256 << 10

// drainBody reads what is left of the request body, up to discardLimit;
// false if the connection cannot carry another request.
func (w *response) drainBody() bool {
	switch {
	case w.bodyDone:
		return true
	case w.bodyBroken || w.body == nil:
		return false
	case w.expect100 && !w.sent100:
		return false // the client has not sent it: closing is cheaper
	}
	w.bodyRd.reopen()
	n, err := io.CopyN(io.Discard, drainReader{w.bodyRd}, discardLimit+1)
	return err == io.EOF && n <= discardLimit
}

// bodyReader is a request body's own read, past its gate: the server's
// drain after the handler returned.
type bodyReader interface {
	read([]byte) (int, error)
	reopen() // undo the handler's Close, for the drain
}

type drainReader struct{ b bodyReader }

func (d drainReader) Read(p []byte) (int, error) { return d.b.read(p) }

// bodyGate guards one request body: each read or close holds it, and it
// is sealed when the handler returns (a request body is the handler's only
// while it runs, as with net/http, whatever goroutines it left reading).
type bodyGate struct {
	mu      sync.Mutex
	sealed  bool
	reading atomic.Bool // a read holds mu (it may be blocked on the conn)
}

// lock takes the gate for one read or close; false once sealed.
func (g *bodyGate) lock() bool {
	g.mu.Lock()
	if g.sealed {
		g.mu.Unlock()
		return false
	}
	g.reading.Store(true)
	return true
}

func (g *bodyGate) unlock() {
	g.reading.Store(false)
	g.mu.Unlock()
}

// seal ends the handler's hold on the body, breaking off a read some
// goroutine of it still has blocked on the connection.
func (w *response) seal() {
	if w.gate == nil {
		return
	}
	broke := w.gate.reading.Load()
	if broke {
		_ = w.sc.c.SetReadDeadline(aLongTimeAgo)
	}
	w.gate.mu.Lock()
	w.gate.sealed = true
	w.gate.mu.Unlock()
	if broke {
		w.sc.ownDeadline.Store(true) // the next wait sets its own
	}
}
