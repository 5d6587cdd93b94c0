package config

import (
	"errors"
	"fmt"
)

// CheckSet checks what only a set of objects can show, for the objects of
// one apply (or the whole desired state after it):
//   - the same resource (Ref) twice;
//   - an HTTPRoute parentRef or backendRef port that the referenced Service,
//     when it is in the set, does not declare;
//   - an HTTPRoute attached to a tcp port of a Service in the set.
//
// Several HTTPRoutes attached to the same Service are allowed: Gateway API
// precedence decides between their rules.
func CheckSet(objs []Object) error {
	var errs []error
	seen := map[Ref]int{}
	services := map[Ref]*Service{}
	for i, o := range objs {
		ref := o.Ref()
		if j, dup := seen[ref]; dup {
			errs = append(errs, &Error{Ref: ref, Reason: fmt.Sprintf("defined more than once (items %d and %d of the set); keep one", j+1, i+1)})
			continue
		}
		seen[ref] = i
		if s, ok := o.(*Service); ok {
			services[ref] = s
		}
	}
	for _, o := range objs {
		r, ok := o.(*HTTPRoute)
		if !ok {
			continue
		}
		fe := &fieldErrors{ref: r.Ref()}
		for i, p := range r.Spec.ParentRefs {
			path := fmt.Sprintf("spec.parentRefs[%d]", i)
			svc := services[Ref{Kind: "Service", Namespace: derefOr(p.Namespace, r.Namespace), Name: string(p.Name)}]
			if svc == nil || p.Port == nil {
				continue
			}
			port, ok := svc.PortByNumber(*p.Port)
			switch {
			case !ok:
				fe.addf(path+".port", "Service %s has no port %d", svc.Ref().Namespace+"/"+svc.Name, *p.Port)
			case port.Protocol == ProtocolTCP:
				fe.addf(path+".port", "port %d of Service %s is tcp: an HTTPRoute needs an http, http2 or grpc port", *p.Port, svc.Ref().Namespace+"/"+svc.Name)
			}
		}
		for i, rule := range r.Spec.Rules {
			for j, b := range rule.BackendRefs {
				svc := services[Ref{Kind: "Service", Namespace: derefOr(b.Namespace, r.Namespace), Name: string(b.Name)}]
				if svc == nil || b.Port == nil {
					continue
				}
				if _, ok := svc.PortByNumber(*b.Port); !ok {
					fe.addf(fmt.Sprintf("spec.rules[%d].backendRefs[%d].port", i, j), "Service %s has no port %d", svc.Ref().Namespace+"/"+svc.Name, *b.Port)
				}
			}
		}
		errs = append(errs, fe.errs...)
	}
	return errors.Join(errs...)
}

func derefOr[T ~string](p *T, def string) string {
	if p == nil {
		return namespaceOr(def)
	}
	return string(*p)
}
