package config

import (
	"fmt"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// BackendPolicy says how proxies send traffic to a Service: its load
// balancer, retries with their budget, circuit breaker and outlier
// detection. It attaches to Services by targetRefs, as Gateway API policies
// do (a LocalPolicyTargetReference: the policy's own namespace). At most one
// BackendPolicy may target a Service.
//
// A section left out means the proxy's behaviour without one: the default
// balancer, the connect-failure retry only, no limits, no ejection. A
// section given is defaulted field by field (Linkerd's, Envoy's and Istio's
// values), so the compiled snapshot is explicit.
type BackendPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              BackendPolicySpec `json:"spec"`
}

// BackendPolicySpec is a BackendPolicy's desired state.
type BackendPolicySpec struct {
	TargetRefs       []PolicyTargetRef `json:"targetRefs"`
	LoadBalancer     *LoadBalancer     `json:"loadBalancer,omitempty"`
	Retry            *RetryPolicy      `json:"retry,omitempty"`
	CircuitBreaker   *CircuitBreaker   `json:"circuitBreaker,omitempty"`
	OutlierDetection *OutlierDetection `json:"outlierDetection,omitempty"`
}

// PolicyTargetRef names a Service in the policy's namespace (Gateway API's
// LocalPolicyTargetReference).
type PolicyTargetRef struct {
	// Group is "" (core) or trellis.dev; default "".
	Group string `json:"group"`
	// Kind must be Service.
	Kind string `json:"kind"`
	Name string `json:"name"`
}

// Load balancer types, as the proxy's --balancer flag names them.
const (
	BalancerP2CEWMA      = "p2c-ewma"
	BalancerRoundRobin   = "round-robin"
	BalancerRandom       = "random"
	BalancerLeastRequest = "least-request"
	BalancerRingHash     = "ring-hash"
	BalancerMaglev       = "maglev"
)

// Balancers lists the valid loadBalancer.type values, the default first.
func Balancers() []string {
	return []string{BalancerP2CEWMA, BalancerRoundRobin, BalancerRandom, BalancerLeastRequest, BalancerRingHash, BalancerMaglev}
}

// LoadBalancer picks how a proxy balances the Service's endpoints.
type LoadBalancer struct {
	// Type is one of Balancers(); default p2c-ewma.
	Type string `json:"type,omitempty"`
	// Hash is what ring-hash and maglev hash; only with those. Unset: each
	// request goes to a random endpoint.
	Hash *HashPolicy `json:"hash,omitempty"`
	// SlowStart is the window over which a new endpoint's share ramps up;
	// unset or 0: off.
	SlowStart *metav1.Duration `json:"slowStart,omitempty"`
}

// HashPolicy is the one request attribute a consistent-hash balancer hashes.
type HashPolicy struct {
	Header         string `json:"header,omitempty"`
	Cookie         string `json:"cookie,omitempty"`
	QueryParam     string `json:"queryParam,omitempty"`
	SourceIdentity bool   `json:"sourceIdentity,omitempty"`
}

// RetryPolicy retries a request that failed on connect, was reset or
// refused (HTTP/2 REFUSED_STREAM), or answered one of StatusCodes or
// GRPCStatuses.
type RetryPolicy struct {
	// Attempts is the number of retries after the first try; default 2
	// (Istio's). 0 turns retries off, the connect-failure one included.
	Attempts *int32 `json:"attempts,omitempty"`
	// PerTryTimeout bounds each attempt; unset: the route's
	// timeouts.backendRequest, else none.
	PerTryTimeout *metav1.Duration `json:"perTryTimeout,omitempty"`
	// StatusCodes retried; default [503].
	StatusCodes []int32 `json:"statusCodes,omitempty"`
	// GRPCStatuses retried, by name (see GRPCStatusNames); default none.
	GRPCStatuses []string `json:"grpcStatuses,omitempty"`
	// RetryNonIdempotent retries POST, PATCH and other non-idempotent
	// methods too; default false.
	RetryNonIdempotent bool `json:"retryNonIdempotent,omitempty"`
	// Backoff between attempts: exponential with full jitter.
	Backoff *RetryBackoff `json:"backoff,omitempty"`
	// Budget bounds retries to a share of requests.
	Budget *RetryBudget `json:"budget,omitempty"`
	// MaxBodyBytes: request bodies up to this size are buffered for replay;
	// larger ones are sent once. Default 65536 (Linkerd's).
	MaxBodyBytes *int64 `json:"maxBodyBytes,omitempty"`
}

// RetryBackoff is exponential backoff with full jitter: the wait before
// retry n is uniform in [0, min(max, base·2^(n-1))].
type RetryBackoff struct {
	// BaseInterval default 25ms, MaxInterval default 10 × base (Envoy's).
	BaseInterval *metav1.Duration `json:"baseInterval,omitempty"`
	MaxInterval  *metav1.Duration `json:"maxInterval,omitempty"`
}

// RetryBudget is Linkerd's: retries at most RetryRatio of requests plus
// MinRetriesPerSecond, over a TTL window.
type RetryBudget struct {
	// RetryRatio default 0.2.
	RetryRatio *float64 `json:"retryRatio,omitempty"`
	// MinRetriesPerSecond default 10.
	MinRetriesPerSecond *int32 `json:"minRetriesPerSecond,omitempty"`
	// TTL default 10s.
	TTL *metav1.Duration `json:"ttl,omitempty"`
}

// CircuitBreaker limits what one proxy sends to the Service at once; over a
// limit, requests fail fast with 503 (response flag UO). Each limit
// defaults to 4294967295 (Istio's: never bites by surprise).
type CircuitBreaker struct {
	MaxConnections     *int64 `json:"maxConnections,omitempty"`
	MaxPendingRequests *int64 `json:"maxPendingRequests,omitempty"`
	MaxRequests        *int64 `json:"maxRequests,omitempty"`
}

// OutlierDetection ejects an endpoint that keeps failing (Envoy's
// consecutive-errors detection).
type OutlierDetection struct {
	// Consecutive5xx default 5; 0 disables the rule.
	Consecutive5xx *int32 `json:"consecutive5xx,omitempty"`
	// ConsecutiveGatewayErrors (502, 503, 504, connect failures, resets)
	// default 5; 0 disables the rule.
	ConsecutiveGatewayErrors *int32 `json:"consecutiveGatewayErrors,omitempty"`
	// BaseEjectionTime default 30s; each ejection lasts base × the times
	// the endpoint was ejected, at most MaxEjectionTime (default 300s).
	BaseEjectionTime *metav1.Duration `json:"baseEjectionTime,omitempty"`
	MaxEjectionTime  *metav1.Duration `json:"maxEjectionTime,omitempty"`
	// MaxEjectionPercent of the Service's endpoints ejected at once,
	// default 10; one endpoint may always be ejected.
	MaxEjectionPercent *int32 `json:"maxEjectionPercent,omitempty"`
}

// BackendPolicyAPIVersion is the apiVersion of BackendPolicy.
const BackendPolicyAPIVersion = ServiceAPIVersion

// GRPCStatusNames maps the gRPC statuses a retry policy may name to their
// codes.
var grpcStatusNames = map[string]uint32{
	"cancelled":          1,
	"deadline-exceeded":  4,
	"resource-exhausted": 8,
	"internal":           13,
	"unavailable":        14,
}

// GRPCStatusNames lists the names retry.grpcStatuses accepts, sorted.
func GRPCStatusNames() []string { return sortedKeys(grpcStatusNames) }

// Defaults (see the field comments).
const (
	defaultRetryAttempts      = 2
	defaultMaxBodyBytes       = 64 << 10
	defaultBackoffBase        = 25 * time.Millisecond
	defaultRetryRatio         = 0.2
	defaultMinRetriesPerSec   = 10
	defaultBudgetTTL          = 10 * time.Second
	defaultBreakerLimit       = 1<<32 - 1
	defaultConsecutiveErrors  = 5
	defaultBaseEjection       = 30 * time.Second
	defaultMaxEjection        = 300 * time.Second
	defaultMaxEjectionPercent = 10
)

func backendPolicyKind() kindInfo {
	return kindInfo{kind: "BackendPolicy", apiVersion: BackendPolicyAPIVersion, newObject: func() object { return new(BackendPolicy) }}
}

// Ref names the policy.
func (p *BackendPolicy) Ref() Ref {
	return Ref{Kind: "BackendPolicy", Namespace: namespaceOr(p.Namespace), Name: p.Name}
}

func (p *BackendPolicy) typeMeta() *metav1.TypeMeta     { return &p.TypeMeta }
func (p *BackendPolicy) objectMeta() *metav1.ObjectMeta { return &p.ObjectMeta }

func setDefault[T any](p **T, v T) {
	if *p == nil {
		*p = &v
	}
}

func dur(d time.Duration) metav1.Duration { return metav1.Duration{Duration: d} }

func (p *BackendPolicy) setDefaults() {
	if p.Namespace == "" {
		p.Namespace = DefaultNamespace
	}
	for i := range p.Spec.TargetRefs {
		if p.Spec.TargetRefs[i].Kind == "" {
			p.Spec.TargetRefs[i].Kind = "Service"
		}
	}
	if lb := p.Spec.LoadBalancer; lb != nil && lb.Type == "" {
		lb.Type = BalancerP2CEWMA
	}
	if r := p.Spec.Retry; r != nil {
		r.setDefaults()
	}
	if cb := p.Spec.CircuitBreaker; cb != nil {
		setDefault(&cb.MaxConnections, defaultBreakerLimit)
		setDefault(&cb.MaxPendingRequests, defaultBreakerLimit)
		setDefault(&cb.MaxRequests, defaultBreakerLimit)
	}
	if od := p.Spec.OutlierDetection; od != nil {
		setDefault(&od.Consecutive5xx, defaultConsecutiveErrors)
		setDefault(&od.ConsecutiveGatewayErrors, defaultConsecutiveErrors)
		setDefault(&od.BaseEjectionTime, dur(defaultBaseEjection))
		setDefault(&od.MaxEjectionTime, dur(max(defaultMaxEjection, od.BaseEjectionTime.Duration)))
		setDefault(&od.MaxEjectionPercent, defaultMaxEjectionPercent)
	}
}

func (r *RetryPolicy) setDefaults() {
	setDefault(&r.Attempts, defaultRetryAttempts)
	if r.StatusCodes == nil {
		r.StatusCodes = []int32{503}
	}
	if r.GRPCStatuses == nil {
		r.GRPCStatuses = []string{}
	}
	setDefault(&r.Backoff, RetryBackoff{})
	setDefault(&r.Backoff.BaseInterval, dur(defaultBackoffBase))
	setDefault(&r.Backoff.MaxInterval, dur(10*r.Backoff.BaseInterval.Duration))
	setDefault(&r.Budget, RetryBudget{})
	setDefault(&r.Budget.RetryRatio, defaultRetryRatio)
	setDefault(&r.Budget.MinRetriesPerSecond, defaultMinRetriesPerSec)
	setDefault(&r.Budget.TTL, dur(defaultBudgetTTL))
	setDefault(&r.MaxBodyBytes, defaultMaxBodyBytes)
}

// Validate checks the policy; see Object.
func (p *BackendPolicy) Validate() error {
	fe := &fieldErrors{ref: p.Ref()}
	validateMeta(fe, &p.ObjectMeta)
	p.validateTargets(fe)
	if lb := p.Spec.LoadBalancer; lb != nil {
		lb.validate(fe, "spec.loadBalancer")
	}
	if r := p.Spec.Retry; r != nil {
		r.validate(fe, "spec.retry")
	}
	if cb := p.Spec.CircuitBreaker; cb != nil {
		limit := func(f string, v *int64) {
			if *v < 1 || *v > defaultBreakerLimit {
				fe.addf("spec.circuitBreaker."+f, "must be between 1 and %d, got %d", int64(defaultBreakerLimit), *v)
			}
		}
		limit("maxConnections", cb.MaxConnections)
		limit("maxPendingRequests", cb.MaxPendingRequests)
		limit("maxRequests", cb.MaxRequests)
	}
	if od := p.Spec.OutlierDetection; od != nil {
		od.validate(fe, "spec.outlierDetection")
	}
	return fe.err()
}

func (p *BackendPolicy) validateTargets(fe *fieldErrors) {
	if len(p.Spec.TargetRefs) == 0 {
		fe.add("spec.targetRefs", "at least one targetRef is required: the Service the policy applies to")
	}
	seen := map[string]int{}
	for i, t := range p.Spec.TargetRefs {
		path := fmt.Sprintf("spec.targetRefs[%d]", i)
		if t.Group != "" && t.Group != trellisGroup {
			fe.addf(path+".group", "must be \"\" (core) or %s, got %q", trellisGroup, t.Group)
		}
		if !serviceLikeKind(t.Kind) {
			fe.addf(path+".kind", "must be Service or ExternalService, got %q: a BackendPolicy applies to Services", t.Kind)
		}
		if prob := dnsLabelProblem(t.Name); prob != "" {
			fe.add(path+".name", prob)
		} else if j, dup := seen[t.Name]; dup {
			fe.addf(path+".name", "Service %s is already targeted by spec.targetRefs[%d]", t.Name, j)
		} else {
			seen[t.Name] = i
		}
	}
}

func (lb *LoadBalancer) validate(fe *fieldErrors, f string) {
	hashing := lb.Type == BalancerRingHash || lb.Type == BalancerMaglev
	if !slices.Contains(Balancers(), lb.Type) {
		fe.addf(f+".type", "unknown load balancer %q: must be one of %s", lb.Type, strings.Join(Balancers(), ", "))
	}
	if h := lb.Hash; h != nil {
		if !hashing {
			fe.addf(f+".hash", "only ring-hash and maglev hash; type is %s", lb.Type)
		}
		h.validate(fe, f+".hash")
	}
	if lb.SlowStart != nil && lb.SlowStart.Duration < 0 {
		fe.addf(f+".slowStart", "must not be negative, got %s", lb.SlowStart.Duration)
	}
}

func (h *HashPolicy) validate(fe *fieldErrors, f string) {
	n := 0
	for _, set := range []bool{h.Header != "", h.Cookie != "", h.QueryParam != "", h.SourceIdentity} {
		if set {
			n++
		}
	}
	if n != 1 {
		fe.add(f, "set exactly one of header, cookie, queryParam, sourceIdentity")
	}
	if h.Header != "" && !headerNameRE.MatchString(h.Header) {
		fe.addf(f+".header", "%q is not a header name", h.Header)
	}
	if h.Cookie != "" && !headerNameRE.MatchString(h.Cookie) {
		fe.addf(f+".cookie", "%q is not a cookie name", h.Cookie)
	}
	if h.QueryParam != "" && strings.ContainsAny(h.QueryParam, "&=#? ") {
		fe.addf(f+".queryParam", "%q is not a query parameter name", h.QueryParam)
	}
}

func (r *RetryPolicy) validate(fe *fieldErrors, f string) {
	if a := *r.Attempts; a < 0 || a > 10 {
		fe.addf(f+".attempts", "must be between 0 and 10, got %d", a)
	}
	if d := r.PerTryTimeout; d != nil && d.Duration <= 0 {
		fe.addf(f+".perTryTimeout", "must be positive, got %s (leave it out for none)", d.Duration)
	}
	for i, c := range r.StatusCodes {
		if c < 500 || c > 599 {
			fe.addf(fmt.Sprintf("%s.statusCodes[%d]", f, i), "must be a 5xx status (500..599), got %d", c)
		}
	}
	for i, s := range r.GRPCStatuses {
		if _, ok := grpcStatusNames[s]; !ok {
			fe.addf(fmt.Sprintf("%s.grpcStatuses[%d]", f, i), "unknown gRPC status %q: must be one of %s", s, strings.Join(GRPCStatusNames(), ", "))
		}
	}
	b := r.Backoff
	if b.BaseInterval.Duration <= 0 {
		fe.addf(f+".backoff.baseInterval", "must be positive, got %s", b.BaseInterval.Duration)
	}
	if b.MaxInterval.Duration < b.BaseInterval.Duration {
		fe.addf(f+".backoff.maxInterval", "must be at least baseInterval (%s), got %s", b.BaseInterval.Duration, b.MaxInterval.Duration)
	}
	bu := r.Budget
	if x := *bu.RetryRatio; x < 0 || x > 1000 {
		fe.addf(f+".budget.retryRatio", "must be between 0 and 1000, got %v", x)
	}
	if m := *bu.MinRetriesPerSecond; m < 0 {
		fe.addf(f+".budget.minRetriesPerSecond", "must not be negative, got %d", m)
	}
	if t := bu.TTL.Duration; t < time.Second || t > time.Minute {
		fe.addf(f+".budget.ttl", "must be between 1s and 60s, got %s", t)
	}
	if m := *r.MaxBodyBytes; m < 0 || m > 1<<24 {
		fe.addf(f+".maxBodyBytes", "must be between 0 and 16777216, got %d", m)
	}
}

func (od *OutlierDetection) validate(fe *fieldErrors, f string) {
	if *od.Consecutive5xx < 0 {
		fe.addf(f+".consecutive5xx", "must not be negative, got %d", *od.Consecutive5xx)
	}
	if *od.ConsecutiveGatewayErrors < 0 {
		fe.addf(f+".consecutiveGatewayErrors", "must not be negative, got %d", *od.ConsecutiveGatewayErrors)
	}
	if *od.Consecutive5xx == 0 && *od.ConsecutiveGatewayErrors == 0 {
		fe.add(f, "consecutive5xx and consecutiveGatewayErrors are both 0: nothing would ever be ejected; leave outlierDetection out instead")
	}
	if d := od.BaseEjectionTime.Duration; d <= 0 {
		fe.addf(f+".baseEjectionTime", "must be positive, got %s", d)
	}
	if od.MaxEjectionTime.Duration < od.BaseEjectionTime.Duration {
		fe.addf(f+".maxEjectionTime", "must be at least baseEjectionTime (%s), got %s", od.BaseEjectionTime.Duration, od.MaxEjectionTime.Duration)
	}
	if m := *od.MaxEjectionPercent; m < 0 || m > 100 {
		fe.addf(f+".maxEjectionPercent", "must be between 0 and 100, got %d", m)
	}
}
