package config

import (
	"fmt"
	"slices"
	"strings"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// Route conflicts: two routes (HTTPRoute or GRPCRoute) attached to the same
// parent Service port with an identical match. Gateway API precedence would
// silently pick the older one; the mesh refuses the pair at apply instead,
// naming both, so that no route does less than it says.

// parentMatch is one compiled match of a route on one of its parents.
type parentMatch struct {
	at    Attachment
	key   string // matchKey of the compiled match
	field string // where in the route, e.g. spec.rules[0].matches[1]
}

// matchLister is a route kind whose matches can conflict.
type matchLister interface {
	Object
	parentMatches() []parentMatch
}

// matchKey is a canonical form of a compiled match: equal keys match the
// same requests by the same conditions (header and query order ignored).
func matchKey(m *meshv1.Match) string {
	var b strings.Builder
	fmt.Fprintf(&b, "path=%d:%q method=%q", m.GetPath().GetType(), m.GetPath().GetValue(), m.GetMethod())
	hs := make([]string, 0, len(m.GetHeaders()))
	for _, h := range m.GetHeaders() {
		hs = append(hs, fmt.Sprintf("%q:%d:%q", strings.ToLower(h.GetName()), h.GetType(), h.GetValue()))
	}
	slices.Sort(hs)
	qs := make([]string, 0, len(m.GetQueryParams()))
	for _, q := range m.GetQueryParams() {
		qs = append(qs, fmt.Sprintf("%q:%d:%q", q.GetName(), q.GetType(), q.GetValue()))
	}
	slices.Sort(qs)
	fmt.Fprintf(&b, " headers=%s query=%s", strings.Join(hs, ","), strings.Join(qs, ","))
	return b.String()
}

// portsOverlap: port 0 attaches to every port of the Service.
func portsOverlap(a, b uint32) bool { return a == 0 || b == 0 || a == b }

// conflicts reports the matches of self that another route of the set
// attached to an overlapping parent port has too, against self, naming
// the other route and its match.
func conflicts(set *Set, self matchLister) []error {
	mine := self.parentMatches()
	if len(mine) == 0 {
		return nil
	}
	ref := self.Ref()
	others := make([]matchLister, 0)
	for r, o := range set.byRef {
		if ml, ok := o.(matchLister); ok && r != ref {
			others = append(others, ml)
		}
	}
	slices.SortFunc(others, func(a, b matchLister) int { return strings.Compare(a.Ref().String(), b.Ref().String()) })
	fe := &fieldErrors{ref: ref}
	reported := map[string]bool{}
	for _, o := range others {
		theirs := o.parentMatches()
		for _, m := range mine {
			for _, t := range theirs {
				if m.at.Service != t.at.Service || !portsOverlap(m.at.Port, t.at.Port) || m.key != t.key {
					continue
				}
				msg := fmt.Sprintf("conflicts with %s %s: both attach to Service %s/%s%s with an identical match; merge them into one route or make the matches differ",
					o.Ref(), t.field, m.at.Service.Namespace, m.at.Service.Name, portSuffix(m.at.Port, t.at.Port))
				if !reported[m.field+msg] {
					reported[m.field+msg] = true
					fe.add(m.field, msg)
				}
			}
		}
	}
	return fe.errs
}

func portSuffix(a, b uint32) string {
	switch {
	case a != 0:
		return fmt.Sprintf(" port %d", a)
	case b != 0:
		return fmt.Sprintf(" port %d", b)
	}
	return ""
}
