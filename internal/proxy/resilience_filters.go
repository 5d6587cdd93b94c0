package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/lb"
	"trellis.dev/trellis/internal/resilience"
)

// The route chain's resilience filters (chain.go): retry, circuit breaker
// and outlier detection, driven by each service's BackendPolicy. The
// algorithms are internal/resilience's; this file compiles the policy and
// applies them to exchanges.

// retryMode says what the retry filter does for a service's requests.
type retryMode uint8

const (
	// retryConnectOnly: no retry policy. A bodiless request whose
	// connection could not be made (so it reached no app) goes once more to
	// another endpoint; nothing else is retried.
	retryConnectOnly retryMode = iota
	// retryOff: a policy with attempts: 0.
	retryOff
	// retryPolicyMode: the BackendPolicy's retry policy.
	retryPolicyMode
)

// retryPolicy is a compiled meshv1.RetryPolicy.
type retryPolicy struct {
	mode          retryMode
	attempts      int
	codes         [2]uint64 // bit s-500 set: status s (500..599) is retried
	grpc          uint32    // bit c set: gRPC status c is retried
	nonIdempotent bool
	backoff       resilience.Backoff
	budget        *resilience.Budget
	maxBody       int64
	perTry        time.Duration
}

func (pol *retryPolicy) retriesStatus(s int) bool {
	if s < 500 || s > 599 {
		return false
	}
	i := s - 500
	return pol.codes[i/64]&(1<<(i%64)) != 0
}

// serviceResilience is one service's long-lived resilience state, kept
// across snapshots while its policy is unchanged (a budget keeps its
// window, a breaker its in-flight counts, a detector its ejection counts).
type serviceResilience struct {
	pol      *meshv1.BackendPolicy // what it was built from
	retry    *retryPolicy
	breaker  *resilience.Breaker  // nil: no limits
	detector *resilience.Detector // nil: no outlier detection
}

// resilienceSpec is a checked policy, not yet bound to long-lived state.
type resilienceSpec struct {
	pol     *meshv1.BackendPolicy
	retry   retryPolicy
	budget  [3]float64 // ratio, min per second, ttl (ns)
	limits  *resilience.Limits
	outlier *resilience.OutlierConfig
}

// compileResilience checks a service's backend policy (the parts this file
// owns) and returns its spec; the field names of errors are the proto's.
func compileResilience(f string, bp *meshv1.BackendPolicy) (*resilienceSpec, error) {
	rs := &resilienceSpec{pol: bp}
	f += ".backend_policy"
	if err := rs.compileRetry(f+".retry", bp.GetRetry()); err != nil {
		return nil, err
	}
	if cb := bp.GetCircuitBreaker(); cb != nil {
		rs.limits = &resilience.Limits{MaxConnections: cb.GetMaxConnections(), MaxPending: cb.GetMaxPendingRequests(), MaxRequests: cb.GetMaxRequests()}
	}
	if od := bp.GetOutlierDetection(); od != nil {
		cfg := resilience.OutlierConfig{
			Consecutive5xx:           od.GetConsecutive_5Xx(),
			ConsecutiveGatewayErrors: od.GetConsecutiveGatewayErrors(),
			MaxEjectionPercent:       od.GetMaxEjectionPercent(),
		}
		var err error
		if cfg.BaseEjection, err = positive(f+".outlier_detection.base_ejection_time", od.GetBaseEjectionTime()); err != nil {
			return nil, err
		}
		if cfg.MaxEjection, err = positive(f+".outlier_detection.max_ejection_time", od.GetMaxEjectionTime()); err != nil {
			return nil, err
		}
		if cfg.MaxEjectionPercent > 100 {
			return nil, invalid("%s.outlier_detection.max_ejection_percent: %d is over 100", f, cfg.MaxEjectionPercent)
		}
		rs.outlier = &cfg
	}
	return rs, nil
}

func (rs *resilienceSpec) compileRetry(f string, r *meshv1.RetryPolicy) error {
	if r == nil {
		rs.retry.mode = retryConnectOnly
		return nil
	}
	if r.GetAttempts() == 0 {
		rs.retry.mode = retryOff
		return nil
	}
	if r.GetAttempts() > 10 {
		return invalid("%s.attempts: %d is over 10", f, r.GetAttempts())
	}
	pol := retryPolicy{mode: retryPolicyMode, attempts: int(r.GetAttempts()), nonIdempotent: r.GetRetryNonIdempotent(), maxBody: int64(r.GetMaxBodyBytes())}
	for i, c := range r.GetStatusCodes() {
		if c < 500 || c > 599 {
			return invalid("%s.status_codes[%d]: %d is not a 5xx status", f, i, c)
		}
		pol.codes[(c-500)/64] |= 1 << ((c - 500) % 64)
	}
	for i, c := range r.GetGrpcStatuses() {
		if c == 0 || c > 16 {
			return invalid("%s.grpc_statuses[%d]: %d is not a gRPC error status (1..16)", f, i, c)
		}
		pol.grpc |= 1 << c
	}
	var err error
	if r.GetPerTryTimeout() != nil {
		if pol.perTry, err = positive(f+".per_try_timeout", r.GetPerTryTimeout()); err != nil {
			return err
		}
	}
	if pol.backoff.Base, err = positive(f+".backoff_base", r.GetBackoffBase()); err != nil {
		return err
	}
	if pol.backoff.Max, err = positive(f+".backoff_max", r.GetBackoffMax()); err != nil {
		return err
	}
	b := r.GetBudget()
	ttl, err := positive(f+".budget.ttl", b.GetTtl())
	if err != nil {
		return err
	}
	if x := b.GetRetryRatio(); math.IsNaN(x) || x < 0 || x > 1000 {
		return invalid("%s.budget.retry_ratio: %v is not in [0, 1000]", f, x)
	}
	rs.budget = [3]float64{b.GetRetryRatio(), float64(b.GetMinRetriesPerSecond()), float64(ttl)}
	rs.retry = pol
	return nil
}

// positive reads a duration that must be set and positive.
func positive(f string, d *durationpb.Duration) (time.Duration, error) {
	if d == nil {
		return 0, invalid("%s: required (the control plane fills every default)", f)
	}
	if err := d.CheckValid(); err != nil || d.AsDuration() <= 0 {
		return 0, invalid("%s: %v is not a positive duration", f, d)
	}
	return d.AsDuration(), nil
}

// bind returns the service's long-lived state for rs: old's pieces where
// their part of the policy is unchanged, new ones otherwise.
func (rs *resilienceSpec) bind(old *serviceResilience) *serviceResilience {
	sr := &serviceResilience{pol: rs.pol}
	retry := rs.retry
	sr.retry = &retry
	if retry.mode == retryPolicyMode {
		if old != nil && old.retry.budget != nil && proto.Equal(old.pol.GetRetry().GetBudget(), rs.pol.GetRetry().GetBudget()) {
			retry.budget = old.retry.budget
		} else {
			retry.budget = resilience.NewBudget(rs.budget[0], uint32(rs.budget[1]), time.Duration(rs.budget[2]))
		}
	}
	if rs.limits != nil {
		if old != nil && old.breaker != nil && old.breaker.Limits() == *rs.limits {
			sr.breaker = old.breaker
		} else {
			sr.breaker = resilience.NewBreaker(*rs.limits)
		}
	}
	if rs.outlier != nil {
		if old != nil && old.detector != nil && old.detector.Config() == *rs.outlier {
			sr.detector = old.detector
		} else {
			sr.detector = resilience.NewDetector(*rs.outlier)
		}
	}
	return sr
}

// retryFilter sends a failed request again as the service's retry policy
// allows; the retry sees the failed response before the client does.
func retryFilter(pol *retryPolicy) Filter {
	return func(next Handler) Handler {
		switch pol.mode {
		case retryOff:
			return next
		case retryConnectOnly:
			return connectRetry(next)
		}
		return HandlerFunc(func(ex *Exchange) *Response { return pol.serve(ex, next) })
	}
}

// serve runs the first attempt and the retries the policy, the body and
// the budget allow.
func (pol *retryPolicy) serve(ex *Exchange, next Handler) *Response {
	pol.budget.Deposit()
	if !pol.eligible(ex) {
		return next.Serve(ex)
	}
	replay, resp := prepareReplay(ex, pol.maxBody)
	if resp != nil {
		return resp
	}
	flags := ex.Flags
	ex.anyEndpoint = true
	resp = next.Serve(ex)
	for n := 1; n <= pol.attempts && pol.retriable(ex, resp); n++ {
		if !replay.rewind(ex) {
			break
		}
		if !pol.budget.Withdraw() {
			ex.metrics.RetryDenied()
			break
		}
		if resp.Body != nil {
			_ = resp.Body.Close()
		}
		if !sleep(ex.ctx, pol.backoff.Delay(n, rand.Int64N)) {
			return ex.fail(http.StatusGatewayTimeout, FlagUT, "the route's timeout expired between retries")
		}
		ex.Flags, ex.err = flags, nil
		ex.metrics.Retry()
		resp = next.Serve(ex)
	}
	return resp
}

// eligible: upgrades and CONNECT are never retried; non-idempotent methods
// only when the policy says so; bodies over the bound are sent once.
func (pol *retryPolicy) eligible(ex *Exchange) bool {
	if ex.Upgrade != "" || ex.Method == http.MethodConnect {
		return false
	}
	if !idempotent(ex.Method) && !pol.nonIdempotent {
		return false
	}
	return ex.ContentLength <= pol.maxBody
}

// idempotent is RFC 9110's list of idempotent methods.
func idempotent(m string) bool {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// retriable reports whether the attempt failed in a way the policy
// retries: a connection failure (here or, X-Trellis-Error: UF, at the peer
// proxy's app), a reset or refused stream, a per-try timeout, a listed
// status, or a listed gRPC status in a trailers-only response. Never when
// the client left, the request's own timeout expired, a circuit breaker
// refused (retrying an overflow would only add load) or the backend has no
// endpoint.
func (pol *retryPolicy) retriable(ex *Exchange, resp *Response) bool {
	// UH: the backend has no endpoint at all; another try finds none either.
	if ex.clientCtx.Err() != nil || ex.ctx.Err() != nil || ex.Flags&(FlagUO|FlagUH) != 0 || resp.Upgraded != nil {
		return false
	}
	if ex.err != nil {
		return !errors.Is(ex.err, errAllTried)
	}
	if pol.retriesStatus(resp.Status) || peerConnectFailure(resp) {
		return true
	}
	if pol.grpc != 0 {
		if v := resp.Header["Grpc-Status"]; len(v) == 1 {
			c, ok := parsePort(v[0]) // a small decimal, parsed without allocating
			return ok && c <= 16 && pol.grpc&(1<<c) != 0
		}
	}
	return false
}

// peerConnectFailure: the peer proxy says its app refused the connection,
// so the app never saw the request.
func peerConnectFailure(resp *Response) bool {
	if resp.Status != http.StatusBadGateway {
		return false
	}
	v := resp.Header[headerError]
	return len(v) == 1 && v[0] == "UF"
}

// sleep waits d, or reports false if ctx ends first.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// replay makes a request body sendable again. A body of known length up to
// the bound is read whole before the first attempt (a client sends a
// fixed-length body without waiting for an answer). A body of unknown
// length (chunked, HTTP/2 and gRPC streams) is streamed to the first
// attempt and copied on the way, up to the bound: it can be replayed only
// if the first attempt read it to its end — waiting for more of a stream
// before sending anything could deadlock a client that waits for a reply.
type replay struct {
	buf []byte   // the whole body, when known up front
	tee *teeBody // the copy of a streamed body
}

// prepareReplay readies ex's body for replay, or answers the exchange when
// reading the client's body failed.
func prepareReplay(ex *Exchange, maxBody int64) (replay, *Response) {
	switch {
	case ex.ContentLength == 0 || ex.Body == nil || ex.Body == http.NoBody:
		return replay{}, nil
	case ex.ContentLength > 0:
		buf := make([]byte, ex.ContentLength)
		if _, err := io.ReadFull(ex.Body, buf); err != nil {
			if ex.clientCtx.Err() != nil {
				return replay{}, ex.fail(statusClientClosed, FlagDC, "client went away")
			}
			return replay{}, ex.fail(http.StatusBadRequest, FlagDPE, "request body: "+err.Error())
		}
		ex.Body = bufferedBody(buf)
		return replay{buf: buf}, nil
	}
	t := &teeBody{src: ex.Body, max: int(maxBody)}
	ex.Body = t
	return replay{tee: t}, nil
}

// rewind gives ex a fresh copy of the body, or reports false when it
// cannot be replayed.
func (r replay) rewind(ex *Exchange) bool {
	switch {
	case r.buf != nil:
		ex.Body = bufferedBody(r.buf)
	case r.tee != nil:
		buf, ok := r.tee.complete()
		if !ok {
			return false
		}
		ex.Body, ex.ContentLength = bufferedBody(buf), int64(len(buf))
	}
	return true
}

func bufferedBody(b []byte) io.ReadCloser { return io.NopCloser(bytes.NewReader(b)) }

// teeBody passes a streamed body through to one attempt, keeping a copy of
// up to max bytes. Only that attempt's transport reads it; complete may be
// called concurrently and never waits for the client.
type teeBody struct {
	src io.ReadCloser
	max int

	mu       sync.Mutex
	buf      []byte
	eof      bool // src is done and buf holds all of it
	overflow bool // src gave more than max, or failed
}

func (t *teeBody) Read(p []byte) (int, error) {
	n, err := t.src.Read(p)
	t.mu.Lock()
	if !t.overflow && !t.eof {
		if len(t.buf)+n > t.max {
			t.overflow, t.buf = true, nil
		} else {
			t.buf = append(t.buf, p[:n]...)
		}
		switch {
		case err == io.EOF:
			t.eof = !t.overflow
		case err != nil:
			t.overflow, t.buf = true, nil
		}
	}
	t.mu.Unlock()
	return n, err
}

// Close does not close the client's body: a retry may still need what the
// first attempt did not read, and the listener edge owns it.
func (t *teeBody) Close() error { return nil }

// complete returns the whole body if the first attempt read all of it.
func (t *teeBody) complete() ([]byte, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.buf, t.eof
}

// errAllTried marks an attempt that found no endpoint it had not tried.
var errAllTried = errors.New("proxy: every endpoint tried")

// connectRetry is the retry of a service without a retry policy: a
// bodiless request that reached no app goes once more, to an endpoint not
// yet tried; with none left the client hears of the real failure.
func connectRetry(next Handler) Handler {
	return HandlerFunc(func(ex *Exchange) *Response {
		flags := ex.Flags
		resp := next.Serve(ex)
		if !ex.bodiless() || !neverArrived(ex, resp) || ex.clientCtx.Err() != nil {
			return resp
		}
		first, firstFlags, firstErr := *resp, ex.Flags, ex.err
		ex.Flags, ex.err = flags, nil
		resp = next.Serve(ex)
		if errors.Is(ex.err, errAllTried) {
			ex.Flags, ex.err = firstFlags, firstErr
			return &first
		}
		if first.Body != nil {
			_ = first.Body.Close()
		}
		return resp
	})
}

// neverArrived reports whether the attempt certainly reached no app: this
// proxy could not connect to the endpoint, or the peer proxy says its app
// refused the connection.
func neverArrived(ex *Exchange, resp *Response) bool {
	if ex.err != nil {
		var de *DialError // escapes to errors.As: only on the error path
		return errors.As(ex.err, &de)
	}
	return peerConnectFailure(resp)
}

// breakerFilter enforces the circuit breaker of the backend the split
// chose: over a limit the request fails fast with 503 UO. It holds the
// request's slot until the response body is closed. A route none of whose
// backends has a breaker gets next itself.
func (p *Proxy) breakerFilter(rt *route) Filter {
	return func(next Handler) Handler {
		some := false
		for i := range rt.backends {
			some = some || rt.backends[i].svc.res.breaker != nil
		}
		if !some {
			return next
		}
		return HandlerFunc(func(ex *Exchange) *Response {
			svc := ex.Backend.svc
			b := svc.res.breaker
			if b == nil {
				return next.Serve(ex)
			}
			own := !p.peerH2(ex)
			if err := b.Acquire(ex.ctx, own); err != nil {
				svc.metrics.Overflow(overflowLimit(err))
				return ex.fail(http.StatusServiceUnavailable, FlagUO, "circuit breaker of "+svc.key+": "+err.Error()+" (BackendPolicy circuitBreaker)")
			}
			resp := next.Serve(ex)
			if resp.Body == nil || resp.Upgraded != nil {
				b.Release(own)
				return resp
			}
			ex.brk = breakerBody{rc: resp.Body, b: b, own: own}
			resp.Body = &ex.brk
			return resp
		})
	}
}

func overflowLimit(err error) string {
	switch {
	case errors.Is(err, resilience.ErrMaxPending):
		return "max_pending_requests"
	case errors.Is(err, resilience.ErrMaxConnections):
		return "max_connections"
	}
	return "max_requests"
}

// breakerBody releases the breaker's slot when the response body is done.
type breakerBody struct {
	rc   io.ReadCloser
	b    *resilience.Breaker
	own  bool
	done bool
}

func (bb *breakerBody) Read(p []byte) (int, error) { return bb.rc.Read(p) }

func (bb *breakerBody) Close() error {
	err := bb.rc.Close()
	if !bb.done {
		bb.done = true
		bb.b.Release(bb.own)
	}
	return err
}

// outlierFilter tells the backend's outlier detector how each attempt on
// an endpoint went, and ejects the endpoint from balancing when the
// detector says so. A route none of whose backends detects gets next.
func (p *Proxy) outlierFilter(rt *route) Filter {
	return func(next Handler) Handler {
		some := false
		for i := range rt.backends {
			some = some || rt.backends[i].svc.res.detector != nil
		}
		if !some {
			return next
		}
		return HandlerFunc(func(ex *Exchange) *Response {
			resp := next.Serve(ex)
			svc := ex.Backend.svc
			d := svc.res.detector
			if d == nil || ex.clientCtx.Err() != nil {
				return resp
			}
			h := svc.hostOf(ex.Endpoint)
			if h == nil {
				return resp
			}
			s := resp.Status
			gateway := ex.err != nil || s == http.StatusBadGateway || s == http.StatusServiceUnavailable || s == http.StatusGatewayTimeout
			if d.Observe(h, svc.hosts, s, gateway) {
				svc.metrics.Ejection()
				p.log.Info("outlier ejected", "service", svc.key, "endpoint", ex.Endpoint.Addr(), "status", s)
			}
			return resp
		})
	}
}

// hostOf returns e's outlier state (svc.hosts parallels svc.eps).
func (s *service) hostOf(e *lb.Endpoint) *resilience.Host {
	for i, x := range s.eps {
		if x == e && i < len(s.hosts) {
			return s.hosts[i]
		}
	}
	return nil
}

// resilienceState is the proxy's long-lived resilience state per service
// and per endpoint, like its pickers and endpoints (guarded by updateMu).
type resilienceState struct {
	services map[string]*serviceResilience
	hosts    map[endpointKey]*resilience.Host
}

func newResilienceState() resilienceState {
	return resilienceState{services: map[string]*serviceResilience{}, hosts: map[endpointKey]*resilience.Host{}}
}

// service binds rs for the service key, reusing what is unchanged.
func (st *resilienceState) service(key string, rs *resilienceSpec) *serviceResilience {
	sr := rs.bind(st.services[key])
	st.services[key] = sr
	return sr
}

// host returns the outlier state of endpoint e of service key.
func (st *resilienceState) host(key string, e *lb.Endpoint) *resilience.Host {
	k := endpointKey{key, e.Addr()}
	if h := st.hosts[k]; h != nil && h.Of(e) {
		return h
	}
	h := resilience.NewHost(e)
	st.hosts[k] = h
	return h
}

// forget keeps only the state of c, the live snapshot (a refused one may
// have bound some).
func (st *resilienceState) forget(c *compiled) {
	live := map[*resilience.Host]bool{}
	clear(st.services)
	for key, svc := range c.byKey {
		for _, h := range svc.hosts {
			live[h] = true
		}
		st.services[key] = svc.res
	}
	for k, h := range st.hosts {
		if !live[h] {
			delete(st.hosts, k)
		}
	}
}
