package proxy

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"trellis.dev/trellis/internal/echo"
	"trellis.dev/trellis/internal/lb"
	"trellis.dev/trellis/internal/telemetry"
)

// Exchange is one request as the proxy's filters see it: the request as it
// arrived, what the pipeline chose for it, how it went. The listener edge
// fills the request part and net/http stays at the two edges, so a filter
// never sees *http.Request or http.ResponseWriter. An Exchange belongs to one
// request and is used by one goroutine at a time; it is pooled, so nothing
// may keep it after the response body is closed.
type Exchange struct {
	// The request.
	Method    string
	Authority string // Host or :authority, as sent on
	// Path is the decoded path routes match; RawPath is its escaped form
	// when that differs (url.URL's rule) and RawQuery the query, both sent
	// on unchanged.
	Path, RawPath, RawQuery string
	// Header is the request's header. Filters may change it before the
	// first attempt; every attempt sends a clean copy of it.
	Header        http.Header
	Body          io.ReadCloser // nil or http.NoBody: none
	ContentLength int64         // -1: unknown
	ProtoMajor    int
	Upgrade       string // the protocol an HTTP/1.1 request upgrades to, or ""
	RemoteAddr    string
	// PeerID is the caller's verified SPIFFE ID (inbound only).
	PeerID string
	// Plaintext marks an inbound request that arrived without mTLS (its
	// service is PERMISSIVE); PeerID is then empty, and metrics label it
	// mtls="false".
	Plaintext bool

	// What the pipeline chose.
	Service *service // outbound: the service the host names
	Port    uint32   // the service port (outbound) or local port (inbound)
	Route   *route
	// matched is the match of Route that selected the request (nil for a
	// route without matches): URL rewrite's ReplacePrefixMatch needs it.
	matched  *match
	Backend  *backend
	Endpoint *lb.Endpoint
	Tried    []*lb.Endpoint // endpoints of earlier attempts
	Attempts int
	// anyEndpoint lets a retry go to an endpoint already tried when every
	// one has been (a retry policy's retries; the connect-failure retry
	// wants another endpoint or none).
	anyEndpoint bool

	// How it went.
	Flags Flags
	// Start is when the request arrived, Responded when its response
	// header was ready to send (set by the telemetry filter).
	Start, Responded time.Time
	// waited says a stage before the first pick waited (for a
	// subscription, an injected delay): Start is then no longer "now" for
	// the balancer, which otherwise takes it instead of reading the clock.
	// A stage that may wait before the pick sets it.
	waited bool
	// err is the last attempt's error (nil when an upstream answered); the
	// retry filter decides on it.
	err error

	ctx, clientCtx context.Context
	// dialed is how long the current attempt spent making its upstream
	// connection (NoteDial), left out of the balancer's latency sample.
	dialed time.Duration
	// cancels are called when the exchange ends.
	cancels []context.CancelFunc
	// timeouts are the route timeouts' contexts (timeout_ctx.go), by
	// nesting depth (request, attempt), kept across pooled uses; armed
	// says which this exchange used, depth how many are running.
	timeouts [2]*timeoutCtx
	home     *exchangePool // where release returns it
	armed    [2]bool
	depth    int
	// metrics are the destination service's resilience counters.
	metrics *telemetry.DestMetrics
	// series is where the exchange is counted, moved along as the
	// pipeline learns the destination: the listener's "unknown", the
	// service, the route's backend, the endpoint's identity. Inbound,
	// sources picks it by caller when the exchange is counted.
	series  *telemetry.Series
	sources *telemetry.Sources
	active  prometheus.Gauge
	// raw marks an opaque TCP connection (no HTTP request to count).
	raw bool
	// host and hostPort, when set by an upstream listener's edge, name the
	// destination instead of Authority.
	host     string
	hostPort uint32
	// cfg is the snapshot the exchange started with.
	cfg *compiled
	// target is the inbound port's spec, set by the local port stage.
	target portSpec
	// peerIDHdr is {PeerID}, cached per connection.
	peerIDHdr []string
	// resp holds the upstream's response, so answering allocates none.
	resp    Response
	reqBody *clientBody // Body's wrapper when the request has one
	peer    *peer
	lbReq   lb.Request
	body    countedBody
	brk     breakerBody
	triedBk [2]*lb.Endpoint
	// out is the first attempt's outgoing header and URL, kept across
	// pooled uses so a request allocates neither; see lendOut.
	out     *outgoing
	outLent bool
	// obs is the span and access log state (observe_filter.go).
	obs observation
	// tap is the state of a request a tap may want (tap_filter.go).
	tap tapObservation
	// stats takes the exchange into the windowed summaries (stats_record.go).
	stats *proxyStats
}

// outgoing is the reusable part of one attempt's *http.Request.
type outgoing struct {
	header http.Header
	url    url.URL
}

// lendOut returns storage for one attempt's header and URL. The first
// attempt of an exchange gets the exchange's own, cleared; later attempts
// (retries, which may overlap a transport still reading the first) get
// fresh ones. net/http may read a request until its response body is
// closed, which the writer does before release, so a lent outgoing is
// free again once the exchange is released — unless its attempt failed
// without a response, when the transport may still hold it: forgetOut
// drops it then.
func (ex *Exchange) lendOut(n int) *outgoing {
	if ex.outLent || ex.out == nil {
		o := &outgoing{header: make(http.Header, n)}
		if !ex.outLent {
			ex.out, ex.outLent = o, true
		}
		return o
	}
	ex.outLent = true
	clear(ex.out.header)
	return ex.out
}

// forgetOut stops the exchange from reusing the outgoing it lent.
func (ex *Exchange) forgetOut() { ex.out = nil }

// Context is the exchange's context: canceled when the client goes away,
// the proxy gives up on it, or a timeout expires.
func (ex *Exchange) Context() context.Context { return ex.ctx }

// NoteDial is http1.DialNoter: the attempt made its connection in d.
func (ex *Exchange) NoteDial(d time.Duration) { ex.dialed += d }

// exchangePool pools exchanges, one per proxy (as for its timers): a
// pooled exchange keeps what its timeouts made (their Done channels, see
// timeout_ctx.go) for the next request, and a testing/synctest bubble
// refuses a channel made in another.
type exchangePool struct{ pool sync.Pool }

func (xp *exchangePool) get() *Exchange {
	ex, _ := xp.pool.Get().(*Exchange)
	if ex == nil {
		ex = new(Exchange)
	}
	ex.home = xp
	ex.Tried = ex.triedBk[:0]
	return ex
}

// release ends the exchange's contexts and returns it to the pool.
func (ex *Exchange) release() {
	for _, c := range ex.cancels {
		c()
	}
	clear(ex.cancels) // a pooled exchange keeps no context alive
	if ex.reqBody != nil {
		ex.reqBody.end()
	}
	ex.finishTimeouts()
	cancels, out, timeouts, home := ex.cancels[:0], ex.out, ex.timeouts, ex.home
	*ex = Exchange{cancels: cancels, out: out, timeouts: timeouts}
	if home != nil {
		home.pool.Put(ex)
	}
}

// bodiless reports whether the request carries no body, so sending it again
// cannot duplicate one.
func (ex *Exchange) bodiless() bool {
	return ex.ContentLength == 0 && ex.Upgrade == "" && ex.Method != http.MethodConnect
}

// Response is what a handler returns and the listener edge writes: the only
// place that writes to the client.
type Response struct {
	Status int
	Header http.Header
	// Body is streamed to the client; nil means none. The writer always
	// closes it.
	Body io.ReadCloser
	// ContentLength -1 means unknown: the body is a stream (gRPC, server-sent
	// events) and every chunk is flushed as it comes.
	ContentLength int64
	// Trailer points to the trailers, which are known only once Body has
	// returned io.EOF (the transport may replace the map then); nil: none.
	Trailer *http.Header
	// Upgraded is the upstream side of a 101 Switching Protocols or of a
	// CONNECT/TCP tunnel (Status 200): the writer splices the client to it.
	Upgraded io.ReadWriteCloser
}

// Flags say why an exchange ended as it did, in the spirit of Envoy's
// response flags; metrics carry them as the response_flags label ("-" for
// none). docs/metrics.md has the same table.
//
//	DPE  downstream protocol error: malformed Host/:authority, CONNECT
//	     without a port, malformed X-Trellis-Port           400
//	NC   no cluster: no snapshot names the service the host names (also
//	     after waiting for a subscription); a host outside the registry is
//	     the egress policy's (EG, or passed through)              503
//	NR   no route: an HTTPRoute is attached and no rule matches (outbound),
//	     or the port is not declared by this proxy's service (inbound) 404
//	UH   no healthy upstream: the backend has no endpoint      503
//	UF   upstream connection failure: dial, TLS or identity check failed;
//	     inbound: the local app refused the connection         502
//	UR   upstream reset: the upstream failed after the connection was made,
//	     before its response header (502) or mid-body (status as sent,
//	     client stream aborted)
//	UT   upstream timeout: the route's request or backend_request timeout
//	     expired before the response header                  504
//	DC   downstream closed: the client went away (499 before the header,
//	     else the status as sent)
//	NI   no identity: the inbound peer presented no SPIFFE ID  403
//	LA   no local app: this proxy fronts no app on that port  503
//	SD   shutting down: the proxy stopped while the request waited 503
//	UO   upstream overflow: the backend's circuit breaker (BackendPolicy
//	     circuitBreaker) refused the request, failing fast   503
//	FI   fault injected: the route's FaultInjection aborted the request
//	     (its status; a gRPC abort is 200 with grpc-status)
//	DI   delay injected: the route's FaultInjection delayed the request
//	     (with the status the request then got)
//	AZ   authorization denied: an AuthorizationPolicy (or the mesh
//	     default) refused the request                          403
//	     (gRPC: 200 with grpc-status 7, PERMISSION_DENIED)
//	RL   rate limited: a RateLimitPolicy refused the request      429
//	     (gRPC: 200 with grpc-status 8, RESOURCE_EXHAUSTED)
//	CL   concurrency limited: the inbound proxy's adaptive concurrency
//	     limit (ConcurrencyPolicy) shed the request          503
//	     (gRPC: 200 with grpc-status 14 UNAVAILABLE)
//	EG   egress refused: the host is neither a mesh service nor an
//	     ExternalService and the mesh's outbound traffic policy is
//	     REGISTRY_ONLY                        502 (CONNECT: 403); or a
//	     pass-through that came back to this proxy (a loop)    508
type Flags uint32

// The response flags; see Flags.
const (
	FlagDPE Flags = 1 << iota
	FlagNC
	FlagNR
	FlagUH
	FlagUF
	FlagUR
	FlagUT
	FlagDC
	FlagNI
	FlagLA
	FlagSD
	FlagUO
	FlagFI
	FlagDI
	FlagAZ
	FlagRL
	FlagCL
	FlagEG
	numFlags = iota
)

var flagNames = [numFlags]string{"DPE", "NC", "NR", "UH", "UF", "UR", "UT", "DC", "NI", "LA", "SD", "UO", "FI", "DI", "AZ", "RL", "CL", "EG"}

// String is the response_flags label value: "-", one flag, or several
// joined by commas as Envoy does.
func (f Flags) String() string {
	if f == 0 {
		return "-"
	}
	var parts []string
	for i := range numFlags {
		if f&(1<<i) != 0 {
			if f == 1<<i {
				return flagNames[i] // the usual case: one flag, no allocation
			}
			parts = append(parts, flagNames[i])
		}
	}
	return strings.Join(parts, ",")
}

// fail ends the exchange with a proxy-generated error: the flag says why,
// the body who refused and what to do. X-Trellis-Error carries the flag so
// the peer proxy's error is told apart from the app's.
func (ex *Exchange) fail(code int, f Flags, msg string) *Response {
	ex.Flags |= f
	// msg may quote what the client sent (host, path): bounded.
	body := "trellis proxy: " + echo.Clip(msg, maxErrorMessage) + "\n"
	return &Response{
		Status: code,
		Header: http.Header{
			"Content-Type":           textPlain,
			"X-Content-Type-Options": nosniff,
			headerError:              []string{f.String()},
			"Content-Length":         []string{strconv.Itoa(len(body))},
		},
		Body:          io.NopCloser(strings.NewReader(body)),
		ContentLength: int64(len(body)),
	}
}

// maxErrorMessage bounds the message of a proxy-generated error body.
const maxErrorMessage = 4 * echo.Max

var (
	textPlain = []string{"text/plain; charset=utf-8"}
	nosniff   = []string{"nosniff"}
)

// countedBody wraps a response body so the exchange is counted exactly once,
// when the body is done (closed), with the time the whole response took,
// the bytes sent and the gRPC status.
type countedBody struct {
	ex     *Exchange
	rc     io.ReadCloser // nil: no body
	resp   *Response
	status int
	n      int64
	done   bool
}

func (b *countedBody) Read(p []byte) (int, error) {
	if b.rc == nil {
		return 0, io.EOF
	}
	n, err := b.rc.Read(p)
	b.n += int64(n)
	if err != nil && err != io.EOF {
		// Mid-body: the upstream broke off, or the client went away and
		// took the upstream request's context with it.
		if b.ex.clientCtx.Err() != nil {
			b.ex.Flags |= FlagDC
		} else {
			b.ex.Flags |= FlagUR
		}
	}
	return n, err
}

func (b *countedBody) Close() error {
	var err error
	if b.rc != nil {
		err = b.rc.Close()
	}
	if !b.done {
		b.done = true
		b.ex.count(b)
	}
	return err
}

// requestBytes is the request body's size: its Content-Length, or what was
// read of a streamed one.
func (ex *Exchange) requestBytes() int64 {
	if ex.ContentLength < 0 && ex.reqBody != nil {
		return ex.reqBody.n.Load()
	}
	return max(ex.ContentLength, 0)
}

// count records the finished exchange.
func (ex *Exchange) count(b *countedBody) {
	if ex.active != nil {
		ex.active.Dec()
	}
	if ex.raw {
		return
	}
	s := ex.series
	if ex.sources != nil {
		s = ex.sources.Series(headerValue1(ex.Header, headerSource), ex.PeerID)
	}
	end := time.Now()
	s.Request(telemetry.Result{
		Code:          b.status,
		GRPCStatus:    telemetry.GRPCStatus(grpcStatusOf(b.resp)),
		Flags:         ex.Flags.String(),
		MTLS:          !ex.Plaintext,
		Duration:      end.Sub(ex.Start),
		RequestBytes:  ex.requestBytes(),
		ResponseBytes: b.n,
	})
	ex.recordStats(s, b.status, end)
}

// grpcStatusOf is the response's grpc-status: from the trailers, or the
// header of a trailers-only response.
func grpcStatusOf(r *Response) string {
	if r == nil {
		return ""
	}
	if r.Trailer != nil {
		if v := headerValue1(*r.Trailer, "Grpc-Status"); v != "" {
			return v
		}
	}
	return headerValue1(r.Header, "Grpc-Status")
}

// headerValue1 is h's first value of the canonical name k, or "".
func headerValue1(h http.Header, k string) string {
	if vv := h[k]; len(vv) > 0 {
		return vv[0]
	}
	return ""
}

// tcpSeries is the tunnel series of a CONNECT exchange's service (nil when
// none was resolved).
func (ex *Exchange) tcpSeries() *telemetry.TCPSeries {
	if ex.Service == nil {
		return nil
	}
	return ex.Service.tcp
}
