// Package tracing is the proxy's OpenTelemetry tracing: a tracer provider
// that exports spans over OTLP (gRPC or HTTP) in batches, a parent-based
// sampler whose rate can change while the proxy runs (a pushed Telemetry
// resource sets it), and the propagation of W3C trace context and B3
// (single and multi header) on the requests a proxy forwards.
//
// Nothing here runs on a request unless a collector is configured: without
// one the proxy builds no Tracer and its chains do not contain the tracing
// filter at all.
package tracing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/contrib/propagators/b3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Protocols an OTLP exporter speaks.
const (
	ProtocolGRPC = "grpc"
	ProtocolHTTP = "http"
)

// DefaultSamplingPercent is the share of new traces a proxy samples when
// neither its flag nor a Telemetry resource says: Istio's default, cheap
// enough to leave on. A request that arrives with a sampled parent is
// always traced (parent-based).
const DefaultSamplingPercent = 1.0

// Config says where spans go and who sends them.
type Config struct {
	// Endpoint is the OTLP collector: http://host:port (plain) or
	// https://host:port; for Protocol http a URL path other than / is
	// used as is, else /v1/traces.
	Endpoint string
	// Protocol is ProtocolGRPC (default) or ProtocolHTTP.
	Protocol string
	// SamplingPercent is the share of new traces sampled, 0–100.
	SamplingPercent float64
	// Service, Namespace and Identity describe the proxy in the spans'
	// resource (service.name, service.namespace, trellis.identity).
	Service, Namespace, Identity string
	// Logger receives export errors (at warn); nil discards them.
	Logger *slog.Logger
	// BatchTimeout bounds how long a finished span waits before it is
	// exported; default 1s (tests and demos see spans soon).
	BatchTimeout time.Duration
}

// Tracer makes the proxy's spans and propagates their context.
type Tracer struct {
	tp      *sdktrace.TracerProvider
	tracer  trace.Tracer
	sampler *ratioSampler
	w3c     propagation.TraceContext
	b3s     propagation.TextMapPropagator // B3 single header
	b3m     propagation.TextMapPropagator // B3 multi header
	b3in    propagation.TextMapPropagator // extracts either
}

// New checks cfg and builds a Tracer exporting to cfg.Endpoint. The
// exporter connects lazily: a collector that is down costs dropped spans
// (logged), never a failed start.
func New(ctx context.Context, cfg Config) (*Tracer, error) {
	if err := ValidSamplingPercent(cfg.SamplingPercent); err != nil {
		return nil, fmt.Errorf("tracing: sampling: %w", err)
	}
	exp, err := newExporter(ctx, cfg)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	bt := cfg.BatchTimeout
	if bt <= 0 {
		bt = time.Second
	}
	s := newRatioSampler(cfg.SamplingPercent)
	res := resource.NewSchemaless(
		attribute.String("service.name", cfg.Service),
		attribute.String("service.namespace", cfg.Namespace),
		attribute.String("trellis.identity", cfg.Identity),
	)
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithSampler(sdktrace.ParentBased(s)),
		sdktrace.WithResource(res),
		sdktrace.WithBatcher(&loggedExporter{SpanExporter: exp, log: log.With("component", "tracing")}, sdktrace.WithBatchTimeout(bt)),
	)
	t := &Tracer{
		tp:      tp,
		tracer:  tp.Tracer("trellis.dev/trellis/proxy"),
		sampler: s,
		b3s:     b3.New(b3.WithInjectEncoding(b3.B3SingleHeader)),
		b3m:     b3.New(b3.WithInjectEncoding(b3.B3MultipleHeader)),
		b3in:    b3.New(),
	}
	return t, nil
}

// newExporter builds the OTLP exporter cfg names.
func newExporter(ctx context.Context, cfg Config) (sdktrace.SpanExporter, error) {
	u, err := url.Parse(cfg.Endpoint)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("tracing: endpoint %q: want http://host:port or https://host:port", cfg.Endpoint)
	}
	switch cfg.Protocol {
	case "", ProtocolGRPC:
		opts := []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(u.Host)}
		if u.Scheme == "http" {
			opts = append(opts, otlptracegrpc.WithInsecure())
		}
		exp, err := otlptracegrpc.New(ctx, opts...)
		if err != nil {
			return nil, fmt.Errorf("tracing: otlp grpc exporter: %w", err)
		}
		return exp, nil
	case ProtocolHTTP:
		if u.Path == "" || u.Path == "/" {
			u.Path = "/v1/traces"
		}
		exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(u.String()))
		if err != nil {
			return nil, fmt.Errorf("tracing: otlp http exporter: %w", err)
		}
		return exp, nil
	}
	return nil, fmt.Errorf("tracing: protocol %q: want %s or %s", cfg.Protocol, ProtocolGRPC, ProtocolHTTP)
}

// loggedExporter logs export failures itself, once per change between
// failing and working (a collector that is down fails every batch), and
// hides them from the SDK, whose handler would print each one to stderr.
type loggedExporter struct {
	sdktrace.SpanExporter
	log     *slog.Logger
	failing atomic.Bool
}

func (e *loggedExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	err := e.SpanExporter.ExportSpans(ctx, spans)
	switch {
	case err != nil && !e.failing.Swap(true):
		e.log.Warn("exporting spans failed; dropping them until the collector answers", "spans", len(spans), "err", err)
	case err == nil && e.failing.Swap(false):
		e.log.Info("exporting spans again")
	}
	return nil
}

// ValidSamplingPercent says why p is not a sampling percentage, or nil.
func ValidSamplingPercent(p float64) error {
	if math.IsNaN(p) || p < 0 || p > 100 {
		return fmt.Errorf("%v is not a percentage in [0, 100]", p)
	}
	return nil
}

// SetSamplingPercent changes the share of new traces sampled (a pushed
// Telemetry resource); requests already started keep their decision.
func (t *Tracer) SetSamplingPercent(p float64) { t.sampler.set(p) }

// SamplingPercent is the share of new traces sampled now.
func (t *Tracer) SamplingPercent() float64 { return t.sampler.percent() }

// Shutdown exports the spans still buffered and stops the exporter.
func (t *Tracer) Shutdown(ctx context.Context) error {
	if err := t.tp.Shutdown(ctx); err != nil {
		return fmt.Errorf("tracing: shutdown: %w", err)
	}
	return nil
}

// Flush exports the spans buffered so far.
func (t *Tracer) Flush(ctx context.Context) error {
	if err := t.tp.ForceFlush(ctx); err != nil {
		return fmt.Errorf("tracing: flush: %w", err)
	}
	return nil
}

// Extract reads the caller's trace context from h: W3C traceparent (with
// its tracestate) first, else B3 in either encoding. It reports which B3
// encoding the request used, so the forwarded request keeps it.
func (t *Tracer) Extract(ctx context.Context, h http.Header) (context.Context, B3) {
	mode := b3Mode(h)
	c := propagation.HeaderCarrier(h)
	ctx = t.w3c.Extract(ctx, c)
	if !trace.SpanContextFromContext(ctx).IsValid() && mode != B3None {
		ctx = t.b3in.Extract(ctx, c)
	}
	return ctx, mode
}

// Start starts a span of kind as a child of ctx's span context.
func (t *Tracer) Start(ctx context.Context, name string, kind trace.SpanKind) (context.Context, trace.Span) {
	return t.tracer.Start(ctx, name, trace.WithSpanKind(kind))
}

// Inject writes ctx's span context into h as W3C traceparent and
// tracestate, replacing what the caller sent, and also as B3 when the
// request came with B3, in the same encoding: every hop after this one
// then sees the proxy's span as its parent, whichever format it reads.
func (t *Tracer) Inject(ctx context.Context, h http.Header, mode B3) {
	delete(h, "Tracestate") // the span context's own tracestate, or none
	c := propagation.HeaderCarrier(h)
	t.w3c.Inject(ctx, c)
	switch mode {
	case B3Single:
		t.b3s.Inject(ctx, c)
	case B3Multi:
		// The span this hop made has no B3 parent header of its own.
		delete(h, "X-B3-Parentspanid")
		t.b3m.Inject(ctx, c)
	}
}

// B3 is the B3 encoding a request carried.
type B3 uint8

// B3 encodings.
const (
	B3None B3 = iota
	B3Single
	B3Multi
)

func b3Mode(h http.Header) B3 {
	if len(h["B3"]) > 0 {
		return B3Single
	}
	if len(h["X-B3-Traceid"]) > 0 || len(h["X-B3-Sampled"]) > 0 || len(h["X-B3-Flags"]) > 0 {
		return B3Multi
	}
	return B3None
}

// ratioSampler samples a share of trace IDs that can change at run time;
// ParentBased wraps it, so it decides only for new traces.
type ratioSampler struct {
	cur atomic.Pointer[ratio]
}

type ratio struct {
	pct     float64
	sampler sdktrace.Sampler
}

func newRatioSampler(p float64) *ratioSampler {
	s := &ratioSampler{}
	s.set(p)
	return s
}

func (s *ratioSampler) set(p float64) {
	s.cur.Store(&ratio{pct: p, sampler: sdktrace.TraceIDRatioBased(p / 100)})
}

func (s *ratioSampler) percent() float64 { return s.cur.Load().pct }

func (s *ratioSampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	return s.cur.Load().sampler.ShouldSample(p)
}

func (s *ratioSampler) Description() string {
	return fmt.Sprintf("TrellisRatio{%g%%}", s.percent())
}

// ErrNoTraceID is returned by ParseTraceparent for a header that is not a
// valid W3C traceparent.
var ErrNoTraceID = errors.New("tracing: not a traceparent")

// TraceIDFromHeader returns the trace ID (32 lower-case hex digits) of h's
// traceparent, else of its B3 header(s), else "". It allocates nothing (the
// ID is a substring of the header), for access logs of proxies that do not
// trace.
func TraceIDFromHeader(h http.Header) string {
	if v := h["Traceparent"]; len(v) > 0 {
		if id, err := ParseTraceparent(v[0]); err == nil {
			return id
		}
	}
	if v := h["B3"]; len(v) > 0 {
		id, _, _ := strings.Cut(v[0], "-")
		if validTraceID(id) {
			return id
		}
	}
	if v := h["X-B3-Traceid"]; len(v) > 0 && validTraceID(v[0]) {
		return v[0]
	}
	return ""
}

// ParseTraceparent returns the trace ID of a W3C traceparent header value
// (version-traceid-parentid-flags), following the spec's rules for version
// 00 and for future versions (which may append fields after a dash).
func ParseTraceparent(v string) (string, error) {
	// 2 + 1 + 32 + 1 + 16 + 1 + 2
	if len(v) < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-' {
		return "", ErrNoTraceID
	}
	ver, id, parent, flags := v[:2], v[3:35], v[36:52], v[53:55]
	if !lowerHex(ver) || ver == "ff" || !lowerHex(flags) || !validTraceID(id) || !lowerHex(parent) || allZero(parent) {
		return "", ErrNoTraceID
	}
	if len(v) > 55 && (ver == "00" || v[55] != '-') {
		return "", ErrNoTraceID
	}
	return id, nil
}

// validTraceID: 32 (or B3's 16) lower-case hex digits, not all zero.
func validTraceID(id string) bool {
	return (len(id) == 32 || len(id) == 16) && lowerHex(id) && !allZero(id)
}

func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func allZero(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] != '0' {
			return false
		}
	}
	return true
}
