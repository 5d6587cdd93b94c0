// Package http1 is a strict HTTP/1.1 codec for the proxy's edges: it parses
// request heads and chunked bodies without allocating, and refuses every
// shape a request-smuggling attack relies on (RFC 9112 §6.1, §11.2) instead
// of repairing it. What it accepts, net/http's parser accepts with the same
// method, target, header fields and body framing (FuzzDifferential); it
// refuses more: bare LF, obs-fold, whitespace before a colon, Content-Length
// with Transfer-Encoding, a repeated Content-Length, Host or
// Transfer-Encoding, any transfer coding but a lone "chunked", and chunk
// lines net/http would repair.
package http1

import (
	"bytes"
	"errors"
	"net/http"
)

// Limits bound a request head. Zero fields take the defaults.
type Limits struct {
	// MaxRequestLine bounds the request line, CRLF included (414 above).
	MaxRequestLine int
	// MaxHeadBytes bounds the whole head, request line to the empty line
	// (431 above).
	MaxHeadBytes int
	// MaxHeaders bounds the number of header fields (431 above).
	MaxHeaders int
}

// Defaults for Limits' zero fields.
const (
	DefaultMaxRequestLine = 8 << 10
	DefaultMaxHeadBytes   = 64 << 10
	DefaultMaxHeaders     = 128
)

func (l Limits) withDefaults() Limits {
	if l.MaxRequestLine <= 0 {
		l.MaxRequestLine = DefaultMaxRequestLine
	}
	if l.MaxHeadBytes <= 0 {
		l.MaxHeadBytes = DefaultMaxHeadBytes
	}
	if l.MaxHeaders <= 0 {
		l.MaxHeaders = DefaultMaxHeaders
	}
	return l
}

// Field is one header field; Name and Value alias the parsed buffer. Value
// has no leading or trailing whitespace.
type Field struct {
	Name, Value []byte
}

// RequestHead is a parsed request head. Its slices alias the buffer given
// to Parse, so it is valid only while that buffer is.
type RequestHead struct {
	Method []byte
	// Target is the request-target as sent: origin form ("/a?b"),
	// absolute form ("http://h/a"), authority form (CONNECT "h:443") or
	// "*" (OPTIONS).
	Target []byte
	// Minor is the protocol's minor version: HTTP/1.0 or HTTP/1.1.
	Minor  int
	Fields []Field
	// Host is the authority the request is for: an absolute-form or
	// CONNECT target's, else the Host field's value (nil when absent:
	// HTTP/1.0 only).
	Host []byte
	// ContentLength is the body's length; -1 when the body is chunked or
	// there is none to frame (no Content-Length, no Transfer-Encoding).
	ContentLength int64
	Chunked       bool
	// Close: the client asked to close after this exchange (Connection:
	// close, or HTTP/1.0 without keep-alive).
	Close bool
	// Upgrade: the request asks to switch protocols (Connection: upgrade
	// and an Upgrade field), e.g. WebSocket.
	Upgrade bool
	// Expect100: the client waits for "100 Continue" before its body.
	Expect100 bool

	fields [32]Field // backing for Fields up to 32 fields
}

// Reset empties h for reuse, keeping its backing array.
// Field by field: copying a whole RequestHead would copy its 1.5 KiB
// backing array twice per request (TestResetClearsEverything keeps the
// list whole).
func (h *RequestHead) Reset() {
	h.Method, h.Target, h.Host = nil, nil, nil
	h.Minor, h.ContentLength = 0, 0
	h.Chunked, h.Close, h.Upgrade, h.Expect100 = false, false, false, false
	h.Fields = h.fields[:0]
}

// Error is a refusal with the status a server answers it with.
type Error struct {
	Status int
	Reason string
}

func (e *Error) Error() string { return "http1: " + e.Reason }

// ErrIncomplete: the buffer holds no whole head yet, and what it holds is
// within the limits; read more and parse again.
var ErrIncomplete = errors.New("http1: incomplete head")

func badRequest(reason string) *Error {
	return &Error{Status: http.StatusBadRequest, Reason: reason}
}

var (
	errLineTooLong   = &Error{Status: http.StatusRequestURITooLong, Reason: "request line too long"}
	errHeadTooLarge  = &Error{Status: http.StatusRequestHeaderFieldsTooLarge, Reason: "request header too large"}
	errTooManyFields = &Error{Status: http.StatusRequestHeaderFieldsTooLarge, Reason: "too many header fields"}
	errExpect        = &Error{Status: http.StatusExpectationFailed, Reason: "unsupported expectation"}
	errVersion       = &Error{Status: http.StatusHTTPVersionNotSupported, Reason: "unsupported HTTP version"}
	errBareLF        = badRequest("line ends in LF without CR")
	errObsFold       = badRequest("obsolete line folding")
	errMethod        = badRequest("malformed method")
	errTarget        = badRequest("malformed request target")
	errRequestLine   = badRequest("malformed request line")
	errFieldName     = badRequest("malformed header field name")
	errFieldValue    = badRequest("malformed header field value")
	errCLWithTE      = badRequest("Content-Length with Transfer-Encoding")
	errDupCL         = badRequest("more than one Content-Length")
	errBadCL         = badRequest("malformed Content-Length")
	errDupTE         = badRequest("more than one Transfer-Encoding")
	errTE            = &Error{Status: http.StatusNotImplemented, Reason: "unsupported Transfer-Encoding"}
	errTEOnHTTP10    = badRequest("Transfer-Encoding on HTTP/1.0")
	errNoHost        = badRequest("missing Host")
	errDupHost       = badRequest("more than one Host")
	errHost          = badRequest("malformed Host")
	errTrailerName   = badRequest("Trailer names a framing field")
)

// Framing reports whether e refuses a message's framing — the shapes a
// request-smuggling attack relies on — rather than some other malformation.
func (e *Error) Framing() bool {
	switch e {
	case errBareLF, errObsFold, errCLWithTE, errDupCL, errBadCL, errDupTE, errTE, errTEOnHTTP10, errTrailerName,
		errChunkSize, errChunkExt, errChunkEnd, errChunkLine, errTrailerField:
		return true
	}
	return false
}

// ParseRequest parses the request head at the start of buf into h (Reset
// first) and returns the head's length, CRLF CRLF included. It returns
// ErrIncomplete when buf holds no whole head yet, or an *Error.
func ParseRequest(buf []byte, lim Limits, h *RequestHead) (int, error) {
	lim = lim.withDefaults()
	h.Reset()
	h.ContentLength = -1
	line, rest, err := nextLine(buf, lim.MaxRequestLine, errLineTooLong)
	if err != nil {
		return 0, err
	}
	if err := parseRequestLine(line, h); err != nil {
		return 0, err
	}
	n := len(line) + 2
	var s fieldState
	for {
		if n > lim.MaxHeadBytes {
			return 0, errHeadTooLarge
		}
		line, rest, err = nextLine(rest, lim.MaxHeadBytes-n, errHeadTooLarge)
		if err != nil {
			return 0, err
		}
		n += len(line) + 2
		if n > lim.MaxHeadBytes {
			return 0, errHeadTooLarge
		}
		if len(line) == 0 {
			break
		}
		if len(h.Fields) == lim.MaxHeaders {
			return 0, errTooManyFields
		}
		f, err := parseField(line)
		if err != nil {
			return 0, err
		}
		h.Fields = append(h.Fields, f)
		if err := s.note(f, h); err != nil {
			return 0, err
		}
	}
	if err := s.finish(h); err != nil {
		return 0, err
	}
	return n, nil
}

// nextLine returns the line at the start of b without its CRLF and what
// follows it; ErrIncomplete if b holds no CRLF within max bytes, tooLong
// if the line is longer than max.
func nextLine(b []byte, max int, tooLong error) (line, rest []byte, err error) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		if len(b) >= max {
			return nil, nil, tooLong
		}
		return nil, nil, ErrIncomplete
	}
	if i+1 > max {
		return nil, nil, tooLong
	}
	if i == 0 || b[i-1] != '\r' {
		return nil, nil, errBareLF
	}
	return b[:i-1], b[i+1:], nil
}

// parseRequestLine: method SP request-target SP HTTP-version, each part
// exactly as RFC 9112 §3 gives it (one space between, none elsewhere).
func parseRequestLine(line []byte, h *RequestHead) error {
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return errRequestLine
	}
	method, rest := line[:sp1], line[sp1+1:]
	sp2 := bytes.IndexByte(rest, ' ')
	if sp2 <= 0 {
		return errRequestLine
	}
	target, version := rest[:sp2], rest[sp2+1:]
	if !isToken(method) {
		return errMethod
	}
	switch string(version) {
	case "HTTP/1.1":
		h.Minor = 1
	case "HTTP/1.0":
		h.Minor = 0
	default:
		if len(version) != 8 || string(version[:5]) != "HTTP/" || !isDigit(version[5]) || version[6] != '.' || !isDigit(version[7]) {
			return errRequestLine
		}
		if version[5] != '1' {
			return errVersion
		}
		// A later HTTP/1 minor version is served as the highest this
		// server speaks (RFC 9110 §2.5).
		h.Minor = 1
	}
	if !validTarget(method, target) {
		return errTarget
	}
	h.Method, h.Target = method, target
	return nil
}

// parseField splits "name: value" with no whitespace before the colon
// and optional whitespace around the value.
func parseField(line []byte) (Field, error) {
	if line[0] == ' ' || line[0] == '\t' {
		return Field{}, errObsFold
	}
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 || !isToken(line[:colon]) {
		return Field{}, errFieldName
	}
	v := trimOWS(line[colon+1:])
	for _, c := range v {
		if !fieldValueByte(c) {
			return Field{}, errFieldValue
		}
	}
	return Field{Name: line[:colon], Value: v}, nil
}

// framing collects what a message's framing fields say. Requests and
// responses share it (fieldState, respFieldState); its refusals are the
// request's, which a response maps to its own (respErrs).
type framing struct {
	cl, te                  bool
	connClose, connKA       bool
	connUpgrade, upgradeFld bool
}

// note takes f if it is a framing field, and reports whether it was:
// Content-Length into *length, a lone chunked coding into *chunked.
func (s *framing) note(f Field, length *int64, chunked *bool) (bool, error) {
	switch {
	case equalFold(f.Name, "content-length"):
		if s.cl {
			return true, errDupCL
		}
		s.cl = true
		n, ok := parseLength(f.Value)
		if !ok {
			return true, errBadCL
		}
		*length = n
	case equalFold(f.Name, "transfer-encoding"):
		if s.te {
			return true, errDupTE
		}
		s.te = true
		if !equalFold(f.Value, "chunked") {
			return true, errTE
		}
		*chunked = true
	case equalFold(f.Name, "connection"):
		eachElement(f.Value, func(opt []byte) bool {
			s.connClose = s.connClose || equalFold(opt, "close")
			s.connKA = s.connKA || equalFold(opt, "keep-alive")
			s.connUpgrade = s.connUpgrade || equalFold(opt, "upgrade")
			return true
		})
	case equalFold(f.Name, "upgrade"):
		s.upgradeFld = true
	case equalFold(f.Name, "trailer"):
		if !eachElement(f.Value, func(name []byte) bool { return !framingField(name) }) {
			return true, errTrailerName
		}
	default:
		return false, nil
	}
	return true, nil
}

// check refuses the framing fields' combinations: CL with TE (RFC 9112
// §6.1) and TE on HTTP/1.0.
func (s *framing) check(minor int) error {
	if s.cl && s.te {
		return errCLWithTE
	}
	if s.te && minor == 0 {
		return errTEOnHTTP10
	}
	return nil
}

// fieldState collects what a request's fields say.
type fieldState struct {
	framing
	host bool
}

func (s *fieldState) note(f Field, h *RequestHead) error {
	if ok, err := s.framing.note(f, &h.ContentLength, &h.Chunked); ok {
		return err
	}
	switch {
	case equalFold(f.Name, "host"):
		if s.host {
			return errDupHost
		}
		s.host = true
		if !validHost(f.Value) {
			return errHost
		}
		h.Host = f.Value
	case equalFold(f.Name, "expect"):
		// RFC 9110 §10.1.1: an expectation the server cannot meet is 417
		// (as net/http answers); 100-continue is the only one there is.
		cont := !eachElement(f.Value, func(e []byte) bool { return !equalFold(e, "100-continue") })
		if !cont && len(f.Value) > 0 {
			return errExpect
		}
		h.Expect100 = h.Expect100 || cont
	}
	return nil
}

// framingField: a field that frames the message, which a trailer must not
// carry (RFC 9110 §6.5.1).
func framingField(name []byte) bool {
	return equalFold(name, "content-length") || equalFold(name, "transfer-encoding") ||
		equalFold(name, "trailer") || equalFold(name, "host")
}

// eachElement calls f with each comma-separated element of v, trimmed,
// while f returns true; it reports whether every call did.
func eachElement(v []byte, f func([]byte) bool) bool {
	for len(v) > 0 {
		el := v
		if i := bytes.IndexByte(v, ','); i >= 0 {
			el, v = v[:i], v[i+1:]
		} else {
			v = nil
		}
		if el = trimOWS(el); len(el) > 0 && !f(el) {
			return false
		}
	}
	return true
}

// connection reads the Connection field's comma-separated options.
func (s *fieldState) finish(h *RequestHead) error {
	if err := s.check(h.Minor); err != nil {
		return err
	}
	if !s.host && h.Minor == 1 {
		return errNoHost
	}
	// A target that names its authority wins over Host, which is then
	// ignored (RFC 9112 §3.2.2), as net/http does.
	if auth := targetAuthority(h); auth != nil {
		h.Host = auth
	}
	h.Close = s.connClose || (h.Minor == 0 && !s.connKA)
	h.Upgrade = s.connUpgrade && s.upgradeFld
	return nil
}

// targetAuthority is the authority an absolute-form or authority-form
// target names; nil for the other forms.
func targetAuthority(h *RequestHead) []byte {
	switch {
	case string(h.Method) == "CONNECT":
		return h.Target
	case isAbsoluteForm(h.Target):
		return authorityOf(h.Target)
	}
	return nil
}

// parseLength reads a Content-Length: 1 to 18 decimal digits, nothing else.
func parseLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if !isDigit(c) {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// equalFold compares b with lower, which is lower-case ASCII.
func equalFold(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}
