package config

import (
	"slices"

	"google.golang.org/protobuf/types/known/durationpb"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// RateLimitPolicy's hooks: a Service target attaches to that service's
// inbound policy (InboundContributor: the receiving proxies enforce it), a
// route target to the compiled routes of that HTTPRoute or GRPCRoute
// (RouteAttacher: the sending proxies enforce it on the route's chain).
//
// A target nothing declares is allowed, as for BackendPolicy: Trellis
// services need no Service resource, and a route may be applied after its
// policy; the policy takes effect when its target exists.

var (
	_ InboundContributor = (*RateLimitPolicy)(nil)
	_ RouteAttacher      = (*RateLimitPolicy)(nil)
)

// AppliesTo: the targeted Services of the policy's namespace.
func (p *RateLimitPolicy) AppliesTo(svc ServiceKey) bool {
	if svc.Namespace != p.Namespace {
		return false
	}
	for _, t := range p.Spec.TargetRefs {
		if t.Kind == "Service" && t.Name == svc.Name {
			return true
		}
	}
	return false
}

// ContributeInbound adds the compiled limit to the service's inbound policy.
func (p *RateLimitPolicy) ContributeInbound(ip *meshv1.InboundPolicy) {
	ip.RateLimits = append(ip.RateLimits, p.compile())
}

// RouteTargets lists the targeted routes.
func (p *RateLimitPolicy) RouteTargets() []Ref {
	var out []Ref
	for _, t := range p.Spec.TargetRefs {
		if t.Kind != "Service" {
			out = append(out, Ref{Kind: t.Kind, Namespace: p.Namespace, Name: t.Name})
		}
	}
	return out
}

// ContributeRoute adds the compiled limit to one compiled route of the
// target. Every match of every rule of the route carries it, and they all
// share one bucket in the proxy (keyed by the policy's name), so the limit
// is the route's, not each rule's.
func (p *RateLimitPolicy) ContributeRoute(r *meshv1.Route, _ Ref) {
	r.RateLimits = append(r.RateLimits, p.compile())
}

var (
	rateLimitAlgorithms = map[string]meshv1.RateLimit_Algorithm{
		RateLimitTokenBucket: meshv1.RateLimit_TOKEN_BUCKET,
		RateLimitLeakyBucket: meshv1.RateLimit_LEAKY_BUCKET,
	}
	rateLimitScopes = map[string]meshv1.RateLimit_Scope{
		RateLimitScopeAll:      meshv1.RateLimit_WHOLE,
		RateLimitScopeIdentity: meshv1.RateLimit_SOURCE_IDENTITY,
		RateLimitScopeHeader:   meshv1.RateLimit_HEADER,
	}
)

func (p *RateLimitPolicy) compile() *meshv1.RateLimit {
	s := &p.Spec
	out := &meshv1.RateLimit{
		Name:      p.Namespace + "/" + p.Name,
		Algorithm: rateLimitAlgorithms[s.Algorithm],
		Limit:     compileRate(s.Rate, s.Burst, s.Queue),
		Scope:     rateLimitScopes[s.Scope],
		Header:    s.Header,
		Global:    s.Mode == RateLimitModeGlobal,
	}
	if s.MaxKeys != nil {
		out.MaxKeys = uint32(*s.MaxKeys)
	}
	for _, o := range s.Overrides {
		out.Overrides = append(out.Overrides, &meshv1.RateLimitOverride{
			Identities: slices.Clone(o.Identities),
			Limit:      compileRate(o.Rate, o.Burst, o.Queue),
		})
	}
	return out
}

// compileRate: burst carries whichever slack the algorithm has (the other
// is nil once defaulted and valid).
func compileRate(r RateLimitRate, burst, queue *int64) *meshv1.RateLimitValue {
	v := &meshv1.RateLimitValue{Requests: uint64(r.Requests), Period: durationpb.New(r.Per.Duration)}
	if burst != nil {
		v.Burst = uint64(*burst)
	}
	if queue != nil {
		v.Burst = uint64(*queue)
	}
	return v
}
