package http1

import "net/http"

// ResponseHead is a parsed response head. Its slices alias the buffer
// given to ParseResponse, so it is valid only while that buffer is.
type ResponseHead struct {
	// ForHEAD is the caller's input, kept by Reset: the response answers
	// a HEAD request, so it has no body whatever its fields say.
	ForHEAD bool

	// Minor is the protocol's minor version: HTTP/1.0 or HTTP/1.1.
	Minor  int
	Status int
	// Reason is the reason phrase, possibly empty.
	Reason []byte
	Fields []Field
	// ContentLength is the Content-Length field's value, -1 when absent.
	// Whether a body follows is NoBody's to say (a 304's or a HEAD
	// response's Content-Length describes a body that is not sent).
	ContentLength int64
	// Chunked: the body is chunked (Transfer-Encoding: chunked).
	Chunked bool
	// NoBody: no body follows the head (1xx, 204, 304, or ForHEAD).
	NoBody bool
	// Close: the connection cannot carry another exchange — the server
	// said close, spoke HTTP/1.0 without keep-alive, or delimits the body
	// by closing (no Content-Length, not chunked, a body expected).
	Close bool
	// Upgrade: Connection names upgrade and an Upgrade field is present
	// (what a 101 must carry).
	Upgrade bool

	fields [32]Field // backing for Fields up to 32 fields
}

// Reset empties h for reuse, keeping its backing array and ForHEAD.
// Field by field, as RequestHead.Reset.
func (h *ResponseHead) Reset() {
	h.Minor, h.Status, h.Reason, h.ContentLength = 0, 0, nil, 0
	h.Chunked, h.NoBody, h.Close, h.Upgrade = false, false, false, false
	h.Fields = h.fields[:0]
}

var (
	errStatusLine    = badGateway("malformed status line")
	errStatusCode    = badGateway("malformed status code")
	errRespVersion   = badGateway("unsupported HTTP version in response")
	errRespTooLarge  = badGateway("response header too large")
	errRespTooMany   = badGateway("too many response header fields")
	errRespLineLong  = badGateway("status line too long")
	errRespCLWithTE  = badGateway("response has Content-Length with Transfer-Encoding")
	errRespDupCL     = badGateway("response has more than one Content-Length")
	errRespBadCL     = badGateway("response has a malformed Content-Length")
	errRespDupTE     = badGateway("response has more than one Transfer-Encoding")
	errRespTE        = badGateway("response has an unsupported Transfer-Encoding")
	errRespTEOn10    = badGateway("HTTP/1.0 response has Transfer-Encoding")
	errRespTrailerFd = badGateway("response Trailer names a framing field")
)

// badGateway: a malformed response is the upstream's fault; a proxy
// answers it with 502.
func badGateway(reason string) *Error {
	return &Error{Status: http.StatusBadGateway, Reason: reason}
}

// ParseResponse parses the response head at the start of buf into h (Reset
// first, h.ForHEAD kept) and returns the head's length, CRLF CRLF
// included. It returns ErrIncomplete when buf holds no whole head yet, or
// an *Error. lim.MaxRequestLine bounds the status line.
//
// It is as strict as ParseRequest: bare LF, obs-fold, whitespace before a
// colon, Content-Length with Transfer-Encoding, any repeated
// Content-Length (even identical ones, which net/http merges: a server
// that sends two is broken or attacked, and refusing costs nothing) or
// Transfer-Encoding, any transfer coding but a lone "chunked", and
// Transfer-Encoding on HTTP/1.0 are refused. Framing follows RFC 9112
// §6.3: 1xx, 204, 304 and HEAD responses have no body; else chunked; else
// Content-Length; else the body runs to the connection's close.
func ParseResponse(buf []byte, lim Limits, h *ResponseHead) (int, error) {
	lim = lim.withDefaults()
	h.Reset()
	h.ContentLength = -1
	line, rest, err := nextLine(buf, lim.MaxRequestLine, errRespLineLong)
	if err != nil {
		return 0, respErr(err)
	}
	if err := parseStatusLine(line, h); err != nil {
		return 0, err
	}
	n := len(line) + 2
	var s respFieldState
	for {
		line, rest, err = nextLine(rest, lim.MaxHeadBytes-n, errRespTooLarge)
		if err != nil {
			return 0, respErr(err)
		}
		n += len(line) + 2
		if len(line) == 0 {
			break
		}
		if len(h.Fields) == lim.MaxHeaders {
			return 0, errRespTooMany
		}
		f, err := parseField(line)
		if err != nil {
			return 0, respErr(err)
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

// respErr turns the shared line and field errors, which carry a request's
// 400, into the 502 a malformed response earns; ErrIncomplete and the
// response's own errors pass as they are.
func respErr(err error) error {
	e, ok := err.(*Error)
	if !ok || e.Status == http.StatusBadGateway {
		return err
	}
	return badGateway(e.Reason)
}

// parseStatusLine: HTTP-version SP 3DIGIT SP reason-phrase (RFC 9112 §4).
// The SP before an empty reason may be missing, as many servers send it.
func parseStatusLine(line []byte, h *ResponseHead) error {
	if len(line) < 12 || line[8] != ' ' || (len(line) > 12 && line[12] != ' ') {
		return errStatusLine
	}
	switch string(line[:8]) {
	case "HTTP/1.1":
		h.Minor = 1
	case "HTTP/1.0":
		h.Minor = 0
	default:
		if string(line[:5]) == "HTTP/" && isDigit(line[5]) && line[6] == '.' && isDigit(line[7]) {
			return errRespVersion
		}
		return errStatusLine
	}
	code := line[9:12]
	if !isDigit(code[0]) || !isDigit(code[1]) || !isDigit(code[2]) || code[0] == '0' {
		return errStatusCode
	}
	h.Status = int(code[0]-'0')*100 + int(code[1]-'0')*10 + int(code[2]-'0')
	if len(line) > 12 {
		h.Reason = line[13:]
	}
	for _, c := range h.Reason {
		if !fieldValueByte(c) {
			return errStatusLine
		}
	}
	return nil
}

// respFieldState collects what a response's framing fields say.
type respFieldState struct{ framing }

// respErrs are the response's names for the shared framing refusals.
var respErrs = map[error]error{
	errDupCL: errRespDupCL, errBadCL: errRespBadCL, errDupTE: errRespDupTE, errTE: errRespTE,
	errTrailerName: errRespTrailerFd, errCLWithTE: errRespCLWithTE, errTEOnHTTP10: errRespTEOn10,
}

// respFraming is err as the response's refusal (any the table lacks: a
// 502 with the request's reason).
func respFraming(err error) error {
	if e, ok := respErrs[err]; ok {
		return e
	}
	return respErr(err)
}

func (s *respFieldState) note(f Field, h *ResponseHead) error {
	if _, err := s.framing.note(f, &h.ContentLength, &h.Chunked); err != nil {
		return respFraming(err)
	}
	return nil
}

func (s *respFieldState) finish(h *ResponseHead) error {
	if err := s.check(h.Minor); err != nil {
		return respFraming(err)
	}
	h.NoBody = h.ForHEAD || h.Status < 200 || h.Status == http.StatusNoContent || h.Status == http.StatusNotModified
	untilClose := !h.NoBody && !h.Chunked && h.ContentLength < 0
	h.Close = s.connClose || (h.Minor == 0 && !s.connKA) || untilClose
	h.Upgrade = s.connUpgrade && s.upgradeFld
	return nil
}

// Field returns the value of the first field named lower (lower-case
// ASCII), or nil.
func (h *ResponseHead) Field(lower string) []byte {
	for _, f := range h.Fields {
		if equalFold(f.Name, lower) {
			return f.Value
		}
	}
	return nil
}
