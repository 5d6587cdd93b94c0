package config

import (
	"errors"
	"fmt"
)

// CheckSet checks what only a set of objects can show, for the objects of
// one apply (or the whole desired state after it): the same resource (Ref)
// twice, then each kind's own cross-object checks (its checkSet hook). Today
// those are the routes' (HTTPRoute and GRPCRoute):
//   - a parentRef, backendRef or mirror port that the referenced Service,
//     when it is in the set, does not declare;
//   - a parentRef to a tcp port of a Service in the set;
//   - two routes attached to the same Service port with an identical match
//     (a conflict, reported against each, naming the other).
//
// Several routes attached to the same Service are otherwise allowed:
// Gateway API precedence decides between their rules.
func CheckSet(objs []Object) error { return CheckSetIn(objs, nil) }

// CheckSetIn is CheckSet where origin(i) names the file objs[i] came from,
// so a resource defined twice names both files. A nil origin, or "" for an
// object, means the origin is unknown.
func CheckSetIn(objs []Object, origin func(i int) string) error {
	var errs []error
	set := &Set{byRef: make(map[Ref]Object, len(objs))}
	seen := map[Ref]int{}
	from := func(i int) string {
		if origin == nil {
			return ""
		}
		return origin(i)
	}
	for i, o := range objs {
		ref := o.Ref()
		if j, dup := seen[ref]; dup {
			errs = append(errs, duplicate(ref, from(j), from(i)))
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

// duplicate reports ref defined a second time, in file second (first is
// where it was defined first): against the second, naming the first.
func duplicate(ref Ref, first, second string) error {
	reason := "defined more than once in the set; keep one"
	switch {
	case first != "" && first == second:
		reason = "defined more than once in this file; keep one"
	case first != "":
		reason = fmt.Sprintf("defined more than once: also in %s; keep one (a directory applies every file in it)", first)
	}
	return &Error{File: second, Ref: ref, Reason: reason}
}

func derefOr[T ~string](p *T, def string) string {
	if p == nil {
		return namespaceOr(def)
	}
	return string(*p)
}
