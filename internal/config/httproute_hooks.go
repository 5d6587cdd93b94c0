package config

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// HTTPRoute's hooks: cross-object checks against the Services of the set,
// and its compiler hook — it attaches to Services by parentRefs and
// contributes routes to them.
//
// Everything here reads a defaulted, valid route (Decode and DecodeStored
// guarantee both): every parentRef is a Service with a namespace, every rule
// has a match, every match a path with type and value, every header match a
// type, every backendRef a Service with namespace and weight.

var _ Attacher = (*HTTPRoute)(nil)

// checkSet reports parentRef and backendRef ports that a Service of the set
// does not declare, and parentRefs to its tcp ports. Services outside the
// set are not checked.
func (r *HTTPRoute) checkSet(set *Set) []error {
	return append(r.checkRefs(set, r.Ref()), conflicts(set, r)...)
}

// checkRefs checks the ports of parentRefs, backendRefs and mirrors
// against the Services of the set, reporting against ref (a GRPCRoute
// checks its HTTPRoute form).
func (r *HTTPRoute) checkRefs(set *Set, ref Ref) []error {
	fe := &fieldErrors{ref: ref}
	for i, p := range r.Spec.ParentRefs {
		path := fmt.Sprintf("spec.parentRefs[%d]", i)
		svc := set.service(derefOr(p.Namespace, r.Namespace), string(p.Name))
		if svc == nil || p.Port == nil {
			continue
		}
		port, ok := svc.PortByNumber(*p.Port)
		switch {
		case !ok:
			fe.addf(path+".port", "Service %s has no port %d", svc.Ref().Namespace+"/"+svc.Name, *p.Port)
		case port.Protocol == ProtocolTCP:
			fe.addf(path+".port", "port %d of Service %s is tcp: an %s needs an http, http2 or grpc port", *p.Port, svc.Ref().Namespace+"/"+svc.Name, ref.Kind)
		}
	}
	for i, rule := range r.Spec.Rules {
		for j, f := range rule.Filters {
			if f.RequestMirror == nil {
				continue
			}
			m := f.RequestMirror.BackendRef
			svc := set.service(derefOr(m.Namespace, r.Namespace), string(m.Name))
			if svc != nil && m.Port != nil {
				if _, ok := svc.PortByNumber(*m.Port); !ok {
					fe.addf(fmt.Sprintf("spec.rules[%d].filters[%d].requestMirror.backendRef.port", i, j), "Service %s has no port %d", svc.Ref().Namespace+"/"+svc.Name, *m.Port)
				}
			}
		}
		for j, b := range rule.BackendRefs {
			svc := set.service(derefOr(b.Namespace, r.Namespace), string(b.Name))
			if svc == nil || b.Port == nil {
				continue
			}
			if _, ok := svc.PortByNumber(*b.Port); !ok {
				fe.addf(fmt.Sprintf("spec.rules[%d].backendRefs[%d].port", i, j), "Service %s has no port %d", svc.Ref().Namespace+"/"+svc.Name, *b.Port)
			}
		}
	}
	return fe.errs
}

// parentMatches lists every match of every rule on every parent.
func (r *HTTPRoute) parentMatches() []parentMatch {
	var out []parentMatch
	for _, at := range r.Attachments() {
		for ri, rule := range r.Spec.Rules {
			for mi, m := range rule.Matches {
				match, _ := httpMatch(m)
				out = append(out, parentMatch{at: at, key: matchKey(match), field: fmt.Sprintf("spec.rules[%d].matches[%d]", ri, mi)})
			}
		}
	}
	return out
}

// Attachments lists the Services of the parentRefs. A parentRef without a
// port covers every port of its Service, so other parentRefs to the same
// Service add nothing.
func (r *HTTPRoute) Attachments() []Attachment {
	var out []Attachment
	for _, p := range r.Spec.ParentRefs {
		at := Attachment{Service: ServiceKey{Namespace: string(*p.Namespace), Name: string(p.Name)}}
		if p.Port != nil {
			at.Port = uint32(*p.Port)
		}
		out = append(out, at)
	}
	slices.SortFunc(out, func(a, b Attachment) int {
		return cmp.Or(cmp.Compare(a.Service.Namespace, b.Service.Namespace),
			cmp.Compare(a.Service.Name, b.Service.Name), cmp.Compare(a.Port, b.Port))
	})
	// Sorted, a port-0 attachment comes first for its Service and covers
	// the rest.
	kept := out[:0]
	for _, at := range out {
		if n := len(kept); n > 0 && kept[n-1].Service == at.Service && (kept[n-1].Port == 0 || kept[n-1].Port == at.Port) {
			continue
		}
		kept = append(kept, at)
	}
	return kept
}

// Contribute adds one route per match of every rule, ranked by Gateway API
// precedence, so the proxy's first-match walk follows it exactly. The
// matches of one rule share its filters and timeouts.
func (r *HTTPRoute) Contribute(b *ServiceBuild, at Attachment, createRev int64) {
	fullName := r.Namespace + "/" + r.Name
	for ri, rule := range r.Spec.Rules {
		name := fmt.Sprintf("%s/rules[%d]", fullName, ri)
		backends := routeBackends(rule)
		filters := compileFilters(rule.Filters, r.Namespace, b.Lookup)
		timeouts := compileTimeouts(rule.Timeouts)
		for mi, m := range rule.Matches {
			match, pathRank := httpMatch(m)
			b.AddRoute(b.withRoutePolicies(r.Ref(), &meshv1.Route{
				Name:     name,
				Port:     at.Port,
				Matches:  []*meshv1.Match{match},
				Backends: backends,
				Filters:  filters,
				Timeouts: timeouts,
			}), RouteRank{
				PathRank:    pathRank,
				PathLen:     len(match.Path.Value),
				HasMethod:   match.Method != "",
				Headers:     len(match.Headers),
				QueryParams: len(match.QueryParams),
				Created:     r.CreationTimestamp.Time,
				CreateRev:   createRev,
				FullName:    fullName,
				Rule:        ri,
				Match:       mi,
				Port:        at.Port,
			})
		}
	}
}

// httpMatch compiles one (defaulted) match and its path's precedence rank.
func httpMatch(m gwapiv1.HTTPRouteMatch) (*meshv1.Match, int) {
	pm, pathRank := pathMatch(m.Path)
	match := &meshv1.Match{Path: pm, QueryParams: queryMatches(m.QueryParams)}
	for _, h := range m.Headers {
		t := meshv1.HeaderMatch_EXACT
		if *h.Type == gwapiv1.HeaderMatchRegularExpression {
			t = meshv1.HeaderMatch_REGEX
		}
		match.Headers = append(match.Headers, &meshv1.HeaderMatch{
			Type: t, Name: strings.ToLower(string(h.Name)), Value: h.Value,
		})
	}
	if m.Method != nil {
		match.Method = string(*m.Method)
	}
	return match, pathRank
}

// pathMatch compiles a (defaulted) path match and its precedence rank.
func pathMatch(p *gwapiv1.HTTPPathMatch) (*meshv1.PathMatch, int) {
	switch *p.Type {
	case gwapiv1.PathMatchExact:
		return &meshv1.PathMatch{Type: meshv1.PathMatch_EXACT, Value: *p.Value}, 0
	case gwapiv1.PathMatchRegularExpression:
		return &meshv1.PathMatch{Type: meshv1.PathMatch_REGEX, Value: *p.Value}, 1
	}
	return &meshv1.PathMatch{Type: meshv1.PathMatch_PREFIX, Value: *p.Value}, 2
}

func routeBackends(rule gwapiv1.HTTPRouteRule) []*meshv1.Backend {
	return backendsOf(rule.BackendRefs)
}

func backendsOf(refs []gwapiv1.HTTPBackendRef) []*meshv1.Backend {
	out := make([]*meshv1.Backend, 0, len(refs))
	for _, br := range refs {
		b := &meshv1.Backend{Service: string(br.Name), Namespace: string(*br.Namespace), Weight: uint32(*br.Weight)}
		if br.Port != nil {
			b.Port = uint32(*br.Port)
		}
		out = append(out, b)
	}
	return out
}
