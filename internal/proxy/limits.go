package proxy

import (
	"errors"
	"io"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"trellis.dev/trellis/internal/telemetry"
)

// Limits bound what a client can hold of a proxy's listeners: how long it
// may take to send a request header, how long a request body may stall,
// how long an idle keep-alive connection stays, how large request headers
// may be. Zero fields take the defaults below.
type Limits struct {
	// ReadHeaderTimeout bounds reading a request header (HTTP/1.1) and the
	// TLS handshake on the inbound port.
	ReadHeaderTimeout time.Duration
	// BodyReadTimeout is the longest a request body may go without
	// sending a byte (nginx's client_body_timeout): past it the request
	// is answered 408, or aborted if its response has begun.
	BodyReadTimeout time.Duration
	// IdleTimeout closes a keep-alive connection idle this long.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds a request's header on the listeners apps call
	// (431 above it). The inbound port accepts 16 times as much, so a
	// request one proxy accepted is never refused by the next.
	MaxHeaderBytes int
}

// The Limits defaults.
const (
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultBodyReadTimeout   = 30 * time.Second
	DefaultIdleTimeout       = 5 * time.Minute
	DefaultMaxHeaderBytes    = 64 << 10
)

func (l Limits) withDefaults() Limits {
	if l.ReadHeaderTimeout <= 0 {
		l.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if l.BodyReadTimeout <= 0 {
		l.BodyReadTimeout = DefaultBodyReadTimeout
	}
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = DefaultIdleTimeout
	}
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	return l
}

// headerSize is the size of r's request line and header as HTTP/1.1 would
// send them (HTTP/2 counts alike, near enough for a limit).
func headerSize(r *http.Request) int {
	n := len(r.Method) + len(r.RequestURI) + len(r.Host) + 16
	for k, vv := range r.Header {
		for _, v := range vv {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

// clientBody is a request body read under the body read timeout: each
// Read that may block gets a fresh deadline. A failed read is the client's
// doing (a stall, a malformed chunk), remembered so the upstream stage
// answers 4xx and charges no endpoint. It is allocated per request with a
// body, not pooled with the exchange: a transport may close (or read) the
// body from its own goroutine after the exchange is released; done stops
// it from touching the connection's deadline then.
type clientBody struct {
	rc   io.ReadCloser
	w    http.ResponseWriter
	d    time.Duration
	ref  *telemetry.Refusals
	fail atomic.Uint32 // bodyOK, bodyStalled or bodyMalformed
	// mu orders arming the read deadline against the exchange's end: the
	// deadline is set on the handler's ResponseWriter, which must not be
	// touched once the handler has returned (a transport may still be
	// reading the body then).
	mu   sync.Mutex
	done bool // the exchange has ended
	// eof: the body was read to its end; deadline: the one armed for the
	// read in progress (zero: none).
	eof      bool
	deadline time.Time
	// n is the bytes read so far: the size of a streamed body (gRPC,
	// chunked) for metrics and access logs. Atomic: a transport may still
	// read the body after the exchange is done with it.
	n atomic.Int64
}

const (
	bodyOK uint32 = iota
	bodyStalled
	bodyMalformed
)

func (b *clientBody) Read(p []byte) (int, error) {
	ended, eof := b.arm()
	if eof {
		return 0, io.EOF
	}
	n, err := b.rc.Read(p)
	b.n.Add(int64(n))
	switch {
	case err == io.EOF:
		b.mu.Lock()
		b.eof = true
		b.mu.Unlock()
	case err != nil && b.fail.Load() == bodyOK && !ended:
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if b.fail.CompareAndSwap(bodyOK, bodyStalled) {
				b.ref.Refused(telemetry.RefusedBodyTimeout)
			}
		} else {
			b.fail.CompareAndSwap(bodyOK, bodyMalformed)
		}
	}
	return n, err
}

// arm sets the read deadline for the next read unless the exchange has
// ended or the body is read; it reports which.
func (b *clientBody) arm() (ended, eof bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.d > 0 && !b.done && !b.eof {
		b.deadline = time.Now().Add(b.d)
		_ = http.NewResponseController(b.w).SetReadDeadline(b.deadline)
	}
	return b.done, b.eof
}

// stalledBy reports whether the body is unfinished past its read deadline
// at now, and if so records the stall. The server may cancel the request's
// context for that same deadline before the read that hit it returns; the
// attempt must still answer 408, not 499.
func (b *clientBody) stalledBy(now time.Time) bool {
	if b == nil {
		return false
	}
	b.mu.Lock()
	stalled := !b.eof && !b.deadline.IsZero() && !now.Before(b.deadline)
	b.mu.Unlock()
	if stalled && b.fail.CompareAndSwap(bodyOK, bodyStalled) {
		b.ref.Refused(telemetry.RefusedBodyTimeout)
	}
	return stalled
}

// end marks the exchange over; called by the handler before it returns.
func (b *clientBody) end() {
	b.mu.Lock()
	b.done = true
	b.mu.Unlock()
}

func (b *clientBody) Close() error { return b.rc.Close() }

// Buffered is how much of the body the server holds already (0 when it
// cannot tell): the HTTP/1.1 transport sends that much with the head.
func (b *clientBody) Buffered() int {
	if bb, ok := b.rc.(interface{ Buffered() int }); ok {
		return bb.Buffered()
	}
	return 0
}

// failed reports how the client's body failed, bodyOK if it did not.
func (b *clientBody) failed() uint32 {
	if b == nil {
		return bodyOK
	}
	return b.fail.Load()
}

// clientBodyFailed answers an attempt that failed because the client's
// body did: 408 for a stall, 400 for a malformed body. The attempt is not
// the endpoint's failure and is not retried (ex.err stays nil).
func clientBodyFailed(ex *Exchange) *Response {
	ex.err = nil
	if ex.reqBody.failed() == bodyStalled {
		return ex.fail(http.StatusRequestTimeout, FlagDPE, "request body stalled longer than the body read timeout")
	}
	return ex.fail(http.StatusBadRequest, FlagDPE, "malformed request body")
}
