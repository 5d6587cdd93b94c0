package http1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

// maxChunkLine bounds a chunk-size line, extensions included.
const maxChunkLine = 1024

var (
	errChunkSize    = badRequest("malformed chunk size")
	errChunkExt     = badRequest("malformed chunk extension")
	errChunkEnd     = badRequest("chunk data not followed by CRLF")
	errChunkLine    = badRequest("chunk-size line too long")
	errTrailerLarge = &Error{Status: 431, Reason: "trailer section too large"}
	errTrailerField = badRequest("trailer carries a framing field")
)

// ChunkedReader decodes a chunked body (RFC 9112 §7.1) from r: hex sizes
// of at most 15 digits, extensions of token characters (skipped), data
// followed by exactly CRLF, and a trailer section of well-formed fields
// that it keeps (Trailer). Every line ends in CRLF. Whatever it refuses,
// it refuses with an *Error and keeps refusing.
type ChunkedReader struct {
	r    *bufio.Reader
	max  int    // trailer section bound
	left uint64 // bytes left in the current chunk
	data bool   // inside a chunk's data (left may be 0 before its CRLF)
	err  error

	// Trailer holds the trailer fields once Read has returned io.EOF;
	// they alias the reader's own buffer.
	Trailer []Field
	tbuf    []byte
}

// NewChunkedReader reads a chunked body from r; maxTrailer bounds its
// trailer section (DefaultMaxHeadBytes when <= 0).
func NewChunkedReader(r *bufio.Reader, maxTrailer int) *ChunkedReader {
	c := &ChunkedReader{}
	c.Reset(r, maxTrailer)
	return c
}

// Reset makes c read a new body from r, keeping its buffers.
func (c *ChunkedReader) Reset(r *bufio.Reader, maxTrailer int) {
	if maxTrailer <= 0 {
		maxTrailer = DefaultMaxHeadBytes
	}
	*c = ChunkedReader{r: r, max: maxTrailer, Trailer: c.Trailer[:0], tbuf: c.tbuf[:0]}
}

func (c *ChunkedReader) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	if !c.data {
		size, err := c.sizeLine()
		if err != nil {
			return 0, c.fail(err)
		}
		if size == 0 {
			if err := c.trailers(); err != nil {
				return 0, c.fail(err)
			}
			c.err = io.EOF
			return 0, io.EOF
		}
		c.left, c.data = size, true
	}
	if len(p) == 0 {
		return 0, nil
	}
	if uint64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= uint64(n)
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return n, c.fail(err)
	}
	if c.left == 0 {
		if err := c.chunkEnd(); err != nil {
			return n, c.fail(err)
		}
		c.data = false
	}
	return n, nil
}

func (c *ChunkedReader) fail(err error) error {
	c.err = err
	return err
}

// line reads one CRLF-terminated line of at most max bytes, without the CRLF.
func (c *ChunkedReader) line(max int, tooLong error) ([]byte, error) {
	b, err := c.r.ReadSlice('\n')
	switch {
	case errors.Is(err, bufio.ErrBufferFull) || len(b) > max:
		return nil, tooLong
	case errors.Is(err, io.EOF):
		return nil, io.ErrUnexpectedEOF
	case err != nil:
		return nil, err
	case len(b) < 2 || b[len(b)-2] != '\r':
		return nil, errBareLF
	}
	return b[:len(b)-2], nil
}

// sizeLine parses chunk-size [ ";" extensions ] CRLF.
func (c *ChunkedReader) sizeLine() (uint64, error) {
	b, err := c.line(maxChunkLine, errChunkLine)
	if err != nil {
		return 0, err
	}
	ext := []byte(nil)
	if i := bytes.IndexByte(b, ';'); i >= 0 {
		b, ext = b[:i], b[i+1:]
	}
	if len(b) == 0 || len(b) > 15 {
		return 0, errChunkSize
	}
	var n uint64
	for _, d := range b {
		if !isHex(d) {
			return 0, errChunkSize
		}
		n = n<<4 | uint64(unhex(d))
	}
	for _, e := range ext {
		if !isTchar(e) && e != '=' && e != ';' {
			return 0, errChunkExt
		}
	}
	return n, nil
}

func unhex(c byte) byte {
	switch {
	case isDigit(c):
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

// chunkEnd reads the CRLF after a chunk's data.
func (c *ChunkedReader) chunkEnd() error {
	b, err := c.r.Peek(2)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return io.ErrUnexpectedEOF
		}
		return err
	}
	if b[0] != '\r' || b[1] != '\n' {
		return errChunkEnd
	}
	_, err = c.r.Discard(2)
	return err
}

// trailers reads the trailer section up to its empty line, keeping the
// fields in c's own buffer (the reader's buffer moves on).
func (c *ChunkedReader) trailers() error {
	total := 0
	var spans [][2]int
	for {
		b, err := c.line(c.max-total, errTrailerLarge)
		if err != nil {
			return err
		}
		total += len(b) + 2
		if total > c.max {
			return errTrailerLarge
		}
		if len(b) == 0 {
			break
		}
		f, err := parseField(b)
		if err != nil {
			return err
		}
		if framingField(f.Name) {
			return errTrailerField
		}
		start := len(c.tbuf)
		c.tbuf = append(c.tbuf, f.Name...)
		mid := len(c.tbuf)
		c.tbuf = append(c.tbuf, f.Value...)
		spans = append(spans, [2]int{start, mid})
	}
	for i, s := range spans {
		end := len(c.tbuf)
		if i+1 < len(spans) {
			end = spans[i+1][0]
		}
		c.Trailer = append(c.Trailer, Field{Name: c.tbuf[s[0]:s[1]], Value: c.tbuf[s[1]:end]})
	}
	return nil
}
