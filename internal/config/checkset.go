package config

import (
	"errors"
	"fmt"
)

// CheckSet checks what only a set of objects can show, for the objects of
// one apply (or the whole desired state after it): the same resource (Ref)
// twice, then each kind's own cross-object checks (its checkSet hook). Today
// those are HTTPRoute's:
//   - a parentRef or backendRef port that the referenced Service, when it
//     is in the set, does not declare;
//   - a parentRef to a tcp port of a Service in the set.
//
// Several HTTPRoutes attached to the same Service are allowed: Gateway API
// precedence decides between their rules.
func CheckSet(objs []Object) error {
	var errs []error
	set := &Set{byRef: make(map[Ref]Object, len(objs))}
	seen := map[Ref]int{}
	for i, o := range objs {
		ref := o.Ref()
		if j, dup := seen[ref]; dup {
			errs = append(errs, &Error{Ref: ref, Reason: fmt.Sprintf("defined more than once (items %d and %d of the set); keep one", j+1, i+1)})
			continue
		}
		seen[ref] = i
		set.byRef[ref] = o
	}
	for _, o := range objs {
		if c, ok := o.(setChecker); ok {
			errs = append(errs, c.checkSet(set)...)
		}
	}
	return errors.Join(errs...)
}

func derefOr[T ~string](p *T, def string) string {
	if p == nil {
		return namespaceOr(def)
	}
	return string(*p)
}
