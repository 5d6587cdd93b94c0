package http1

import (
	"bufio"
	"io"
	"net/http"
	"net/textproto"
	"strconv"
)

// Writing: the heads and bodies the proxy sends. Header maps come from
// parsed messages and validated config, but a writer is the last place a
// CR or LF could split a message, so it checks again: a field with a
// malformed name is dropped and control bytes in a value become spaces
// (as net/http's Header.Write does).

// AppendFields appends h's fields as "Name: value\r\n" lines, one line per
// value. Hop-by-hop and framing fields are the caller's to remove.
func AppendFields(dst []byte, h http.Header) []byte {
	for k, vv := range h {
		if !isToken([]byte(k)) {
			continue
		}
		for _, v := range vv {
			dst = append(dst, k...)
			dst = append(dst, ':', ' ')
			dst = appendValue(dst, v)
			dst = append(dst, '\r', '\n')
		}
	}
	return dst
}

// appendValue appends v trimmed of surrounding whitespace, any byte that
// is not field content written as a space.
func appendValue(dst []byte, v string) []byte {
	v = textproto.TrimString(v)
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !fieldValueByte(c) {
			c = ' '
		}
		dst = append(dst, c)
	}
	return dst
}

// AppendStatusLine appends "HTTP/1.1 <code> <reason>\r\n".
func AppendStatusLine(dst []byte, code int) []byte {
	dst = append(dst, "HTTP/1.1 "...)
	dst = strconv.AppendInt(dst, int64(code), 10)
	dst = append(dst, ' ')
	if t := http.StatusText(code); t != "" {
		dst = append(dst, t...)
	} else {
		dst = append(dst, "status"...)
	}
	return append(dst, '\r', '\n')
}

// ChunkedWriter writes a chunked body (RFC 9112 §7.1) to w: each Write is
// one chunk; Close writes the last chunk and the trailer section.
type ChunkedWriter struct {
	w       *bufio.Writer
	scratch []byte
}

// NewChunkedWriter writes a chunked body to w.
func NewChunkedWriter(w *bufio.Writer) *ChunkedWriter { return &ChunkedWriter{w: w} }

// Reset makes c write a new body to w.
func (c *ChunkedWriter) Reset(w *bufio.Writer) { c.w = w }

func (c *ChunkedWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil // a zero-size chunk would end the body
	}
	c.scratch = strconv.AppendInt(c.scratch[:0], int64(len(p)), 16)
	c.scratch = append(c.scratch, '\r', '\n')
	if _, err := c.w.Write(c.scratch); err != nil {
		return 0, err
	}
	n, err := c.w.Write(p)
	if err != nil {
		return n, err
	}
	if _, err := c.w.WriteString("\r\n"); err != nil {
		return n, err
	}
	return n, nil
}

// Close ends the body: the last chunk, then trailer (may be nil), then the
// empty line. It does not flush.
func (c *ChunkedWriter) Close(trailer http.Header) error {
	c.scratch = append(c.scratch[:0], '0', '\r', '\n')
	c.scratch = AppendFields(c.scratch, trailer)
	c.scratch = append(c.scratch, '\r', '\n')
	_, err := c.w.Write(c.scratch)
	return err
}

var _ io.Writer = (*ChunkedWriter)(nil)
