package config

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// BackendPolicy's hooks: a Service takes at most one policy (checkSet), and
// the policy attaches to its targetRefs' Services, setting their compiled
// backend_policy (Attacher).
//
// A targetRef to a Service no resource declares is allowed: Trellis
// services need no Service resource (a name endpoints register under is a
// service with one http port 80), so the policy applies to that implicit
// service, or takes effect once endpoints or a Service of that name appear.

var _ Attacher = (*BackendPolicy)(nil)

// checkSet refuses a second policy on a Service: which would win is not
// obvious to a reader of either, so neither does. Each of the two is
// reported, naming the other.
func (p *BackendPolicy) checkSet(set *Set) []error {
	fe := &fieldErrors{ref: p.Ref()}
	me := p.Ref()
	var others []*BackendPolicy
	for ref, o := range set.byRef {
		if q, ok := o.(*BackendPolicy); ok && ref != me && ref.Namespace == me.Namespace {
			others = append(others, q)
		}
	}
	slices.SortFunc(others, func(a, b *BackendPolicy) int { return strings.Compare(a.Name, b.Name) })
	for i, t := range p.Spec.TargetRefs {
		for _, q := range others {
			if q.targets(t.Name) {
				fe.addf(fmt.Sprintf("spec.targetRefs[%d]", i),
					"Service %s/%s is also targeted by BackendPolicy %s/%s; a Service takes one BackendPolicy: merge them",
					me.Namespace, t.Name, q.Namespace, q.Name)
			}
		}
	}
	return fe.errs
}

func (p *BackendPolicy) targets(name string) bool {
	for _, t := range p.Spec.TargetRefs {
		if t.Name == name {
			return true
		}
	}
	return false
}

// Attachments lists the targeted Services (every port), sorted.
func (p *BackendPolicy) Attachments() []Attachment {
	out := make([]Attachment, 0, len(p.Spec.TargetRefs))
	for _, t := range p.Spec.TargetRefs {
		out = append(out, Attachment{Service: ServiceKey{Namespace: p.Namespace, Name: t.Name}})
	}
	slices.SortFunc(out, func(a, b Attachment) int { return strings.Compare(a.Service.Name, b.Service.Name) })
	return out
}

// Contribute sets the service's backend policy, every field explicit.
func (p *BackendPolicy) Contribute(b *ServiceBuild, _ Attachment, _ int64) {
	b.Service.BackendPolicy = p.compile()
}

var balancerValues = map[string]meshv1.LoadBalancer{
	BalancerP2CEWMA:      meshv1.LoadBalancer_P2C_PEAK_EWMA,
	BalancerRoundRobin:   meshv1.LoadBalancer_ROUND_ROBIN,
	BalancerRandom:       meshv1.LoadBalancer_RANDOM,
	BalancerLeastRequest: meshv1.LoadBalancer_LEAST_REQUEST,
	BalancerRingHash:     meshv1.LoadBalancer_RING_HASH,
	BalancerMaglev:       meshv1.LoadBalancer_MAGLEV,
}

func (p *BackendPolicy) compile() *meshv1.BackendPolicy {
	s := &p.Spec
	out := &meshv1.BackendPolicy{}
	if lb := s.LoadBalancer; lb != nil {
		out.LoadBalancer = balancerValues[lb.Type]
		out.Hash = lb.Hash.compile()
		if lb.SlowStart != nil && lb.SlowStart.Duration > 0 {
			out.SlowStart = durationpb.New(lb.SlowStart.Duration)
		}
	}
	if r := s.Retry; r != nil {
		out.Retry = r.compile()
	}
	if cb := s.CircuitBreaker; cb != nil {
		out.CircuitBreaker = &meshv1.CircuitBreaker{
			MaxConnections:     uint32(*cb.MaxConnections),
			MaxPendingRequests: uint32(*cb.MaxPendingRequests),
			MaxRequests:        uint32(*cb.MaxRequests),
		}
	}
	if od := s.OutlierDetection; od != nil {
		out.OutlierDetection = &meshv1.OutlierDetection{
			Consecutive_5Xx:          uint32(*od.Consecutive5xx),
			ConsecutiveGatewayErrors: uint32(*od.ConsecutiveGatewayErrors),
			BaseEjectionTime:         pbDur(od.BaseEjectionTime),
			MaxEjectionTime:          pbDur(od.MaxEjectionTime),
			MaxEjectionPercent:       uint32(*od.MaxEjectionPercent),
		}
	}
	return out
}

func (h *HashPolicy) compile() *meshv1.HashPolicy {
	switch {
	case h == nil:
		return nil
	case h.Header != "":
		return &meshv1.HashPolicy{Key: &meshv1.HashPolicy_Header{Header: strings.ToLower(h.Header)}}
	case h.Cookie != "":
		return &meshv1.HashPolicy{Key: &meshv1.HashPolicy_Cookie{Cookie: h.Cookie}}
	case h.QueryParam != "":
		return &meshv1.HashPolicy{Key: &meshv1.HashPolicy_QueryParam{QueryParam: h.QueryParam}}
	}
	return &meshv1.HashPolicy{Key: &meshv1.HashPolicy_SourceIdentity{SourceIdentity: true}}
}

func (r *RetryPolicy) compile() *meshv1.RetryPolicy {
	out := &meshv1.RetryPolicy{
		Attempts:           uint32(*r.Attempts),
		RetryNonIdempotent: r.RetryNonIdempotent,
		BackoffBase:        pbDur(r.Backoff.BaseInterval),
		BackoffMax:         pbDur(r.Backoff.MaxInterval),
		Budget: &meshv1.RetryBudget{
			RetryRatio:          *r.Budget.RetryRatio,
			MinRetriesPerSecond: uint32(*r.Budget.MinRetriesPerSecond),
			Ttl:                 pbDur(r.Budget.TTL),
		},
		MaxBodyBytes: uint32(*r.MaxBodyBytes),
	}
	if r.PerTryTimeout != nil {
		out.PerTryTimeout = pbDur(r.PerTryTimeout)
	}
	for _, c := range r.StatusCodes {
		out.StatusCodes = append(out.StatusCodes, uint32(c))
	}
	for _, g := range r.GRPCStatuses {
		out.GrpcStatuses = append(out.GrpcStatuses, grpcStatusNames[g])
	}
	return out
}

func pbDur(d *metav1.Duration) *durationpb.Duration {
	return durationpb.New(time.Duration(d.Duration))
}
