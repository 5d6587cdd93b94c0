package proxy

import (
	"context"
	"fmt"
	"io"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/accesslog"
	"trellis.dev/trellis/internal/telemetry"
	"trellis.dev/trellis/internal/tracing"
)

// The observe filter: a span per hop (client span outbound, server span
// inbound) and an access log line per request. It sits right after
// telemetry so it sees every request the proxy answers, refused ones
// included, and ends its span and writes its line when the response body
// is done, as telemetry counts.

// AccessLogMode says when a proxy writes access logs.
type AccessLogMode uint8

// Access log modes.
const (
	// AccessLogFromMesh: as the snapshot's telemetry says (a Telemetry
	// resource), off when it says nothing.
	AccessLogFromMesh AccessLogMode = iota
	// AccessLogAlways: on, whatever the mesh says.
	AccessLogAlways
	// AccessLogNever: off, whatever the mesh says.
	AccessLogNever
)

// observation is an exchange's span and access log state. It lives in the
// exchange (pooled), so a request that is neither traced nor logged pays
// nothing for it.
type observation struct {
	p       *Proxy
	ex      *Exchange
	inbound bool
	span    trace.Span
	log     bool
	resp    *Response
	rc      io.ReadCloser // the response body it wraps; nil: none
	out     int64
	done    bool
}

// observeFilter traces and logs the listener's requests; without a tracer
// and an access log it is not in the chain at all.
func (p *Proxy) observeFilter(inbound bool) Filter {
	if p == nil { // compile-only tests
		return func(next Handler) Handler { return next }
	}
	t, al := p.tracer, p.alog
	if t == nil && al == nil {
		return func(next Handler) Handler { return next }
	}
	return func(next Handler) Handler {
		return HandlerFunc(func(ex *Exchange) *Response {
			logOn := al != nil && ex.cfg.accessLog
			if t == nil && !logOn {
				return next.Serve(ex)
			}
			o := &ex.obs
			o.p, o.ex, o.inbound, o.log = p, ex, inbound, logOn
			if t != nil {
				o.span = startSpan(t, ex, inbound)
			}
			resp := next.Serve(ex)
			o.resp, o.rc = resp, resp.Body
			resp.Body = o
			return resp
		})
	}
}

// startObserving builds the tracer and the access log the options ask for.
func (p *Proxy) startObserving() error {
	if c := p.opts.Tracing; c != nil {
		cfg := *c
		if cfg.Service == "" {
			cfg.Service, cfg.Namespace = p.opts.Service, p.opts.Namespace
		}
		if cfg.Identity == "" {
			cfg.Identity = p.opts.Identity
		}
		if cfg.Logger == nil {
			cfg.Logger = p.log
		}
		t, err := tracing.New(context.Background(), cfg)
		if err != nil {
			return fmt.Errorf("proxy: %w", err)
		}
		p.tracer = t
	}
	if w := p.opts.AccessLog; w != nil && p.opts.AccessLogs != AccessLogNever {
		p.alog = accesslog.New(w, accesslog.Options{Queue: p.opts.AccessLogQueue, Metrics: p.metrics.AccessLog})
	}
	return nil
}

// stopObserving exports the spans and writes the lines still buffered.
func (p *Proxy) stopObserving() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if p.tracer != nil {
		if err := p.tracer.Shutdown(ctx); err != nil {
			p.log.Warn("tracing shutdown", "err", err)
		}
	}
	if p.alog != nil {
		// A sink stuck in a write (a pipe nobody reads) must not hold the
		// shutdown: give up on the lines still queued after the timeout.
		done := make(chan error, 1)
		go func() { done <- p.alog.Close() }()
		select {
		case err := <-done:
			if err != nil {
				p.log.Warn("access log", "err", err)
			}
		case <-ctx.Done():
			p.log.Warn("access log: sink still blocked at shutdown; queued lines lost")
		}
	}
}

// accessLogOn checks the snapshot's telemetry and says whether requests
// under it are access-logged: the proxy's mode, else what the snapshot
// says, else off.
func (p *Proxy) accessLogOn(s *meshv1.Snapshot) (bool, error) {
	t := s.GetTelemetry()
	if t != nil && t.TracingSamplingPercent != nil {
		if err := tracing.ValidSamplingPercent(*t.TracingSamplingPercent); err != nil {
			return false, invalid("telemetry.tracing_sampling_percent: %v", err)
		}
	}
	if p == nil || p.alog == nil {
		return false, nil
	}
	switch p.opts.AccessLogs {
	case AccessLogAlways:
		return true, nil
	case AccessLogNever:
		return false, nil
	}
	return t.GetAccessLog(), nil
}

// applySampling sets the tracer's rate from an applied snapshot, unless
// the proxy's own setting is fixed (its flag wins).
func (p *Proxy) applySampling(s *meshv1.Snapshot) {
	if p.tracer == nil || p.opts.SamplingFixed {
		return
	}
	pct := p.opts.Tracing.SamplingPercent
	if t := s.GetTelemetry(); t != nil && t.TracingSamplingPercent != nil {
		pct = *t.TracingSamplingPercent
	}
	if pct != p.tracer.SamplingPercent() {
		p.tracer.SetSamplingPercent(pct)
		p.log.Info("tracing sampling changed", "percent", pct)
	}
}

// startSpan starts the hop's span as a child of the caller's trace
// context and passes the span on as the parent of the next hop.
func startSpan(t *tracing.Tracer, ex *Exchange, inbound bool) trace.Span {
	kind := trace.SpanKindClient
	if inbound {
		kind = trace.SpanKindServer
	}
	ctx, mode := t.Extract(context.Background(), ex.Header)
	ctx, span := t.Start(ctx, ex.Method, kind)
	t.Inject(ctx, ex.Header, mode)
	return span
}

func (o *observation) Read(b []byte) (int, error) {
	if o.rc == nil {
		return 0, io.EOF
	}
	n, err := o.rc.Read(b)
	o.out += int64(n)
	return n, err
}

func (o *observation) Close() error {
	var err error
	if o.rc != nil {
		err = o.rc.Close()
	}
	if !o.done {
		o.done = true
		o.end()
	}
	return err
}

// end finishes the span and logs the line, with what the chain decided.
func (o *observation) end() {
	ex := o.ex
	status := o.resp.Status
	grpc := grpcStatus(o.resp)
	if o.span != nil {
		o.endSpan(status, grpc)
	}
	if o.log {
		e := accesslog.Entry{
			Start:              ex.Start,
			Direction:          o.direction(),
			Method:             ex.Method,
			Path:               ex.Path,
			Authority:          ex.Authority,
			Protocol:           protocolName(ex.ProtoMajor),
			Status:             status,
			GRPCStatus:         grpc,
			Flags:              ex.Flags.String(),
			BytesIn:            o.ex.requestBytes(),
			BytesOut:           o.out,
			Duration:           time.Since(ex.Start),
			Upstream:           o.upstream(),
			SourceIdentity:     o.source(),
			DestinationService: o.destination(),
			Route:              o.route(),
		}
		if o.span != nil {
			e.TraceID = o.span.SpanContext().TraceID().String()
		} else {
			e.TraceID = tracing.TraceIDFromHeader(ex.Header)
		}
		o.p.alog.Log(&e)
	}
}

// endSpan labels the span as metrics label the request, and ends it.
func (o *observation) endSpan(status int, grpc string) {
	ex := o.ex
	if !o.span.IsRecording() { // not sampled: only its context travels
		return
	}
	dest := o.destination()
	o.span.SetName(ex.Method + " " + dest)
	attrs := []attribute.KeyValue{
		attribute.String("trellis.direction", o.direction()),
		attribute.String("trellis.source.service", o.sourceService()),
		attribute.String("trellis.source.identity", o.source()),
		attribute.String("trellis.destination.service", dest),
		attribute.String("trellis.route", o.route()),
		attribute.String("trellis.response_flags", ex.Flags.String()),
		attribute.String("trellis.upstream", o.upstream()),
		attribute.String("http.request.method", ex.Method),
		attribute.String("url.path", ex.Path),
		attribute.String("server.address", ex.Authority),
		attribute.Int("http.response.status_code", status),
		attribute.Int64("http.request.body.size", o.ex.requestBytes()),
		attribute.Int64("http.response.body.size", o.out),
	}
	if grpc != "" {
		attrs = append(attrs, attribute.String("rpc.grpc.status_code", grpc))
	}
	o.span.SetAttributes(attrs...)
	if status >= 500 || (grpc != "" && grpc != "0") || (ex.Flags != 0 && ex.Flags != FlagDI) {
		o.span.SetStatus(codes.Error, ex.Flags.String())
	}
	o.span.End()
}

func (o *observation) direction() string {
	if o.inbound {
		return telemetry.Inbound
	}
	return telemetry.Outbound
}

// destination is the destination service: the proxy's own inbound, the
// resolved one outbound ("unknown" when it could not be resolved).
func (o *observation) destination() string {
	if o.inbound {
		return o.p.ownKey()
	}
	if o.ex.Service != nil {
		return o.ex.Service.key
	}
	return "unknown"
}

// sourceService is the calling service when this proxy knows it: its own,
// outbound. Inbound the caller is known by identity only.
func (o *observation) sourceService() string {
	if o.inbound {
		return ""
	}
	return o.p.ownKey()
}

// source is the caller's SPIFFE ID: the verified peer inbound, this
// proxy's own identity outbound.
func (o *observation) source() string {
	if o.inbound {
		return o.ex.PeerID
	}
	return o.p.opts.Identity
}

func (o *observation) upstream() string {
	if o.inbound {
		return o.ex.target.appAddr
	}
	if o.ex.Endpoint != nil {
		return o.ex.Endpoint.Addr()
	}
	return ""
}

func (o *observation) route() string {
	if o.ex.Route != nil {
		return o.ex.Route.name
	}
	return ""
}

// ownKey is this proxy's service as name.namespace.
func (p *Proxy) ownKey() string { return p.ownServiceKey }

func protocolName(major int) string {
	if major == 2 {
		return "HTTP/2"
	}
	return "HTTP/1.1"
}

// grpcStatus is the response's grpc-status: from a trailers-only header,
// else from the trailers (known once the body is done); "" when not gRPC.
func grpcStatus(r *Response) string {
	if v := r.Header["Grpc-Status"]; len(v) > 0 {
		return v[0]
	}
	if r.Trailer != nil {
		if v := (*r.Trailer)["Grpc-Status"]; len(v) > 0 {
			return v[0]
		}
	}
	return ""
}
