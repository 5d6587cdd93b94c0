package proxy

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/ratelimit"
	"trellis.dev/trellis/internal/telemetry"
)

// The rate-limit filters (chain.go): a Service's RateLimitPolicies on the
// inbound chain, a route's on the route chain. The buckets are
// internal/ratelimit's; they live in the proxy's registry across snapshots,
// keyed by where they apply, so an unchanged policy keeps its state.

// maxRateLimits bounds the policies at one place (inbound, or a route).
const maxRateLimits = 16

// rateLimitSpec is one checked meshv1.RateLimit, not yet bound to buckets.
type rateLimitSpec struct {
	name   string
	spec   ratelimit.Spec
	global bool
	header string // canonical key, scope HEADER
	// policyHdr is the RateLimit-Policy field; quotaPrefix starts RateLimit.
	policyHdr   []string
	quotaPrefix string
}

// rateLimiter is a bound spec: its running entry and its counters.
type rateLimiter struct {
	*rateLimitSpec
	entry    *ratelimit.Entry
	counters telemetry.RateLimitCounters
}

// compileRateLimits checks the limits at f; the errors name the proto's
// fields (the NACK's text).
func compileRateLimits(f string, rls []*meshv1.RateLimit) ([]*rateLimitSpec, error) {
	if len(rls) > maxRateLimits {
		return nil, invalid("%s: %d rate limits, at most %d", f, len(rls), maxRateLimits)
	}
	out := make([]*rateLimitSpec, 0, len(rls))
	for i, rl := range rls {
		rs, err := compileRateLimit(f+"["+strconv.Itoa(i)+"]", rl)
		if err != nil {
			return nil, err
		}
		out = append(out, rs)
	}
	return out, nil
}

func compileRateLimit(f string, rl *meshv1.RateLimit) (*rateLimitSpec, error) {
	rs := &rateLimitSpec{name: rl.GetName(), global: rl.GetGlobal()}
	if rs.name == "" || strings.ContainsAny(rs.name, "\"\\\r\n") {
		return nil, invalid("%s.name: %q is not a policy name", f, rs.name)
	}
	switch rl.GetAlgorithm() {
	case meshv1.RateLimit_TOKEN_BUCKET:
		rs.spec.Algorithm = ratelimit.TokenBucketAlgorithm
	case meshv1.RateLimit_LEAKY_BUCKET:
		rs.spec.Algorithm = ratelimit.LeakyBucketAlgorithm
	default:
		return nil, invalid("%s.algorithm: unknown algorithm %d", f, rl.GetAlgorithm())
	}
	var err error
	if rs.spec.Limit, err = rateLimitValue(f+".limit", rl.GetLimit()); err != nil {
		return nil, err
	}
	switch rl.GetScope() {
	case meshv1.RateLimit_WHOLE:
		rs.spec.Scope = ratelimit.ScopeWhole
	case meshv1.RateLimit_SOURCE_IDENTITY:
		rs.spec.Scope = ratelimit.ScopeIdentity
	case meshv1.RateLimit_HEADER:
		rs.spec.Scope = ratelimit.ScopeHeader
		if !httpguts.ValidHeaderFieldName(rl.GetHeader()) {
			return nil, invalid("%s.header: %q is not a header name", f, rl.GetHeader())
		}
		rs.header = http.CanonicalHeaderKey(rl.GetHeader())
	default:
		return nil, invalid("%s.scope: unknown scope %d", f, rl.GetScope())
	}
	rs.spec.MaxKeys = int(rl.GetMaxKeys())
	for i, o := range rl.GetOverrides() {
		of := f + ".overrides[" + strconv.Itoa(i) + "]"
		if len(o.GetIdentities()) == 0 {
			return nil, invalid("%s.identities: empty", of)
		}
		l, err := rateLimitValue(of+".limit", o.GetLimit())
		if err != nil {
			return nil, err
		}
		rs.spec.Overrides = append(rs.spec.Overrides, ratelimit.Override{Identities: o.GetIdentities(), Limit: l})
	}
	q, w := quotaWindow(rs.spec.Limit)
	quoted := strconv.Quote(rs.name)
	rs.policyHdr = []string{quoted + ";q=" + strconv.FormatInt(q, 10) + ";w=" + strconv.FormatInt(w, 10)}
	rs.quotaPrefix = quoted + ";r="
	return rs, nil
}

func rateLimitValue(f string, v *meshv1.RateLimitValue) (ratelimit.Limit, error) {
	if v == nil {
		return ratelimit.Limit{}, invalid("%s: required", f)
	}
	if v.GetRequests() > math.MaxInt32 || v.GetBurst() > math.MaxInt32 {
		return ratelimit.Limit{}, invalid("%s: requests %d or burst %d is over %d", f, v.GetRequests(), v.GetBurst(), math.MaxInt32)
	}
	l := ratelimit.Limit{Requests: int64(v.GetRequests()), Period: v.GetPeriod().AsDuration(), Burst: int64(v.GetBurst())}
	if err := l.Validate(); err != nil {
		return ratelimit.Limit{}, invalid("%s: %v", f, err)
	}
	return l, nil
}

// quotaWindow is the limit as the draft's q (quota) and w (window,
// seconds): the period itself when it is whole seconds, else the rate per
// second.
func quotaWindow(l ratelimit.Limit) (q, w int64) {
	if l.Period >= time.Second && l.Period%time.Second == 0 {
		return l.Requests, int64(l.Period / time.Second)
	}
	return max(1, int64(math.Round(l.PerSecond()))), 1
}

// bindRateLimits binds specs at place (the registry key's prefix) to the
// proxy's running entries, records the keys in live, and returns the
// limiters; nil when there are none.
func (p *Proxy) bindRateLimits(direction, place string, specs []*rateLimitSpec, live map[string]*ratelimit.Entry) []*rateLimiter {
	if len(specs) == 0 {
		return nil
	}
	out := make([]*rateLimiter, len(specs))
	for i, rs := range specs {
		key := direction + " " + place + " " + rs.name
		l := &rateLimiter{rateLimitSpec: rs}
		if p != nil {
			l.entry = p.rateLimits.Bind(key, rs.spec, rs.global)
			l.counters = p.metrics.RateLimits.Policy(direction, rs.name)
		} else {
			l.entry = ratelimit.NewRegistry(func() int64 { return 0 }).Bind(key, rs.spec, rs.global)
			l.counters = (*telemetry.RateLimitMetrics)(nil).Policy(direction, rs.name)
		}
		live[key] = l.entry
		out[i] = l
	}
	return out
}

// routeObject is the route resource a compiled route came from:
// "ns/name/rules[2]" → "ns/name". Every rule of a route shares its
// policies' buckets.
func routeObject(name string) string {
	if i := strings.LastIndex(name, "/rules["); i >= 0 {
		return name[:i]
	}
	return name
}

// RateLimits is the proxy's running rate limits: what a global limit's
// quota client reports and grants shares to.
func (p *Proxy) RateLimits() *ratelimit.Registry { return p.rateLimits }

// nanotime is the proxy's monotonic clock for rate decisions, read once
// per request.
func (p *Proxy) nanotime() int64 { return int64(time.Since(p.epoch)) }

// routeRateLimitFilter enforces the route's limits, on the sending proxy.
func (p *Proxy) routeRateLimitFilter(lims []*rateLimiter) Filter {
	return func(next Handler) Handler {
		if len(lims) == 0 {
			return next
		}
		return HandlerFunc(func(ex *Exchange) *Response {
			return p.limit(ex, lims, p.opts.Identity, next)
		})
	}
}

// inboundRateLimitFilter enforces the service's limits, on the receiving
// proxy, by the snapshot the exchange started with.
func (p *Proxy) inboundRateLimitFilter(next Handler) Handler {
	return HandlerFunc(func(ex *Exchange) *Response {
		lims := ex.cfg.inbound.rateLimits
		if len(lims) == 0 {
			return next.Serve(ex)
		}
		return p.limit(ex, lims, ex.PeerID, next)
	})
}

// limit passes ex through each limiter in turn: the first refusal answers;
// an admission by a leaky bucket waits for its slot (the longest of them)
// before going on.
func (p *Proxy) limit(ex *Exchange, lims []*rateLimiter, identity string, next Handler) *Response {
	now := p.nanotime()
	var wait time.Duration
	for _, l := range lims {
		var key string
		if l.header != "" {
			if v := ex.Header[l.header]; len(v) > 0 {
				key = v[0]
			}
		}
		d := l.entry.Decide(identity, key, now)
		if !d.Allowed {
			l.counters.Limited.Inc()
			return l.refuse(ex, d)
		}
		l.counters.Allowed.Inc()
		wait = max(wait, d.Delay)
	}
	if wait > 0 && !p.waitSlot(ex, wait) {
		return ex.fail(statusClientClosed, FlagDC, "client went away while queued by a rate limit")
	}
	return next.Serve(ex)
}

// waitSlot waits d on a pooled timer, or until the exchange is canceled.
func (p *Proxy) waitSlot(ex *Exchange, d time.Duration) bool {
	t, _ := p.slotTimers.Get().(*time.Timer)
	if t == nil {
		t = time.NewTimer(d)
	} else {
		t.Reset(d)
	}
	defer p.slotTimers.Put(t)
	select {
	case <-t.C:
		return true
	case <-ex.ctx.Done():
		// Since Go 1.23 a stopped timer's channel delivers nothing stale,
		// so the timer can go back to the pool as is.
		t.Stop()
		return false
	}
}

var grpcResourceExhausted = []string{"8"}

// refuse answers a limited request: 429 with Retry-After and the IETF
// RateLimit-Policy and RateLimit fields (draft-ietf-httpapi-ratelimit-
// headers-10: RateLimit-Policy: "<policy>";q=<quota>;w=<window s>,
// RateLimit: "<policy>";r=<remaining>;t=<seconds to reset>); a gRPC
// request gets a trailers-only RESOURCE_EXHAUSTED instead, with the same
// fields.
func (l *rateLimiter) refuse(ex *Exchange, d ratelimit.Decision) *Response {
	retry := strconv.FormatInt(ceilSeconds(d.RetryAfter), 10)
	quota := l.quotaPrefix + strconv.FormatInt(d.Remaining, 10) + ";t=" + strconv.FormatInt(ceilSeconds(d.Reset), 10)
	var resp *Response
	if isGRPC(ex.Header) {
		ex.Flags |= FlagRL
		resp = &Response{Status: http.StatusOK, Header: http.Header{
			"Content-Type": grpcContentType,
			"Grpc-Status":  grpcResourceExhausted,
			"Grpc-Message": []string{"rate limited by the mesh: policy " + l.name},
			headerError:    []string{FlagRL.String()},
		}}
	} else {
		resp = ex.fail(http.StatusTooManyRequests, FlagRL, "rate limited by policy "+l.name+"; retry after "+retry+"s")
	}
	resp.Header["Retry-After"] = []string{retry}
	resp.Header["Ratelimit-Policy"] = l.policyHdr
	resp.Header["Ratelimit"] = []string{quota}
	return resp
}

// ceilSeconds rounds up to whole seconds, at least 1: a client told to
// retry after 0 s would retry at once.
func ceilSeconds(d time.Duration) int64 {
	return max(1, int64((d+time.Second-1)/time.Second))
}
