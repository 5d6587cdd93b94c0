package config

import (
	"fmt"
	"slices"
	"strings"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// Telemetry's hooks: two Telemetry resources at the same scope for the
// same Service are refused (checkSet), and each contributes to the
// snapshot of the proxies it applies to (ProxyScoped).

var _ ProxyScoped = (*Telemetry)(nil)

// Scope is how narrowly a ProxyScoped object applies; narrower wins.
type Scope int

// Scopes, widest first.
const (
	ScopeMesh Scope = iota
	ScopeNamespace
	ScopeService
)

// ProxyScoped is a kind that configures proxies beyond the services they
// see: it applies, at a scope, to the proxies of some services and sets
// part of their snapshot. The compiler applies those of a proxy's own
// service widest scope first, so a narrower one overrides field by field.
type ProxyScoped interface {
	Object
	// AppliesTo reports whether the object applies to the proxies of
	// service k, and at which scope.
	AppliesTo(k ServiceKey) (Scope, bool)
	// ContributeProxy sets the object's fields in snap.
	ContributeProxy(snap *meshv1.Snapshot)
}

// AppliesTo: mesh-wide in trellis-system without targetRefs, namespace-wide
// elsewhere without them, else the targeted Services of its namespace.
func (t *Telemetry) AppliesTo(k ServiceKey) (Scope, bool) {
	ns := namespaceOr(t.Namespace)
	switch {
	case len(t.Spec.TargetRefs) == 0 && ns == RootNamespace:
		return ScopeMesh, true
	case ns != k.Namespace:
		return 0, false
	case len(t.Spec.TargetRefs) == 0:
		return ScopeNamespace, true
	}
	for _, r := range t.Spec.TargetRefs {
		if r.Name == k.Name {
			return ScopeService, true
		}
	}
	return 0, false
}

// ContributeProxy sets the sections the Telemetry gives.
func (t *Telemetry) ContributeProxy(snap *meshv1.Snapshot) {
	if snap.Telemetry == nil {
		snap.Telemetry = &meshv1.Telemetry{}
	}
	if tr := t.Spec.Tracing; tr != nil {
		snap.Telemetry.TracingSamplingPercent = ptrTo(*tr.RandomSamplingPercentage)
	}
	if al := t.Spec.AccessLogging; al != nil {
		snap.Telemetry.AccessLog = ptrTo(!al.Disabled)
	}
}

// checkSet refuses a second Telemetry at the same scope for a Service (or
// a second untargeted one in a namespace): which would win is not obvious
// to a reader of either, so neither does.
func (t *Telemetry) checkSet(set *Set) []error {
	fe := &fieldErrors{ref: t.Ref()}
	me := t.Ref()
	var others []*Telemetry
	for ref, o := range set.byRef {
		if q, ok := o.(*Telemetry); ok && ref != me && ref.Namespace == me.Namespace {
			others = append(others, q)
		}
	}
	slices.SortFunc(others, func(a, b *Telemetry) int { return strings.Compare(a.Name, b.Name) })
	if len(t.Spec.TargetRefs) == 0 {
		for _, q := range others {
			if len(q.Spec.TargetRefs) == 0 {
				fe.addf("spec.targetRefs", "Telemetry %s/%s also applies to the whole %s; a scope takes one Telemetry: merge them",
					q.Namespace, q.Name, scopeName(me.Namespace))
			}
		}
		return fe.errs
	}
	for i, r := range t.Spec.TargetRefs {
		for _, q := range others {
			if _, ok := q.AppliesTo(ServiceKey{Namespace: me.Namespace, Name: r.Name}); ok && len(q.Spec.TargetRefs) > 0 {
				fe.addf(fmt.Sprintf("spec.targetRefs[%d]", i),
					"Service %s/%s is also targeted by Telemetry %s/%s; a Service takes one Telemetry: merge them",
					me.Namespace, r.Name, q.Namespace, q.Name)
			}
		}
	}
	return fe.errs
}

func scopeName(ns string) string {
	if ns == RootNamespace {
		return "mesh"
	}
	return "namespace " + ns
}
