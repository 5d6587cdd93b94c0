package config

import (
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// RateLimitPolicy (trellis.dev/v1alpha1) limits the rate of requests to a
// Service (enforced by the receiving proxies, on their inbound traffic) or
// through an HTTPRoute or GRPCRoute (enforced by the sending proxies, on
// the outbound chain of that route). Its targetRefs are in its namespace.
// Several policies may target one thing; a request passes each in turn
// (by policy name) and is refused by the first that has no room.
type RateLimitPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              RateLimitPolicySpec `json:"spec"`
}

// RateLimitPolicySpec is a RateLimitPolicy's desired state.
type RateLimitPolicySpec struct {
	TargetRefs []RateLimitTargetRef `json:"targetRefs"`
	// Algorithm is TokenBucket (default: bursts up to burst, refilled at the
	// rate) or LeakyBucket (requests delayed to evenly spaced slots, at most
	// queue waiting, the rest refused).
	Algorithm string `json:"algorithm,omitempty"`
	// Rate is the limit.
	Rate RateLimitRate `json:"rate"`
	// Burst is the token bucket's capacity; TokenBucket only. Default: the
	// rate's requests (one period's worth may come at once).
	Burst *int64 `json:"burst,omitempty"`
	// Queue is the leaky bucket's bound on waiting requests; LeakyBucket
	// only. Default: the requests of 100 ms at the rate, at least 1.
	Queue *int64 `json:"queue,omitempty"`
	// Scope is what requests are counted by: All (default: one limit for
	// all of the target's traffic), SourceIdentity (one limit per caller
	// SPIFFE ID) or Header (one limit per value of header).
	Scope string `json:"scope,omitempty"`
	// Header names the header of scope Header.
	Header string `json:"header,omitempty"`
	// MaxKeys bounds the callers or header values tracked by a keyed scope
	// (default 10000); past it, new ones share one limit.
	MaxKeys *int32 `json:"maxKeys,omitempty"`
	// Overrides give named callers their own limit, each caller its own.
	Overrides []RateLimitOverride `json:"overrides,omitempty"`
	// Mode is Local (default: each proxy enforces the whole limit) or
	// Global (the limit is shared out between every proxy enforcing it, by
	// the control plane, in proportion to their traffic).
	Mode string `json:"mode,omitempty"`
}

// RateLimitTargetRef names a Service, HTTPRoute or GRPCRoute in the
// policy's namespace.
type RateLimitTargetRef struct {
	// Group: "" or trellis.dev for a Service (default ""),
	// gateway.networking.k8s.io for a route (its default).
	Group string `json:"group,omitempty"`
	// Kind is Service (default), HTTPRoute or GRPCRoute.
	Kind string `json:"kind,omitempty"`
	Name string `json:"name"`
}

// RateLimitRate is Requests per Per.
type RateLimitRate struct {
	Requests int64 `json:"requests"`
	// Per is a duration between 1ms and 24h; default 1s.
	Per *metav1.Duration `json:"per,omitempty"`
}

// RateLimitOverride is the limit of the callers listed.
type RateLimitOverride struct {
	// Identities are SPIFFE IDs (spiffe://<trust-domain>/ns/<ns>/sa/<sa>).
	Identities []string      `json:"identities"`
	Rate       RateLimitRate `json:"rate"`
	// Burst (TokenBucket) or Queue (LeakyBucket) of each caller's bucket;
	// defaults as the policy's.
	Burst *int64 `json:"burst,omitempty"`
	Queue *int64 `json:"queue,omitempty"`
}

// The enumerated values.
const (
	RateLimitTokenBucket    = "TokenBucket"
	RateLimitLeakyBucket    = "LeakyBucket"
	RateLimitScopeAll       = "All"
	RateLimitScopeIdentity  = "SourceIdentity"
	RateLimitScopeHeader    = "Header"
	RateLimitModeLocal      = "Local"
	RateLimitModeGlobal     = "Global"
	gatewayGroup            = "gateway.networking.k8s.io"
	rateLimitKind           = "RateLimitPolicy"
	maxRateLimitRequests    = 1_000_000_000
	maxRateLimitKeys        = 1_000_000
	defaultRateLimitKeys    = 10000
	maxRateLimitTargets     = 32
	maxRateLimitOverrides   = 64
	maxRateLimitIdentities  = 256
	minRateLimitPer         = time.Millisecond
	maxRateLimitPer         = 24 * time.Hour
	defaultLeakyQueueWindow = 100 * time.Millisecond
)

func rateLimitPolicyKind() kindInfo {
	return kindInfo{kind: rateLimitKind, apiVersion: ServiceAPIVersion, newObject: func() object { return new(RateLimitPolicy) }}
}

// Ref names the policy.
func (p *RateLimitPolicy) Ref() Ref {
	return Ref{Kind: rateLimitKind, Namespace: namespaceOr(p.Namespace), Name: p.Name}
}

func (p *RateLimitPolicy) typeMeta() *metav1.TypeMeta     { return &p.TypeMeta }
func (p *RateLimitPolicy) objectMeta() *metav1.ObjectMeta { return &p.ObjectMeta }

func (p *RateLimitPolicy) setDefaults() {
	s := &p.Spec
	if p.Namespace == "" {
		p.Namespace = DefaultNamespace
	}
	for i := range s.TargetRefs {
		t := &s.TargetRefs[i]
		if t.Kind == "" {
			t.Kind = "Service"
		}
		if t.Group == "" && (t.Kind == "HTTPRoute" || t.Kind == "GRPCRoute") {
			t.Group = gatewayGroup
		}
	}
	if s.Algorithm == "" {
		s.Algorithm = RateLimitTokenBucket
	}
	if s.Scope == "" {
		s.Scope = RateLimitScopeAll
	}
	if s.Mode == "" {
		s.Mode = RateLimitModeLocal
	}
	if s.Scope != RateLimitScopeAll {
		setDefault(&s.MaxKeys, defaultRateLimitKeys)
	}
	s.Header = strings.ToLower(s.Header)
	s.Rate.setDefaults()
	s.Burst, s.Queue = slackDefaults(s.Algorithm, s.Rate, s.Burst, s.Queue)
	for i := range s.Overrides {
		o := &s.Overrides[i]
		o.Rate.setDefaults()
		o.Burst, o.Queue = slackDefaults(s.Algorithm, o.Rate, o.Burst, o.Queue)
	}
}

func (r *RateLimitRate) setDefaults() { setDefault(&r.Per, dur(time.Second)) }

// slackDefaults fills the slack field of the algorithm; the other one is
// left as written, for Validate to refuse.
func slackDefaults(algo string, r RateLimitRate, burst, queue *int64) (*int64, *int64) {
	switch algo {
	case RateLimitTokenBucket:
		setDefault(&burst, max(r.Requests, 1))
	case RateLimitLeakyBucket:
		q := int64(1)
		if per := r.Per.Duration; r.Requests > 0 && per > 0 {
			q = max(1, r.Requests*int64(defaultLeakyQueueWindow)/int64(per))
		}
		setDefault(&queue, q)
	}
	return burst, queue
}

// Validate checks the policy; see Object.
func (p *RateLimitPolicy) Validate() error {
	fe := &fieldErrors{ref: p.Ref()}
	validateMeta(fe, &p.ObjectMeta)
	s := &p.Spec
	p.validateTargets(fe)
	if s.Algorithm != RateLimitTokenBucket && s.Algorithm != RateLimitLeakyBucket {
		fe.addf("spec.algorithm", "must be TokenBucket or LeakyBucket, got %q", s.Algorithm)
	}
	s.Rate.validate(fe, "spec.rate")
	validateSlack(fe, "spec", s.Algorithm, s.Burst, s.Queue)
	p.validateScope(fe)
	if s.Mode != RateLimitModeLocal && s.Mode != RateLimitModeGlobal {
		fe.addf("spec.mode", "must be Local or Global, got %q", s.Mode)
	}
	p.validateOverrides(fe)
	return fe.err()
}

func (p *RateLimitPolicy) validateTargets(fe *fieldErrors) {
	ts := p.Spec.TargetRefs
	switch {
	case len(ts) == 0:
		fe.add("spec.targetRefs", "at least one targetRef is required: the Service, HTTPRoute or GRPCRoute to limit")
	case len(ts) > maxRateLimitTargets:
		fe.addf("spec.targetRefs", "at most %d targetRefs, got %d", maxRateLimitTargets, len(ts))
	}
	seen := map[RateLimitTargetRef]int{}
	for i, t := range ts {
		path := fmt.Sprintf("spec.targetRefs[%d]", i)
		switch t.Kind {
		case "Service":
			if t.Group != "" && t.Group != trellisGroup {
				fe.addf(path+".group", "must be \"\" (core) or %s for a Service, got %q", trellisGroup, t.Group)
			}
		case "HTTPRoute", "GRPCRoute":
			if t.Group != gatewayGroup {
				fe.addf(path+".group", "must be %s for a %s, got %q", gatewayGroup, t.Kind, t.Group)
			}
		default:
			fe.addf(path+".kind", "must be Service, HTTPRoute or GRPCRoute, got %q", t.Kind)
		}
		if prob := dnsLabelProblem(t.Name); prob != "" {
			fe.add(path+".name", prob)
		} else if j, dup := seen[t]; dup {
			fe.addf(path+".name", "%s %s is already targeted by spec.targetRefs[%d]", t.Kind, t.Name, j)
		} else {
			seen[t] = i
		}
	}
}

func (r *RateLimitRate) validate(fe *fieldErrors, f string) {
	if r.Requests < 1 || r.Requests > maxRateLimitRequests {
		fe.addf(f+".requests", "must be between 1 and %d, got %d", maxRateLimitRequests, r.Requests)
	}
	per := r.Per.Duration
	if per < minRateLimitPer || per > maxRateLimitPer {
		fe.addf(f+".per", "must be between 1ms and 24h, got %s", per)
		return
	}
	if r.Requests >= 1 && int64(per)/r.Requests < 1000 {
		fe.addf(f, "%d per %s is more than one request per microsecond: use a longer per or fewer requests", r.Requests, per)
	}
}

func validateSlack(fe *fieldErrors, f, algo string, burst, queue *int64) {
	if algo == RateLimitTokenBucket {
		if queue != nil {
			fe.add(f+".queue", "only for algorithm LeakyBucket: a token bucket's slack is burst")
		}
		if burst != nil && (*burst < 1 || *burst > maxRateLimitRequests) {
			fe.addf(f+".burst", "must be between 1 and %d, got %d", maxRateLimitRequests, *burst)
		}
	}
	if algo == RateLimitLeakyBucket {
		if burst != nil {
			fe.add(f+".burst", "only for algorithm TokenBucket: a leaky bucket does not burst; bound its queue with queue")
		}
		if queue != nil && (*queue < 0 || *queue > maxRateLimitRequests) {
			fe.addf(f+".queue", "must be between 0 and %d, got %d", maxRateLimitRequests, *queue)
		}
	}
}

func (p *RateLimitPolicy) validateScope(fe *fieldErrors) {
	s := &p.Spec
	switch s.Scope {
	case RateLimitScopeAll, RateLimitScopeIdentity:
		if s.Header != "" {
			fe.addf("spec.header", "only with scope Header, scope is %s", s.Scope)
		}
	case RateLimitScopeHeader:
		switch {
		case s.Header == "":
			fe.add("spec.header", "required with scope Header: the header whose values are limited apart")
		case len(s.Header) > maxHeaderNameLen || !headerNameRE.MatchString(s.Header):
			fe.addf("spec.header", "%q is not a header name", s.Header)
		}
	default:
		fe.addf("spec.scope", "must be All, SourceIdentity or Header, got %q", s.Scope)
	}
	if s.MaxKeys == nil {
		return
	}
	if s.Scope == RateLimitScopeAll {
		fe.add("spec.maxKeys", "only with scope SourceIdentity or Header: scope All has one limit")
	} else if k := *s.MaxKeys; k < 1 || k > maxRateLimitKeys {
		fe.addf("spec.maxKeys", "must be between 1 and %d, got %d", maxRateLimitKeys, k)
	}
}

func (p *RateLimitPolicy) validateOverrides(fe *fieldErrors) {
	s := &p.Spec
	if len(s.Overrides) > maxRateLimitOverrides {
		fe.addf("spec.overrides", "at most %d overrides, got %d", maxRateLimitOverrides, len(s.Overrides))
	}
	seen := map[string]string{}
	for i, o := range s.Overrides {
		f := fmt.Sprintf("spec.overrides[%d]", i)
		if len(o.Identities) == 0 {
			fe.add(f+".identities", "at least one SPIFFE ID is required")
		}
		if len(o.Identities) > maxRateLimitIdentities {
			fe.addf(f+".identities", "at most %d, got %d", maxRateLimitIdentities, len(o.Identities))
		}
		for j, id := range o.Identities {
			g := fmt.Sprintf("%s.identities[%d]", f, j)
			if _, err := spiffeid.FromString(id); err != nil {
				fe.addf(g, "%q is not a SPIFFE ID (spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>): %v", id, err)
			} else if prev, dup := seen[id]; dup {
				fe.addf(g, "%s is already overridden by %s: one limit per caller", id, prev)
			} else {
				seen[id] = g
			}
		}
		o.Rate.validate(fe, f+".rate")
		validateSlack(fe, f, s.Algorithm, o.Burst, o.Queue)
	}
}
