package config

import (
	"fmt"
	"slices"
	"strings"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// ConcurrencyPolicy's hooks: a Service takes at most one (checkSet), and
// the policy applies to its targetRefs' Services, setting the inbound
// policy their own proxies enforce (InboundContributor). As for
// BackendPolicy, a targetRef to a Service no resource declares is allowed.

var _ InboundContributor = (*ConcurrencyPolicy)(nil)

// checkSet refuses a second policy on a Service, naming the other: which
// limit would hold is not obvious to a reader of either.
func (p *ConcurrencyPolicy) checkSet(set *Set) []error {
	fe := &fieldErrors{ref: p.Ref()}
	me := p.Ref()
	var others []*ConcurrencyPolicy
	for ref, o := range set.byRef {
		if q, ok := o.(*ConcurrencyPolicy); ok && ref != me && ref.Namespace == me.Namespace {
			others = append(others, q)
		}
	}
	slices.SortFunc(others, func(a, b *ConcurrencyPolicy) int { return strings.Compare(a.Name, b.Name) })
	for i, t := range p.Spec.TargetRefs {
		for _, q := range others {
			if slices.ContainsFunc(q.Spec.TargetRefs, func(r PolicyTargetRef) bool { return r.Name == t.Name }) {
				fe.addf(fmt.Sprintf("spec.targetRefs[%d]", i),
					"Service %s/%s is also targeted by ConcurrencyPolicy %s/%s; a Service takes one ConcurrencyPolicy: merge them",
					me.Namespace, t.Name, q.Namespace, q.Name)
			}
		}
	}
	return fe.errs
}

// AppliesTo: the targeted Services of the policy's namespace.
func (p *ConcurrencyPolicy) AppliesTo(svc ServiceKey) bool {
	return svc.Namespace == p.Namespace && slices.ContainsFunc(p.Spec.TargetRefs, func(r PolicyTargetRef) bool { return r.Name == svc.Name })
}

// ContributeInbound sets the concurrency limit of the service's inbound policy.
func (p *ConcurrencyPolicy) ContributeInbound(ip *meshv1.InboundPolicy) {
	ip.Concurrency = p.compile()
}
