package proxy

import (
	"io"
	"net/http"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/tap"
)

// The tap filter shows requests to `trellis tap`. It sits right after
// telemetry on the outbound and inbound chains, so it sees every request
// the chain answers, refused ones included (authorization, rate limits,
// no route). While nothing is tapped it costs one atomic load. A request
// a running tap may want (its method and path match) has its response body
// wrapped; when the body is done the destination, status and flags are
// known, and each tap that wants it (destination, rate bound) gets one
// event. Bodies are never read for it and no header value is copied but
// the allow-list in tapHeaders.

// tapHeaders are the only request headers whose values an event carries:
// ones that describe the request's shape, never credentials (no
// Authorization, Cookie, API keys, the mesh's own headers).
var tapHeaders = [...]struct{ canon, name string }{
	{"Content-Type", "content-type"},
	{"User-Agent", "user-agent"},
	{"X-Request-Id", "x-request-id"},
}

// tapObservation is an exchange's tap state; it lives in the exchange
// (pooled), so a tapped request allocates only the events it sends.
type tapObservation struct {
	p       *Proxy
	ex      *Exchange
	set     *tap.Set
	inbound bool
	path    string // as the client sent it (a rewrite may change ex.Path)
	resp    *Response
	rc      io.ReadCloser
	done    bool
}

// tapFilter is the tap slot of the listener's chain.
func (p *Proxy) tapFilter(inbound bool) Filter {
	if p == nil || p.taps == nil { // compile-only tests
		return func(next Handler) Handler { return next }
	}
	taps := p.taps
	return func(next Handler) Handler {
		return HandlerFunc(func(ex *Exchange) *Response {
			set := taps.Load()
			if set == nil || !set.MatchRequest(ex.Method, ex.Path) {
				return next.Serve(ex)
			}
			path := ex.Path
			resp := next.Serve(ex)
			t := &ex.tap
			*t = tapObservation{p: p, ex: ex, set: set, inbound: inbound, path: path, resp: resp, rc: resp.Body}
			resp.Body = t
			return resp
		})
	}
}

// Taps is the proxy's running taps, for the sidecar's Tap stream.
func (p *Proxy) Taps() *tap.Taps { return p.taps }

func (t *tapObservation) Read(b []byte) (int, error) {
	if t.rc == nil {
		return 0, io.EOF
	}
	return t.rc.Read(b)
}

func (t *tapObservation) Close() error {
	var err error
	if t.rc != nil {
		err = t.rc.Close()
	}
	if !t.done {
		t.done = true
		t.end()
	}
	return err
}

// end offers the finished request to each tap that wants it.
func (t *tapObservation) end() {
	o := observation{p: t.p, ex: t.ex, inbound: t.inbound}
	dest := o.destination()
	now := t.p.nanotime()
	var ev *meshv1.TapEvent
	for _, tp := range t.set.Taps() {
		if !tp.Want(t.ex.Method, t.path, dest, now) {
			continue
		}
		if ev == nil {
			ev = t.event(&o, dest)
		} else {
			ev = cloneEvent(ev) // each tap's event carries its own id
		}
		t.p.taps.Emit(tp, ev)
	}
}

// event describes the finished request: what the access log says of it,
// without bytes, query string or header values outside tapHeaders.
func (t *tapObservation) event(o *observation, dest string) *meshv1.TapEvent {
	ex := t.ex
	ev := &meshv1.TapEvent{
		StartUnixNano:       ex.Start.UnixNano(),
		Direction:           o.direction(),
		Method:              ex.Method,
		Authority:           ex.Authority,
		Path:                t.path,
		Status:              int32(t.resp.Status),
		GrpcStatus:          grpcStatus(t.resp),
		LatencyNanos:        int64(time.Since(ex.Start)),
		SourceIdentity:      o.source(),
		DestinationIdentity: t.destinationIdentity(),
		SourceService:       o.sourceService(),
		DestinationService:  dest,
		ResponseFlags:       ex.Flags.String(),
		Route:               o.route(),
	}
	ev.Headers = allowedHeaders(ex.Header)
	return ev
}

// destinationIdentity is this proxy's identity inbound; outbound the
// identity the endpoint's proxy was verified as ("" when none was picked).
func (t *tapObservation) destinationIdentity() string {
	if t.inbound {
		return t.p.opts.Identity
	}
	if t.ex.peer != nil {
		return t.ex.peer.identity
	}
	return ""
}

// allowedHeaders copies the first value of each allow-listed header.
func allowedHeaders(h http.Header) map[string]string {
	var out map[string]string
	for _, a := range tapHeaders {
		v := headerValue1(h, a.canon)
		if v == "" {
			continue
		}
		if out == nil {
			out = make(map[string]string, len(tapHeaders))
		}
		out[a.name] = v
	}
	return out
}

func cloneEvent(ev *meshv1.TapEvent) *meshv1.TapEvent {
	c := &meshv1.TapEvent{
		StartUnixNano: ev.StartUnixNano, Direction: ev.Direction, Method: ev.Method,
		Authority: ev.Authority, Path: ev.Path, Status: ev.Status, GrpcStatus: ev.GrpcStatus,
		LatencyNanos: ev.LatencyNanos, SourceIdentity: ev.SourceIdentity,
		DestinationIdentity: ev.DestinationIdentity, SourceService: ev.SourceService,
		DestinationService: ev.DestinationService, ResponseFlags: ev.ResponseFlags,
		Route: ev.Route, Headers: ev.Headers, // read-only once sent
	}
	return c
}
