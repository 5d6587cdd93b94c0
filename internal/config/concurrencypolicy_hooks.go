package config

import (
	"fmt"
	"slices"
	"strings"
)

// ConcurrencyPolicy's hooks: a Service takes at most one (checkSet), and
// the policy attaches to its targetRefs' Services, setting the inbound
// policy their own proxies enforce (Attacher). As for BackendPolicy, a
// targetRef to a Service no resource declares is allowed.

var _ Attacher = (*ConcurrencyPolicy)(nil)

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

// Attachments lists the targeted Services, sorted.
func (p *ConcurrencyPolicy) Attachments() []Attachment {
	out := make([]Attachment, 0, len(p.Spec.TargetRefs))
	for _, t := range p.Spec.TargetRefs {
		out = append(out, Attachment{Service: ServiceKey{Namespace: p.Namespace, Name: t.Name}})
	}
	slices.SortFunc(out, func(a, b Attachment) int { return strings.Compare(a.Service.Name, b.Service.Name) })
	return out
}

// Contribute sets the concurrency limit of the service's inbound policy.
func (p *ConcurrencyPolicy) Contribute(b *ServiceBuild, _ Attachment, _ int64) {
	b.InboundPolicy().Concurrency = p.compile()
}
