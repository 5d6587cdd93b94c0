package proxy

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"time"

	"trellis.dev/trellis/internal/lb"
	"trellis.dev/trellis/internal/meshname"
)

// The filters of chain.go, in chain order. Each does one thing.

// telemetryFilter counts every exchange once, when its response body is
// done, whatever the rest of the chain answered (refusals included), with
// the bytes read from and sent to the caller.
func telemetryFilter(next Handler) Handler {
	return HandlerFunc(func(ex *Exchange) *Response {
		if !ex.raw {
			if ex.active != nil {
				ex.active.Inc()
			}
		}
		resp := next.Serve(ex)
		ex.Responded = time.Now()
		ex.body = countedBody{ex: ex, rc: resp.Body, resp: resp, status: resp.Status}
		resp.Body = &ex.body
		return resp
	})
}

// noTelemetry is the telemetry slot with --disable-metrics: nothing
// counted, nothing wrapped.
func noTelemetry(next Handler) Handler { return next }

// resolveFilter finds the service the request names (Host, :authority, the
// CONNECT target or the upstream listener's service), asking the control
// plane and waiting, bounded, when the snapshot lacks it.
func (p *Proxy) resolveFilter(next Handler) Handler {
	return HandlerFunc(func(ex *Exchange) *Response {
		if ex.Service != nil {
			return next.Serve(ex)
		}
		host, port := ex.host, ex.hostPort
		if host == "" {
			var err error
			host, port, err = splitAuthority(ex.Authority)
			if err != nil {
				return ex.fail(http.StatusBadRequest, FlagDPE, "malformed Host "+strconv.Quote(ex.Authority))
			}
			if port == 0 && ex.Method == http.MethodConnect {
				return ex.fail(http.StatusBadRequest, FlagDPE, "CONNECT needs host:port of a mesh service")
			}
		}
		svc, f, msg := p.resolve(ex.ctx, host)
		// resolve waits only for a new snapshot: with one since the
		// request began, it may have waited.
		ex.waited = ex.waited || ex.cfg != p.cfg.Load()
		if svc == nil && f == 0 {
			// Outside the registry: the egress policy decides.
			ex.host, ex.hostPort = host, port
			return next.Serve(ex)
		}
		if svc == nil {
			code := http.StatusServiceUnavailable
			if f == FlagDC {
				code = statusClientClosed
			}
			return ex.fail(code, f, msg)
		}
		ex.Service, ex.metrics, ex.series = svc, svc.metrics, svc.noRoute
		if port == 0 {
			port = svc.defPort
		}
		ex.Port = port
		return next.Serve(ex)
	})
}

// statusClientClosed is recorded (never sent: nobody is listening) for a
// client that went away before its response, as nginx does.
const statusClientClosed = 499

// resolve returns the service host names, or nil with the flag and reason;
// nil and no flag for a host outside the registry: neither of the mesh's
// form (egressConfig.meshForm) nor an ExternalService's host.
func (p *Proxy) resolve(ctx context.Context, host string) (*service, Flags, string) {
	c := p.cfg.Load()
	if svc := c.byHost[host]; svc != nil {
		return svc, 0, ""
	}
	key, external := c.egress.external[host]
	if !external {
		name, ns, ok := meshname.ParseHost(host, p.opts.Namespace, c.domain)
		if !ok || !c.egress.meshForm(host, ns, p.opts.Namespace) {
			return nil, 0, ""
		}
		key = name + "." + ns
	}
	if svc := c.byKey[key]; svc != nil {
		return svc, 0, ""
	}
	if p.opts.Subscribe != nil {
		if _, seen := p.subscribed.LoadOrStore(key, struct{}{}); !seen {
			p.opts.Subscribe(key)
		}
	}
	t := time.NewTimer(p.subscribeWait)
	defer t.Stop()
	for {
		select {
		case <-c.changed:
		case <-t.C:
			return nil, FlagNC, "service " + key + " is unknown to the mesh (no snapshot contains it)"
		case <-ctx.Done():
			return nil, FlagDC, "request canceled"
		case <-p.done:
			return nil, FlagSD, "proxy is shutting down"
		}
		c = p.cfg.Load()
		if svc := c.byHost[host]; svc != nil {
			return svc, 0, ""
		}
		if svc := c.byKey[key]; svc != nil {
			return svc, 0, ""
		}
	}
}

// routeDispatch matches the service's routes and runs the matching route's
// compiled chain.
type routeDispatch struct{}

func (routeDispatch) Serve(ex *Exchange) *Response {
	rt := ex.Service.match(ex, ex.Port)
	if rt == nil {
		return ex.fail(http.StatusNotFound, FlagNR, "no route of "+ex.Service.key+" matches "+ex.Method+" "+ex.Path)
	}
	ex.Route, ex.series = rt, rt.series
	return rt.handler.Serve(ex)
}

// headerModifier is a compiled Gateway API HTTPHeaderFilter.
type headerModifier struct {
	set, add []headerValue
	remove   []string // canonical names
}

type headerValue struct {
	name  string   // canonical
	value []string // one value, shared by every request
}

// apply modifies h: set replaces, add appends, remove deletes.
func (m *headerModifier) apply(h http.Header) {
	for _, s := range m.set {
		h[s.name] = s.value
	}
	for _, a := range m.add {
		if old := h[a.name]; len(old) > 0 {
			// A new slice: old may share its array with another header.
			h[a.name] = append(old[:len(old):len(old)], a.value[0])
		} else {
			h[a.name] = a.value
		}
	}
	for _, r := range m.remove {
		delete(h, r)
	}
}

// requestHeaderFilter applies the route's request header modifiers once,
// before the first attempt (every attempt then copies the result).
func requestHeaderFilter(ms []headerModifier) Filter {
	return func(next Handler) Handler {
		if len(ms) == 0 {
			return next
		}
		return HandlerFunc(func(ex *Exchange) *Response {
			for i := range ms {
				ms[i].apply(ex.Header)
			}
			return next.Serve(ex)
		})
	}
}

// responseHeaderFilter applies the route's response header modifiers to
// whatever response comes back, the proxy's own errors included.
func responseHeaderFilter(ms []headerModifier) Filter {
	return func(next Handler) Handler {
		if len(ms) == 0 {
			return next
		}
		return HandlerFunc(func(ex *Exchange) *Response {
			resp := next.Serve(ex)
			if resp.Upgraded != nil && resp.Status != http.StatusSwitchingProtocols {
				return resp
			}
			if resp.Header == nil {
				resp.Header = make(http.Header)
			}
			for i := range ms {
				ms[i].apply(resp.Header)
			}
			return resp
		})
	}
}

// requestTimeout bounds the whole request, retries included, until the
// response header arrives (Gateway API timeouts.request): then 504 UT.
// Each timer is made for its request.
func requestTimeout(d time.Duration) Filter { return timeoutFilter(d, nil) }

// timeoutFilter is a timeout whose timers come from timers (a proxy's
// pool) when not nil, sparing a timer allocation per request. The route
// chain uses it for timeouts.request (before retry) and
// timeouts.backendRequest (each attempt).
func timeoutFilter(d time.Duration, timers *sync.Pool) Filter {
	return func(next Handler) Handler {
		if d <= 0 {
			return next
		}
		return HandlerFunc(func(ex *Exchange) *Response { return withTimeout(ex, d, next, timers) })
	}
}

// withTimeout runs next under a context canceled if d passes before next
// returns (the response header): the upstream stage then answers 504 UT.
// The body may take its time: the timer is stopped, and the context lives
// until the exchange ends.
func withTimeout(ex *Exchange, d time.Duration, next Handler, timers *sync.Pool) *Response {
	parent := ex.ctx
	tc := ex.startTimeout(parent, d)
	ex.ctx = tc
	ex.depth++
	defer func() { ex.depth--; ex.ctx = parent }()
	if timers == nil {
		t := time.AfterFunc(d, tc.onTimer)
		resp := next.Serve(ex)
		t.Stop()
		return resp
	}
	et, _ := timers.Get().(*exTimer)
	if et == nil {
		et = new(exTimer)
	}
	et.arm(d, tc.onTimer)
	resp := next.Serve(ex)
	et.disarm()
	timers.Put(et)
	return resp
}

// exTimer is a reusable timeout timer. A proxy pools its own (Proxy.timers),
// not the package's exchanges': a timer belongs to the goroutines that made
// it (a testing/synctest bubble refuses one reset from outside).
//
// It is lazy: resetting and stopping a runtime timer on every request cost
// two timer changes per route timeout, where nearly every request ends long
// before its timeout. Disarming only forgets the cancel; arming leaves a
// pending timer alone when it is due no later than the new deadline. A
// timer that fires before the deadline armed since re-arms itself for the
// rest, and one that finds itself disarmed stops.
type exTimer struct {
	t *time.Timer

	mu       sync.Mutex
	cancel   func() // nil: disarmed
	deadline time.Time
	due      time.Time // when t fires; zero: not pending
}

func (et *exTimer) arm(d time.Duration, cancel func()) {
	deadline := time.Now().Add(d)
	et.mu.Lock()
	et.cancel, et.deadline = cancel, deadline
	if !et.due.IsZero() && !et.due.After(deadline) {
		et.mu.Unlock()
		return // fires first, and re-arms for the rest
	}
	et.due = deadline
	et.mu.Unlock()
	if et.t == nil {
		et.t = time.AfterFunc(d, et.fire)
	} else {
		et.t.Reset(d)
	}
}

// fire cancels the armed context when its deadline has come; an arming
// whose deadline is still ahead gets the timer again for the rest.
func (et *exTimer) fire() {
	et.mu.Lock()
	c := et.cancel
	if c == nil {
		et.due = time.Time{}
		et.mu.Unlock()
		return
	}
	if rest := time.Until(et.deadline); rest > 0 {
		et.due = et.deadline
		et.mu.Unlock()
		et.t.Reset(rest)
		return
	}
	et.cancel, et.due = nil, time.Time{}
	et.mu.Unlock()
	c()
}

// disarm forgets the cancel; a pending timer fires once, finds nothing
// and stops.
func (et *exTimer) disarm() {
	et.mu.Lock()
	et.cancel = nil
	et.mu.Unlock()
}

// splitFilter picks the route's backend by weight.
func splitFilter(rt *route, randN func(uint32) uint32) Filter {
	return func(next Handler) Handler {
		return HandlerFunc(func(ex *Exchange) *Response {
			b := rt.pick(randN)
			ex.Backend = b
			ex.metrics, ex.series = b.svc.metrics, b.noEndpoint
			return next.Serve(ex)
		})
	}
}

// pickFilter picks an endpoint of the backend that this exchange has not
// tried, and tells the balancer how the attempt went. The balancer sees the
// request through ex.lbReq, which lives in the pooled exchange: filling it
// copies a few string headers and allocates nothing. Its source identity is
// this proxy's own (outbound: the app behind it is the caller).
func (p *Proxy) pickFilter(next Handler) Handler {
	return HandlerFunc(func(ex *Exchange) *Response {
		dst := ex.Backend.svc
		if len(dst.eps) == 0 {
			return ex.fail(http.StatusServiceUnavailable, FlagUH, "no healthy endpoints for "+dst.key)
		}
		ex.lbReq = lb.Request{
			Method: ex.Method, Authority: ex.Authority, Path: ex.Path, RawQuery: ex.RawQuery,
			Header: ex.Header, Source: p.opts.Identity, Now: ex.pickTime(),
		}
		call, ok := dst.picker.Pick(&ex.lbReq, dst.eps, ex.Tried)
		if !ok && ex.anyEndpoint {
			// Every endpoint tried: a retry policy's retry may go to one again.
			call, ok = dst.picker.Pick(&ex.lbReq, dst.eps, nil)
		}
		if !ok {
			ex.err = errAllTried
			return ex.fail(http.StatusServiceUnavailable, FlagUH, "no healthy endpoint of "+dst.key+" left to try")
		}
		ep := call.Endpoint()
		ex.Endpoint, ex.peer = ep, dst.peerOf(ep)
		if ex.peer != nil {
			ex.series = ex.Backend.seriesFor(ex.peer.identity)
		}
		ex.Tried = append(ex.Tried, ep)
		ex.Attempts++
		ex.err, ex.dialed = nil, 0
		resp := next.Serve(ex)
		// The latency sample leaves out making the connection: a new
		// endpoint's first attempt includes its TLS handshake, and the
		// estimate keeps a peak for seconds (it decays with time, not
		// samples), so a fast rival took all the traffic meanwhile.
		call.DoneAt(outcome(ex, resp), time.Now().Add(-ex.dialed))
		return resp
	})
}

// pickTime is the time of a pick, if known without reading the clock: the
// request's start for its first attempt when nothing has waited since
// (the microseconds of the filters before the pick are no endpoint's
// latency). Zero otherwise: the balancer reads the clock.
func (ex *Exchange) pickTime() time.Time {
	if ex.Attempts > 0 || ex.waited {
		return time.Time{}
	}
	return ex.Start
}

// outcome is how the balancer should see an attempt: a 5xx is a failure
// (the peer proxy's own 5xx, its app unreachable, above all), a client that
// went away is nobody's fault.
func outcome(ex *Exchange, resp *Response) lb.Outcome {
	switch {
	case ex.clientCtx.Err() != nil, ex.reqBody.failed() != bodyOK:
		return lb.Abandoned
	case ex.err != nil || resp.Status >= 500:
		return lb.Failure
	}
	return lb.Success
}

// localPortFilter maps the service port the peer asked for (X-Trellis-Port)
// to the local app's address.
func localPortFilter(next Handler) Handler {
	return HandlerFunc(func(ex *Exchange) *Response {
		in := &ex.cfg.inbound
		ps := in.def
		if v := ex.Header[headerPort]; len(v) > 0 {
			port, ok := parsePort(v[0])
			if !ok {
				return ex.fail(http.StatusBadRequest, FlagDPE, "malformed "+headerPort)
			}
			// A service that declares no ports takes everything on AppAddr.
			if port != ps.port && len(in.ports) > 0 {
				if ps, ok = in.port(port); !ok {
					return ex.fail(http.StatusNotFound, FlagNR, "port "+v[0]+" is not declared by "+in.key)
				}
			}
		}
		if ps.appAddr == "" {
			return ex.fail(http.StatusServiceUnavailable, FlagLA, in.key+" has no local app")
		}
		ex.target, ex.Port = ps, ps.port
		return next.Serve(ex)
	})
}

// startTimeout returns the exchange's timeout context at this nesting
// depth, started under parent with deadline now+d: the pooled one when it
// is free (see timeout_ctx.go), else a new one. A second attempt's timeout
// reuses its first attempt's when nothing holds that any more.
func (ex *Exchange) startTimeout(parent context.Context, d time.Duration) *timeoutCtx {
	if ex.depth >= len(ex.timeouts) {
		// Deeper than the exchange keeps (no route nests so deep): a
		// fresh one, ended with the exchange.
		tc := newTimeoutCtx()
		ex.cancels = append(ex.cancels, func() { tc.cancel(context.Canceled) })
		tc.start(parent, time.Now().Add(d))
		return tc
	}
	i := ex.depth
	tc := ex.timeouts[i]
	if tc != nil && ex.armed[i] && !tc.finish() {
		tc = nil
	}
	if tc == nil {
		tc = newTimeoutCtx()
		ex.timeouts[i] = tc
	}
	ex.armed[i] = true
	tc.start(parent, time.Now().Add(d))
	return tc
}

// finishTimeouts detaches the exchange's timeout contexts, innermost first,
// keeping for the next use those nothing can still hold.
func (ex *Exchange) finishTimeouts() {
	for i := len(ex.timeouts) - 1; i >= 0; i-- {
		if ex.armed[i] && !ex.timeouts[i].finish() {
			ex.timeouts[i] = nil
		}
		ex.armed[i] = false
	}
}

// taintTimeouts marks the running timeout contexts as held by a transport
// whose attempt failed without a response: not to be reused.
func (ex *Exchange) taintTimeouts() {
	for i := range min(ex.depth, len(ex.timeouts)) {
		tc := ex.timeouts[i]
		tc.mu.Lock()
		tc.tainted = true
		tc.mu.Unlock()
	}
}
