package config

import (
	"fmt"
	"regexp"

	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// GRPCRoute's hooks: the same cross-object checks as HTTPRoute's (ports of
// parents, backends and mirrors; conflicts with any route on the same
// parent port), and it contributes snapshot Routes as HTTPRoute does, its
// service/method matches compiled to the gRPC request path.

var _ Attacher = (*GRPCRoute)(nil)

func (g *GRPCRoute) checkSet(set *Set) []error {
	return append(g.asHTTP().checkRefs(set, g.Ref()), conflicts(set, g)...)
}

// Attachments lists the Services of the parentRefs, as HTTPRoute's.
func (g *GRPCRoute) Attachments() []Attachment { return g.asHTTP().Attachments() }

func (g *GRPCRoute) parentMatches() []parentMatch {
	var out []parentMatch
	for _, at := range g.Attachments() {
		for ri, rule := range g.Spec.Rules {
			for mi, m := range rule.Matches {
				match, _, _ := grpcMatch(m)
				out = append(out, parentMatch{at: at, key: matchKey(match), field: fmt.Sprintf("spec.rules[%d].matches[%d]", ri, mi)})
			}
		}
	}
	return out
}

// Contribute adds one route per match of every rule. Precedence follows
// the GRPCRoute rules as closely as RouteRank can: an exact service and
// method first, then regular expressions, then a service alone (a path
// prefix), longer names first; then the most header matches; then age and
// name, as for HTTPRoute.
func (g *GRPCRoute) Contribute(b *ServiceBuild, at Attachment, createRev int64) {
	fullName := g.Namespace + "/" + g.Name
	for ri, rule := range g.Spec.Rules {
		name := fmt.Sprintf("%s/rules[%d]", fullName, ri)
		backends := backendsOf(httpBackendRefs(rule.BackendRefs))
		filters := compileFilters(httpFilters(rule.Filters), g.Namespace, b.Lookup)
		for mi, m := range rule.Matches {
			match, pathRank, nameLen := grpcMatch(m)
			b.AddRoute(b.withRoutePolicies(g.Ref(), &meshv1.Route{
				Name:     name,
				Port:     at.Port,
				Matches:  []*meshv1.Match{match},
				Backends: backends,
				Filters:  filters,
			}), RouteRank{
				PathRank:  pathRank,
				PathLen:   nameLen,
				Headers:   len(match.Headers),
				Created:   g.CreationTimestamp.Time,
				CreateRev: createRev,
				FullName:  fullName,
				Rule:      ri,
				Match:     mi,
				Port:      at.Port,
			})
		}
	}
}

// grpcMatch compiles a (defaulted) match: the method to a path match on
// /<service>/<method>, headers as HTTPRoute's. It returns the path's rank
// (0 exact, 1 regex, 2 prefix) and the length of the names matched.
func grpcMatch(m gwapiv1.GRPCRouteMatch) (*meshv1.Match, int, int) {
	hm, _ := httpMatch(gwapiv1.HTTPRouteMatch{
		Path:    &gwapiv1.HTTPPathMatch{Type: ptrTo(gwapiv1.PathMatchPathPrefix), Value: ptrTo("/")},
		Headers: httpHeaderMatches(m.Headers),
	})
	rank := 2
	if mm := m.Method; mm != nil {
		var pm *meshv1.PathMatch
		pm, rank = grpcPath(mm)
		hm.Path = pm
		return hm, rank, len(derefStr(mm.Service)) + len(derefStr(mm.Method))
	}
	return hm, rank, 0
}

func grpcPath(m *gwapiv1.GRPCMethodMatch) (*meshv1.PathMatch, int) {
	svc, meth := derefStr(m.Service), derefStr(m.Method)
	if *m.Type == gwapiv1.GRPCMethodMatchRegularExpression {
		if svc == "" {
			svc = "[^/]+"
		}
		if meth == "" {
			meth = "[^/]+"
		}
		return &meshv1.PathMatch{Type: meshv1.PathMatch_REGEX, Value: "/(?:" + svc + ")/(?:" + meth + ")"}, 1
	}
	switch {
	case svc != "" && meth != "":
		return &meshv1.PathMatch{Type: meshv1.PathMatch_EXACT, Value: "/" + svc + "/" + meth}, 0
	case svc != "":
		// A PathPrefix matches whole segments: /pkg.Svc matches /pkg.Svc/M only.
		return &meshv1.PathMatch{Type: meshv1.PathMatch_PREFIX, Value: "/" + svc}, 2
	}
	return &meshv1.PathMatch{Type: meshv1.PathMatch_REGEX, Value: "/[^/]+/" + regexp.QuoteMeta(meth)}, 1
}
