package proxy

// This file is the order of every filter chain the proxy runs. A new
// data-plane feature is a Filter and one line here, at its slot.

// Handler serves one exchange and returns its response; it never writes to
// the client (the listener edge does, once, for every chain).
type Handler interface {
	Serve(*Exchange) *Response
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(*Exchange) *Response

// Serve calls f.
func (f HandlerFunc) Serve(ex *Exchange) *Response { return f(ex) }

// Filter wraps the rest of a chain: it may change the exchange, answer
// itself, call next (more than once, as retry does) and look at or change
// the response before the client sees it. A filter with nothing to do for
// a route or listener returns next itself, so it costs nothing per request.
type Filter func(next Handler) Handler

// chain builds filters[0] ▸ filters[1] ▸ … ▸ end.
func chain(end Handler, filters ...Filter) Handler {
	h := end
	for i := len(filters) - 1; i >= 0; i-- {
		h = filters[i](h)
	}
	return h
}

// Chains are compiled when a snapshot is applied (compile), never per
// request: the listener chains here once per snapshot, the route chain once
// per route of it.

// outboundChain serves the app's HTTP requests, on the outbound proxy port
// and the per-upstream ports:
//
//	telemetry ▸ resolve service ▸ match route ▸ (the route's chain)
func (p *Proxy) outboundChain() Handler {
	return chain(routeDispatch{},
		telemetryFilter,
		p.resolveFilter,
	)
}

// routeChain is the part of the outbound chain one route owns, built into
// the compiled route:
//
//	header filters ▸ redirect ▸ URL rewrite ▸ mirror ▸ fault ▸ timeout
//	▸ retry ▸ attempt timeout ▸ pick backend by weight ▸ circuit breaker
//	▸ pick endpoint ▸ outlier detection ▸ upstream
//
// A redirect answers without going further; the rewrite comes before the
// mirror, so the mirror sees the request as the backend will; a fault
// comes before the timeouts, so an injected delay is not a timeout.
// The circuit breaker comes after the split, not before it: its limits are
// the backend's (BackendPolicy on the backend Service), known only once the
// split chose one. Outlier detection wraps each attempt on an endpoint.
func (p *Proxy) routeChain(rt *route, env compileEnv) Handler {
	return chain(p.peerUpstream(),
		requestHeaderFilter(rt.requestHeaders),
		responseHeaderFilter(rt.responseHeaders),
		redirectFilter(rt.redirect),
		rewriteFilter(rt.rewrite),
		p.mirrorFilter(rt.mirrors, env.randN),
		faultFilter(rt.fault, env.randN),
		timeoutFilter(rt.timeout, p.timerPool()),
		retryFilter(rt.retry),
		timeoutFilter(rt.attemptTimeout, p.timerPool()),
		splitFilter(rt, env.randN),
		p.breakerFilter(rt),
		p.pickFilter,
		p.outlierFilter(rt),
	)
}

// inboundChain serves peers' requests on the mTLS listener:
//
//	telemetry ▸ authenticate peer ▸ local port ▸ [authorization]
//	▸ [rate limit] ▸ concurrency limit ▸ app
//
// The local port comes before the slots so authorization and limits can
// depend on the port. The concurrency limit comes last: it sheds only
// what the app would otherwise have to serve, and what it measures is the
// app's latency.
func (p *Proxy) inboundChain() Handler {
	return chain(p.appUpstream(),
		telemetryFilter,
		authnFilter,
		localPortFilter,
		// [authorization] security: the snapshot's inbound_policy against ex.PeerID.
		// [rate limit] traffic control II: token / leaky bucket, local or global.
		concurrencyFilter,
	)
}

// tunnelChain serves CONNECT on the outbound port and opaque TCP on the
// per-upstream ports:
//
//	telemetry ▸ resolve service ▸ [authorization] ▸ tunnel
func (p *Proxy) tunnelChain() Handler {
	return chain(p.tunnelUpstream(),
		telemetryFilter,
		p.resolveFilter,
		// [authorization] security: egress policy for the destination.
	)
}
