// Package accesslog writes one JSON line per request a proxy served, to
// stdout or to a file rotated by size. The request path only formats the
// line into a pooled buffer and offers it to a bounded queue; one goroutine
// writes. When the queue is full the line is dropped and counted, so a slow
// disk or a blocked stdout never slows a request.
package accesslog

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// Entry is one request's line. The field set (and the JSON names, in
// order) is documented in docs/configuration.md, "Access logs".
type Entry struct {
	Start              time.Time     // start_time: when the request arrived (RFC 3339, UTC, ns)
	Direction          string        // direction: inbound | outbound
	Method             string        // method
	Path               string        // path (as sent, query excluded)
	Authority          string        // authority: Host or :authority
	Protocol           string        // protocol: HTTP/1.1 or HTTP/2
	Status             int           // status: the response code (499: client went away)
	GRPCStatus         string        // grpc_status: "" when not gRPC (omitted)
	Flags              string        // response_flags: "-" for none
	BytesIn, BytesOut  int64         // bytes_received (request body), bytes_sent (response body)
	Duration           time.Duration // duration_ms: arrival to response complete
	Upstream           string        // upstream: the endpoint (outbound) or app (inbound) address, "" if none
	SourceIdentity     string        // source_identity: the caller's SPIFFE ID
	DestinationService string        // destination_service: name.namespace
	Route              string        // route: the route's name, "" if none
	TraceID            string        // trace_id: 32 hex digits, "" if none
}

// Metrics is what the logger records: lines written and lines dropped
// because the queue was full.
type Metrics interface {
	Logged()
	Dropped()
}

type nopMetrics struct{}

func (nopMetrics) Logged()  {}
func (nopMetrics) Dropped() {}

// DefaultQueue is how many lines may wait for the writer.
const DefaultQueue = 4096

// batchBytes bounds one write: lines queued together go out in one write
// of at most this many bytes (more when one line is longer).
const batchBytes = 64 << 10

// Logger formats entries and writes them from its own goroutine.
type Logger struct {
	sink    io.WriteCloser
	queue   chan *[]byte
	pool    sync.Pool
	metrics Metrics
	done    chan struct{}
	once    sync.Once
	errMu   sync.Mutex
	err     error // the first write error
	// mu guards closed against Log after Close.
	mu     sync.RWMutex
	closed bool
}

// Options tune a Logger.
type Options struct {
	Queue   int     // lines the queue holds; default DefaultQueue
	Metrics Metrics // nil: not recorded
}

// New starts a Logger writing to sink, which it closes on Close.
func New(sink io.WriteCloser, o Options) *Logger {
	if o.Queue <= 0 {
		o.Queue = DefaultQueue
	}
	if o.Metrics == nil {
		o.Metrics = nopMetrics{}
	}
	l := &Logger{
		sink:    sink,
		queue:   make(chan *[]byte, o.Queue),
		metrics: o.Metrics,
		done:    make(chan struct{}),
	}
	l.pool.New = func() any { b := make([]byte, 0, 512); return &b }
	go l.write()
	return l
}

// Log formats e and queues it; it never blocks. A full queue drops the
// line (counted).
func (l *Logger) Log(e *Entry) {
	bp := l.pool.Get().(*[]byte)
	*bp = AppendJSON((*bp)[:0], e)
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		l.pool.Put(bp)
		return
	}
	select {
	case l.queue <- bp:
	default:
		l.pool.Put(bp)
		l.metrics.Dropped()
	}
}

// write drains the queue, batching the lines waiting, until Close.
func (l *Logger) write() {
	defer close(l.done)
	batch := make([]byte, 0, batchBytes)
	for bp := range l.queue {
		batch = append(batch[:0], *bp...)
		l.put(bp)
		n := 1
	more:
		for len(batch) < batchBytes {
			select {
			case bp, ok := <-l.queue:
				if !ok {
					break more
				}
				batch = append(batch, *bp...)
				l.put(bp)
				n++
			default:
				break more
			}
		}
		if _, err := l.sink.Write(batch); err != nil {
			l.setErr(err)
			continue
		}
		for range n {
			l.metrics.Logged()
		}
	}
}

func (l *Logger) put(bp *[]byte) {
	if cap(*bp) <= 4096 { // an odd huge line is not kept
		l.pool.Put(bp)
	}
}

func (l *Logger) setErr(err error) {
	l.errMu.Lock()
	defer l.errMu.Unlock()
	if l.err == nil {
		l.err = err
	}
}

// Close writes the lines queued, closes the sink, and returns the first
// write error, if any.
func (l *Logger) Close() error {
	l.once.Do(func() {
		l.mu.Lock()
		l.closed = true
		close(l.queue)
		l.mu.Unlock()
		<-l.done
		if err := l.sink.Close(); err != nil {
			l.setErr(err)
		}
	})
	l.errMu.Lock()
	defer l.errMu.Unlock()
	if l.err != nil {
		return fmt.Errorf("accesslog: %w", l.err)
	}
	return nil
}

// AppendJSON appends e as one JSON object and a newline.
func AppendJSON(b []byte, e *Entry) []byte {
	b = append(b, `{"start_time":"`...)
	b = e.Start.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","direction":`...)
	b = appendString(b, e.Direction)
	b = append(b, `,"method":`...)
	b = appendString(b, e.Method)
	b = append(b, `,"path":`...)
	b = appendString(b, e.Path)
	b = append(b, `,"authority":`...)
	b = appendString(b, e.Authority)
	b = append(b, `,"protocol":`...)
	b = appendString(b, e.Protocol)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(e.Status), 10)
	if e.GRPCStatus != "" {
		b = append(b, `,"grpc_status":`...)
		b = appendString(b, e.GRPCStatus)
	}
	b = append(b, `,"response_flags":`...)
	b = appendString(b, e.Flags)
	b = append(b, `,"bytes_received":`...)
	b = strconv.AppendInt(b, e.BytesIn, 10)
	b = append(b, `,"bytes_sent":`...)
	b = strconv.AppendInt(b, e.BytesOut, 10)
	b = append(b, `,"duration_ms":`...)
	b = strconv.AppendFloat(b, float64(e.Duration.Microseconds())/1000, 'f', 3, 64)
	b = append(b, `,"upstream":`...)
	b = appendString(b, e.Upstream)
	b = append(b, `,"source_identity":`...)
	b = appendString(b, e.SourceIdentity)
	b = append(b, `,"destination_service":`...)
	b = appendString(b, e.DestinationService)
	b = append(b, `,"route":`...)
	b = appendString(b, e.Route)
	b = append(b, `,"trace_id":`...)
	b = appendString(b, e.TraceID)
	return append(b, "}\n"...)
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string: quotes, backslashes and control
// characters escaped, invalid UTF-8 replaced by U+FFFD, and <, >, &, U+2028
// and U+2029 escaped as encoding/json does, so a line is safe to embed.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// ErrClosed is returned by a RotatingFile written after Close.
var ErrClosed = errors.New("accesslog: file closed")
