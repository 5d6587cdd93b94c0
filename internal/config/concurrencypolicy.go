package config

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/concurrency"
)

// ConcurrencyPolicy is a Trellis kind (trellis.dev/v1alpha1) that limits
// how many requests the proxies of a Service let through to their app at
// once, with a limit that adapts to the app's latency (a gradient
// controller, as Envoy's adaptive concurrency filter): requests over the
// limit are shed with 503 (gRPC UNAVAILABLE) and response flag CL before
// the app queues them. It attaches to Services by targetRefs; at most one
// ConcurrencyPolicy may target a Service.
type ConcurrencyPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              ConcurrencyPolicySpec `json:"spec"`
}

// ConcurrencyPolicySpec is a ConcurrencyPolicy's desired state.
type ConcurrencyPolicySpec struct {
	TargetRefs []PolicyTargetRef `json:"targetRefs"`
	// Adaptive is the gradient controller's settings; every field has a
	// default, so `adaptive: {}` is a complete policy.
	Adaptive *AdaptiveConcurrency `json:"adaptive"`
}

// AdaptiveConcurrency configures the gradient controller.
type AdaptiveConcurrency struct {
	// MinLimit is the lowest limit, and the limit while minRTT is
	// measured; default 3.
	MinLimit *int32 `json:"minLimit,omitempty"`
	// MaxLimit is the highest limit; default 1000.
	MaxLimit *int32 `json:"maxLimit,omitempty"`
	// InitialLimit is the limit before the first measurement; default 50
	// (within minLimit..maxLimit).
	InitialLimit *int32 `json:"initialLimit,omitempty"`
	// Interval is how often the limit is recomputed; default 100ms.
	Interval *metav1.Duration `json:"interval,omitempty"`
	// Percentile of each interval's latencies compared with minRTT,
	// 1–100; default 90.
	Percentile *float64 `json:"percentile,omitempty"`
	// Buffer is the latency above minRTT, in percent of it, still taken
	// for an app that is not queueing; 0–1000, default 25.
	Buffer *float64 `json:"buffer,omitempty"`
	// MinRTTInterval is how often minRTT is measured again; default 30s.
	MinRTTInterval *metav1.Duration `json:"minRTTInterval,omitempty"`
	// MinRTTRequests is how many requests measure minRTT; default 50.
	MinRTTRequests *int32 `json:"minRTTRequests,omitempty"`
	// Jitter spreads each minRTTInterval by up to this percent, so the
	// replicas of a service do not measure at once; 0–100, default 15.
	Jitter *float64 `json:"jitter,omitempty"`
}

const concurrencyPolicyKind = "ConcurrencyPolicy"

func concurrencyPolicyKindInfo() kindInfo {
	return kindInfo{kind: concurrencyPolicyKind, apiVersion: ServiceAPIVersion, newObject: func() object { return new(ConcurrencyPolicy) }}
}

// Ref names the policy.
func (p *ConcurrencyPolicy) Ref() Ref {
	return Ref{Kind: concurrencyPolicyKind, Namespace: namespaceOr(p.Namespace), Name: p.Name}
}

func (p *ConcurrencyPolicy) typeMeta() *metav1.TypeMeta     { return &p.TypeMeta }
func (p *ConcurrencyPolicy) objectMeta() *metav1.ObjectMeta { return &p.ObjectMeta }

// setDefaults spells out every default, so the compiled policy is explicit.
func (p *ConcurrencyPolicy) setDefaults() {
	if p.Namespace == "" {
		p.Namespace = DefaultNamespace
	}
	for i := range p.Spec.TargetRefs {
		if p.Spec.TargetRefs[i].Kind == "" {
			p.Spec.TargetRefs[i].Kind = "Service"
		}
	}
	setDefault(&p.Spec.Adaptive, AdaptiveConcurrency{})
	a := p.Spec.Adaptive
	setDefault(&a.MinLimit, concurrency.DefaultMinLimit)
	setDefault(&a.MaxLimit, concurrency.DefaultMaxLimit)
	setDefault(&a.InitialLimit, min(max(concurrency.DefaultInitialLimit, *a.MinLimit), *a.MaxLimit))
	setDefault(&a.Interval, dur(concurrency.DefaultInterval))
	setDefault(&a.Percentile, concurrency.DefaultPercentile*100)
	setDefault(&a.Buffer, concurrency.DefaultBuffer*100)
	setDefault(&a.MinRTTInterval, dur(concurrency.DefaultMinRTTInterval))
	setDefault(&a.MinRTTRequests, concurrency.DefaultMinRTTRequests)
	setDefault(&a.Jitter, concurrency.DefaultJitter*100)
}

// Validate checks the policy; see Object.
func (p *ConcurrencyPolicy) Validate() error {
	fe := &fieldErrors{ref: p.Ref()}
	validateMeta(fe, &p.ObjectMeta)
	validatePolicyTargets(fe, p.Spec.TargetRefs, concurrencyPolicyKind)
	a := p.Spec.Adaptive
	const f = "spec.adaptive."
	between := func(name string, v, lo, hi float64) {
		if !(v >= lo && v <= hi) {
			fe.addf(f+name, "must be between %v and %v, got %v", lo, hi, v)
		}
	}
	between("minLimit", float64(*a.MinLimit), 1, 1<<20)
	between("maxLimit", float64(*a.MaxLimit), 1, 1<<20)
	if *a.MaxLimit < *a.MinLimit {
		fe.addf(f+"maxLimit", "%d is below minLimit %d", *a.MaxLimit, *a.MinLimit)
	}
	if *a.InitialLimit < *a.MinLimit || *a.InitialLimit > *a.MaxLimit {
		fe.addf(f+"initialLimit", "%d is outside minLimit..maxLimit (%d..%d)", *a.InitialLimit, *a.MinLimit, *a.MaxLimit)
	}
	between("percentile", *a.Percentile, 1, 100)
	between("buffer", *a.Buffer, 0, 1000)
	between("jitter", *a.Jitter, 0, 100)
	between("minRTTRequests", float64(*a.MinRTTRequests), 1, 1<<20)
	if d := a.Interval.Duration; d < time.Millisecond || d > time.Minute {
		fe.addf(f+"interval", "must be between 1ms and 1m, got %s", d)
	}
	if d := a.MinRTTInterval.Duration; d < a.Interval.Duration || d > 24*time.Hour {
		fe.addf(f+"minRTTInterval", "must be between interval (%s) and 24h, got %s", a.Interval.Duration, d)
	}
	return fe.err()
}

// validatePolicyTargets checks a policy's targetRefs: Services of its
// namespace, each once.
func validatePolicyTargets(fe *fieldErrors, refs []PolicyTargetRef, kind string) {
	if len(refs) == 0 {
		fe.add("spec.targetRefs", "at least one targetRef is required: the Service the policy applies to")
	}
	seen := map[string]int{}
	for i, t := range refs {
		path := fmt.Sprintf("spec.targetRefs[%d]", i)
		if t.Group != "" && t.Group != trellisGroup {
			fe.addf(path+".group", "must be \"\" (core) or %s, got %q", trellisGroup, t.Group)
		}
		if t.Kind != "Service" {
			fe.addf(path+".kind", "must be Service, got %q: a %s applies to Services", t.Kind, kind)
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

// compile is the policy as the proxy gets it (defaulted, valid): fractions
// where the resource has percents.
func (p *ConcurrencyPolicy) compile() *meshv1.ConcurrencyPolicy {
	a := p.Spec.Adaptive
	return &meshv1.ConcurrencyPolicy{
		MinLimit:       uint32(*a.MinLimit),
		MaxLimit:       uint32(*a.MaxLimit),
		InitialLimit:   uint32(*a.InitialLimit),
		Interval:       durationpb.New(a.Interval.Duration),
		Percentile:     *a.Percentile / 100,
		Buffer:         *a.Buffer / 100,
		MinRttInterval: durationpb.New(a.MinRTTInterval.Duration),
		MinRttRequests: uint32(*a.MinRTTRequests),
		Jitter:         *a.Jitter / 100,
	}
}
