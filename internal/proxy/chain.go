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

// telemetrySlot is the first filter of every listener chain: the
// telemetry filter, or noTelemetry with DisableMetrics. (A nil p is a
// compile-only test's.)
func (p *Proxy) telemetrySlot() Filter {
	if p == nil || p.telemetry == nil {
		return telemetryFilter
	}
	return p.telemetry
}

// outboundChain serves the app's HTTP requests, on the outbound proxy port
// and the per-upstream ports:
//
//	telemetry ▸ tap ▸ observe ▸ resolve service ▸ egress policy ▸ match route
//	▸ (the route's chain)
//
// The egress policy (egress.go) takes what resolve found outside the
// registry — neither a mesh service nor an ExternalService — and passes it
// through directly (ALLOW_ANY) or refuses it (REGISTRY_ONLY); an
// ExternalService goes on through its routes like any service.
//
// tap (tap_filter.go) shows requests to `trellis tap`; right after
// telemetry, it sees every request, refused ones included, and costs one
// atomic load while nothing is tapped.
// observe (observe_filter.go) starts the hop's client span and writes the
// access log line; it comes right after telemetry so it, too, sees every
// request, refused ones included, and before routing so the span covers
// retries, timeouts and the wait for an unknown service. Without a tracer
// and an access log it is not in the chain.
func (p *Proxy) outboundChain() Handler {
	return chain(routeDispatch{},
		p.telemetrySlot(),
		p.tapFilter(false),
		p.observeFilter(false),
		p.resolveFilter,
		p.egressFilter,
	)
}

// routeChain is the part of the outbound chain one route owns, built into
// the compiled route:
//
//	header filters ▸ redirect ▸ URL rewrite ▸ rate limit ▸ mirror ▸ fault
//	▸ timeout ▸ retry ▸ attempt timeout ▸ pick backend by weight
//	▸ circuit breaker ▸ pick endpoint ▸ outlier detection ▸ upstream
//
// A redirect answers without going further; the rewrite comes before the
// mirror, so the mirror sees the request as the backend will; a fault
// comes before the timeouts, so an injected delay is not a timeout.
// The rate limit comes after the header filters and the redirect (a
// per-header limit sees the headers the backend will see; a redirect the
// proxy answers itself costs no quota) and before the mirror, the fault,
// the timeouts and the retry: a refused request is neither mirrored nor
// retried, and a leaky bucket's wait for its slot is not a timeout.
// The circuit breaker comes after the split, not before it: its limits are
// the backend's (BackendPolicy on the backend Service), known only once the
// split chose one. Outlier detection wraps each attempt on an endpoint.
func (p *Proxy) routeChain(rt *route, env compileEnv) Handler {
	return chain(p.peerUpstream(),
		requestHeaderFilter(rt.requestHeaders),
		responseHeaderFilter(rt.responseHeaders),
		redirectFilter(rt.redirect),
		rewriteFilter(rt.rewrite),
		p.routeRateLimitFilter(rt.rateLimits),
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
//	telemetry ▸ tap ▸ observe ▸ authenticate peer ▸ local port ▸ authorization
//	▸ rate limit ▸ concurrency limit ▸ app
//
// observe starts the hop's server span, a child of the calling proxy's
// client span, and passes it to the app as its parent; like outbound it
// sees refusals too (a denied or rate-limited request is logged and traced).
// The local port comes before authorization and the limits so they can
// depend on the port. Opaque TCP tunnels are authorized where they are
// accepted (serveTCPTunnel → authorizeTunnel), before the app is dialled.
// The rate limit comes after authentication and authorization, so a
// caller's SPIFFE ID is known (per-identity limits, overrides) and a
// refused caller spends no quota; and before the concurrency limit, so
// requests over the rate are refused before they take a concurrency slot.
// The concurrency limit comes last: it sheds only what the app would
// otherwise have to serve, and what it measures is the app's latency.
func (p *Proxy) inboundChain() Handler {
	return chain(p.appUpstream(),
		p.telemetrySlot(),
		p.tapFilter(true),
		p.observeFilter(true),
		p.authnFilter,
		localPortFilter,
		p.authzFilter,
		p.inboundRateLimitFilter,
		concurrencyFilter,
	)
}

// tunnelChain serves CONNECT on the outbound port and opaque TCP on the
// per-upstream ports:
//
//	telemetry ▸ resolve service ▸ tcp port only ▸ egress policy ▸ tunnel
//
// The egress policy tunnels a host outside the registry directly
// (ALLOW_ANY) or refuses it with 403 (REGISTRY_ONLY), and an
// ExternalService's tcp/https port straight to its endpoint; a mesh
// service's goes on to the mTLS tunnel to its peer.
func (p *Proxy) tunnelChain() Handler {
	return chain(p.tunnelUpstream(),
		p.telemetrySlot(),
		p.resolveFilter,
		p.tunnelPortFilter,
		p.egressFilter,
	)
}
