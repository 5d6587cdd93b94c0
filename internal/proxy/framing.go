package proxy

import (
	"context"
	"net"
	"net/http"
	"sync/atomic"

	"trellis.dev/trellis/internal/telemetry"
)

// HTTP/1.1 framing checks on the listeners apps (and plaintext callers)
// talk to. net/http answers a request that has both Content-Length and
// Transfer-Encoding (it drops Content-Length and keeps the connection), so
// a front proxy that framed by Content-Length would be desynchronised from
// this one (RFC 9112 §6.1, §11.2). By the time a handler runs, the header
// net/http hands over no longer shows it. framedConn therefore follows the
// byte stream as net/http reads it — heads, Content-Length bodies, chunked
// bodies and their trailers — and marks the connection bad at the first
// ambiguous framing; the listener edge then answers 400 and closes it.
// Scanning is a byte loop over what was read anyway; it allocates nothing.

type framingState uint8

const (
	fsHead      framingState = iota // request line and header lines
	fsBody                          // remaining Content-Length bytes
	fsChunkSize                     // a chunk-size line
	fsChunkData                     // chunk bytes
	fsChunkCRLF                     // the CRLF after chunk data
	fsTrailer                       // trailer lines after the last chunk
	fsPass                          // not HTTP/1.1 framing any more (upgrade, CONNECT, h2c, bad)
)

// Which header a head line names, from its first bytes.
const (
	hdrOther uint8 = iota
	hdrContentLength
	hdrTransferEncoding
	hdrUpgrade
)

// framing is the scanner's state; framedConn feeds it. Only the goroutine
// net/http reads the connection with touches it (net/http serialises its
// reads).
type framing struct {
	st  framingState
	bad bool
	// maxHead is the head size over which net/http itself answers 431
	// (its MaxHeaderBytes plus its 4 KiB slack); tooLarge records it.
	maxHead, headBytes int
	tooLarge           bool
	n                  uint64 // fsBody, fsChunkData: bytes left; fsChunkCRLF: bytes seen
	line               lineScan
	head               headState
}

// headState is what the head being read says about its body.
type headState struct {
	firstLine        bool // the next line is the request line
	clCount          int
	cl               uint64
	clBad            bool
	te, teChunked    bool
	upgrade, connect bool
	http10, pri      bool
}

// lineScan follows one line: its length, the header name it starts with
// (compared as it arrives, case-insensitively), the value's digits.
type lineScan struct {
	n        int  // bytes in the line so far (without LF)
	cr       bool // the last byte was CR
	fold     bool // the line starts with SP or HT (obs-fold)
	colon    bool // the name has ended
	name     [20]byte
	nameLen  int
	value    [16]byte // the first value bytes, spaces trimmed at the start
	valueLen int
	valueAll int // value bytes after leading spaces
	reqLine  [16]byte
	tail     uint64 // the last 8 bytes, CR excluded
	hexLead  int    // leading hex digits (a chunk size's length)
	hexDone  bool
}

func newFraming() *framing { return &framing{head: headState{firstLine: true}} }

// scan follows b. Once bad it stops looking: the connection is refused.
func (f *framing) scan(b []byte) {
	for len(b) > 0 && f.st != fsPass {
		switch f.st {
		case fsBody, fsChunkData:
			k := uint64(len(b))
			if k > f.n {
				k = f.n
			}
			f.n -= k
			b = b[k:]
			if f.n == 0 {
				if f.st == fsBody {
					f.startHead()
				} else {
					f.st, f.n = fsChunkCRLF, 0
				}
			}
		case fsChunkCRLF:
			c := b[0]
			b = b[1:]
			if (f.n == 0 && c != '\r') || (f.n == 1 && c != '\n') {
				f.fail()
				return
			}
			f.n++
			if f.n == 2 {
				f.st = fsChunkSize
				f.line = lineScan{}
			}
		default: // line-oriented states
			i := 0
			for ; i < len(b); i++ {
				if b[i] == '\n' {
					break
				}
				f.line.add(b[i])
			}
			if f.st == fsHead && f.maxHead > 0 {
				if f.headBytes += i + 1; f.headBytes > f.maxHead {
					f.tooLarge, f.st = true, fsPass
					return
				}
			}
			b = b[i:]
			if len(b) == 0 {
				return
			}
			b = b[1:] // the LF
			f.endLine()
		}
	}
}

func (f *framing) fail() {
	f.bad = true
	f.st = fsPass
}

func (f *framing) startHead() {
	f.st, f.n, f.headBytes = fsHead, 0, 0
	f.line = lineScan{}
	f.head = headState{firstLine: true}
}

func (l *lineScan) add(c byte) {
	if l.n == 0 && (c == ' ' || c == '\t') {
		l.fold = true
	}
	if l.n < len(l.reqLine) {
		l.reqLine[l.n] = c
	}
	l.n++
	l.cr = c == '\r'
	if c == '\r' {
		return
	}
	l.tail = l.tail<<8 | uint64(c)
	if !l.hexDone {
		if isHex(c) {
			l.hexLead++
		} else {
			l.hexDone = true
		}
	}
	if !l.colon {
		if c == ':' {
			l.colon = true
			return
		}
		if l.nameLen < len(l.name) {
			l.name[l.nameLen] = lowerByte(c)
		}
		l.nameLen++
		return
	}
	if l.valueAll == 0 && (c == ' ' || c == '\t') {
		return
	}
	if l.valueLen < len(l.value) {
		l.value[l.valueLen] = c
		l.valueLen++
	}
	l.valueAll++
}

func lowerByte(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// endLine acts on a complete line in a line-oriented state.
func (f *framing) endLine() {
	l := &f.line
	n := l.n
	if l.cr {
		n--
	} else if f.st == fsChunkSize || f.st == fsTrailer {
		// net/http refuses a bare LF in chunked framing; so does this.
		f.fail()
		return
	}
	switch f.st {
	case fsHead:
		f.headLine(n)
	case fsChunkSize:
		f.chunkSizeLine()
	case fsTrailer:
		if n == 0 {
			f.startHead()
			return
		}
		if l.fold {
			f.fail()
			return
		}
	}
	if f.st != fsPass && f.st != fsBody && f.st != fsChunkData && f.st != fsChunkCRLF {
		f.line = lineScan{}
	}
}

func (f *framing) headLine(n int) {
	l, h := &f.line, &f.head
	switch {
	case n == 0 && h.firstLine:
		return // an empty line before the request line is ignored
	case n == 0:
		f.endHead()
		return
	case h.firstLine:
		h.firstLine = false
		r := l.reqLine[:min(n, len(l.reqLine))]
		h.connect = len(r) >= 8 && string(r[:8]) == "CONNECT "
		h.pri = len(r) >= 4 && string(r[:4]) == "PRI "
		h.http10 = l.tail == http10Tail
		return
	case l.fold:
		f.fail() // obs-fold (RFC 9112 §5.2): refused, not unfolded
		return
	}
	switch l.header() {
	case hdrContentLength:
		h.clCount++
		v, ok := l.decimal()
		h.cl, h.clBad = v, h.clBad || !ok
	case hdrTransferEncoding:
		h.te = true
		v, ok := l.trimmedValue()
		h.teChunked = ok && equalFold(v, "chunked")
	case hdrUpgrade:
		h.upgrade = true
	}
}

// http10Tail is "HTTP/1.0" as lineScan.tail holds it.
const http10Tail = uint64('H')<<56 | uint64('T')<<48 | uint64('T')<<40 | uint64('P')<<32 |
	uint64('/')<<24 | uint64('1')<<16 | uint64('.')<<8 | uint64('0')

// endHead decides how the body is framed, refusing what is ambiguous.
func (f *framing) endHead() {
	h := &f.head
	switch {
	case h.te && h.clCount > 0, h.clCount > 1, h.clBad,
		h.te && (!h.teChunked || h.http10):
		f.fail()
	case h.connect || h.upgrade || h.pri:
		f.st = fsPass // opaque bytes follow, or HTTP/2
	case h.te:
		f.st = fsChunkSize
		f.line = lineScan{}
	case h.cl > 0:
		f.st, f.n = fsBody, h.cl
	default:
		f.startHead()
	}
}

func (f *framing) chunkSizeLine() {
	l := &f.line
	// The size is the line up to ';' or whitespace: hex, at most 16 digits.
	var size uint64
	digits := 0
	for i := 0; i < min(l.n, len(l.reqLine)); i++ {
		c := l.reqLine[i]
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		case c == ';' || c == ' ' || c == '\t' || c == '\r':
			i = len(l.reqLine) // end of the size
			continue
		default:
			f.fail()
			return
		}
		size = size<<4 | uint64(d)
		digits++
	}
	if digits == 0 || l.hexLead > 16 {
		f.fail()
		return
	}
	if size == 0 {
		f.st = fsTrailer
		return
	}
	f.st, f.n = fsChunkData, size
}

func (l *lineScan) header() uint8 {
	name := l.name[:min(l.nameLen, len(l.name))]
	switch {
	case l.nameLen == 14 && string(name) == "content-length":
		return hdrContentLength
	case l.nameLen == 17 && string(name) == "transfer-encoding":
		return hdrTransferEncoding
	case l.nameLen == 7 && string(name) == "upgrade":
		return hdrUpgrade
	}
	return hdrOther
}

// trimmedValue is the value without trailing spaces; false when it is
// longer than the bytes kept.
func (l *lineScan) trimmedValue() ([]byte, bool) {
	if l.valueAll > len(l.value) {
		return nil, false
	}
	v := l.value[:l.valueLen]
	for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	return v, true
}

// decimal parses the value as a Content-Length: digits only.
func (l *lineScan) decimal() (uint64, bool) {
	v, ok := l.trimmedValue()
	if !ok || len(v) == 0 {
		return 0, false
	}
	var n uint64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		if lowerByte(b[i]) != s[i] {
			return false
		}
	}
	return true
}

// framedConn is an accepted connection whose HTTP/1.1 framing is followed.
type framedConn struct {
	net.Conn
	f   framing
	bad atomic.Bool // read by handlers
	ref *telemetry.Refusals
}

func (c *framedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 && c.f.st != fsPass {
		c.f.scan(b[:n])
		switch {
		case c.f.bad:
			c.bad.Store(true)
			c.ref.Refused(telemetry.RefusedFraming)
		case c.f.tooLarge:
			// net/http answers 431 itself; the count is this proxy's.
			c.ref.Refused(telemetry.RefusedHeaderTooLarge)
		}
	}
	return n, err
}

// framedListener wraps each accepted connection in a framedConn.
type framedListener struct {
	net.Listener
	ref     *telemetry.Refusals
	maxHead int
}

func (l framedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return framed(c, l.ref, l.maxHead), nil
}

// framed follows c's framing; maxHead is the server's MaxHeaderBytes.
func framed(c net.Conn, ref *telemetry.Refusals, maxHead int) net.Conn {
	fc := &framedConn{Conn: c, f: *newFraming(), ref: ref}
	fc.f.maxHead = maxHead + 4096
	return fc
}

type framingKey struct{}

// withFraming is the ConnContext of servers on framed connections.
func withFraming(ctx context.Context, c net.Conn) context.Context {
	if fc, ok := c.(*framedConn); ok {
		return context.WithValue(ctx, framingKey{}, fc)
	}
	return ctx
}

// badFraming reports whether r's connection was framed ambiguously.
func badFraming(r *http.Request) bool {
	c, _ := r.Context().Value(framingKey{}).(*framedConn)
	return c != nil && c.bad.Load()
}
