package config

import (
	"fmt"
	"regexp"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// GRPCRouteAPIVersion is the apiVersion GRPCRoute is accepted under.
const GRPCRouteAPIVersion = "gateway.networking.k8s.io/v1"

// GRPCRoute is the Gateway API GRPCRoute in its mesh (GAMMA) form: as
// HTTPRoute, its parentRefs name Services; its rules match gRPC service and
// method (compiled to the request path /<service>/<method>) and headers.
//
// After Decode every parentRef is defaulted as HTTPRoute's, every rule has
// at least one match, every method match a Type, every header match a Type,
// every backendRef Group, Kind, Namespace and Weight.
type GRPCRoute struct{ gwapiv1.GRPCRoute }

var (
	grpcServiceRE = regexp.MustCompile(`^(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$`)
	grpcMethodRE  = regexp.MustCompile(`^[A-Za-z_][A-Za-z_0-9]*$`)
)

func grpcRouteKind() kindInfo {
	return kindInfo{kind: "GRPCRoute", apiVersion: GRPCRouteAPIVersion, newObject: func() object { return new(GRPCRoute) }}
}

// Ref names the route.
func (g *GRPCRoute) Ref() Ref {
	return Ref{Kind: "GRPCRoute", Namespace: namespaceOr(g.Namespace), Name: g.Name}
}

func (g *GRPCRoute) typeMeta() *metav1.TypeMeta     { return &g.TypeMeta }
func (g *GRPCRoute) objectMeta() *metav1.ObjectMeta { return &g.ObjectMeta }

// appliedStatus reports whether a user tried to apply status.
func (g *GRPCRoute) appliedStatus() bool { return len(g.Status.Parents) > 0 }

// setDefaults applies the Gateway API defaults: method and header matches
// Exact, backend kind Service in the core group, weight 1; a rule without
// matches matches every request.
func (g *GRPCRoute) setDefaults() {
	if g.Namespace == "" {
		g.Namespace = DefaultNamespace
	}
	ns := gwapiv1.Namespace(g.Namespace)
	defaultParentRefs(g.Spec.ParentRefs, ns)
	for i := range g.Spec.Rules {
		rule := &g.Spec.Rules[i]
		if len(rule.Matches) == 0 {
			rule.Matches = []gwapiv1.GRPCRouteMatch{{}}
		}
		for j := range rule.Matches {
			m := &rule.Matches[j]
			if m.Method != nil && m.Method.Type == nil {
				m.Method.Type = ptrTo(gwapiv1.GRPCMethodMatchExact)
			}
			for k := range m.Headers {
				if m.Headers[k].Type == nil {
					m.Headers[k].Type = ptrTo(gwapiv1.GRPCHeaderMatchExact)
				}
			}
		}
		for j := range rule.Filters {
			if f := rule.Filters[j].RequestMirror; f != nil {
				hf := gwapiv1.HTTPRouteFilter{Type: gwapiv1.HTTPRouteFilterRequestMirror, RequestMirror: f}
				defaultFilter(&hf, ns)
			}
		}
		for j := range rule.BackendRefs {
			defaultBackendRef(&rule.BackendRefs[j].BackendRef, ns)
		}
	}
}

// Validate checks the route against the mesh profile; what Trellis does not
// implement is refused by name.
func (g *GRPCRoute) Validate() error {
	fe := &fieldErrors{ref: g.Ref()}
	validateMeta(fe, &g.ObjectMeta)
	if len(g.Spec.Hostnames) > 0 {
		fe.add("spec.hostnames", "not supported for mesh routes: a route attached to a Service applies to all traffic addressed to that Service; remove hostnames")
	}
	validateParentRefs(fe, g.Spec.ParentRefs, g.Namespace)
	validateDefaultGateways(fe, g.Spec.UseDefaultGateways)
	switch n := len(g.Spec.Rules); {
	case n == 0:
		fe.add("spec.rules", "at least one rule is required")
	case n > maxRules:
		fe.addf("spec.rules", "at most %d rules are allowed, got %d", maxRules, n)
	}
	total := 0
	names := map[gwapiv1.SectionName]int{}
	for i := range g.Spec.Rules {
		rule := &g.Spec.Rules[i]
		path := fmt.Sprintf("spec.rules[%d]", i)
		total += len(rule.Matches)
		if rule.Name != nil {
			if p := sectionNameProblem(string(*rule.Name)); p != "" {
				fe.add(path+".name", p)
			} else if j, dup := names[*rule.Name]; dup {
				fe.addf(path+".name", "%q is already used by spec.rules[%d]", *rule.Name, j)
			} else {
				names[*rule.Name] = i
			}
		}
		validateGRPCRule(fe, path, rule)
	}
	if total > maxTotalMatches {
		fe.addf("spec.rules", "at most %d matches are allowed across all rules, got %d", maxTotalMatches, total)
	}
	return fe.err()
}

func validateGRPCRule(fe *fieldErrors, path string, rule *gwapiv1.GRPCRouteRule) {
	if len(rule.Matches) > maxMatches {
		fe.addf(path+".matches", "at most %d matches are allowed in a rule, got %d", maxMatches, len(rule.Matches))
	}
	for j := range rule.Matches {
		mp := fmt.Sprintf("%s.matches[%d]", path, j)
		m := &rule.Matches[j]
		validateGRPCMethod(fe, mp+".method", m.Method)
		validateMatch(fe, mp, &gwapiv1.HTTPRouteMatch{Headers: httpHeaderMatches(m.Headers)})
	}
	for i, f := range rule.Filters {
		switch f.Type {
		case gwapiv1.GRPCRouteFilterRequestHeaderModifier, gwapiv1.GRPCRouteFilterResponseHeaderModifier,
			gwapiv1.GRPCRouteFilterRequestMirror, gwapiv1.GRPCRouteFilterExtensionRef:
		default:
			fe.addf(fmt.Sprintf("%s.filters[%d].type", path, i), "unknown GRPCRoute filter type %q: must be RequestHeaderModifier, ResponseHeaderModifier, RequestMirror or ExtensionRef (to a FaultInjection)", f.Type)
		}
	}
	validateFilters(fe, path+".filters", httpFilters(rule.Filters), false)
	if rule.SessionPersistence != nil {
		fe.add(path+".sessionPersistence", "sessionPersistence is not supported; for sticky routing use a BackendPolicy with a RING_HASH or MAGLEV balancer hashing a header; remove it")
	}
	refs := httpBackendRefs(rule.BackendRefs)
	validateBackendRefs(fe, path+".backendRefs", refs, false)
}

func validateGRPCMethod(fe *fieldErrors, path string, m *gwapiv1.GRPCMethodMatch) {
	if m == nil {
		return
	}
	svc, meth := derefStr(m.Service), derefStr(m.Method)
	switch *m.Type {
	case gwapiv1.GRPCMethodMatchExact:
		if svc == "" && meth == "" {
			fe.add(path, "give service, method or both")
		}
		if svc != "" && !grpcServiceRE.MatchString(svc) {
			fe.addf(path+".service", "%q is not a gRPC service name (package.Service)", svc)
		}
		if meth != "" && !grpcMethodRE.MatchString(meth) {
			fe.addf(path+".method", "%q is not a gRPC method name", meth)
		}
	case gwapiv1.GRPCMethodMatchRegularExpression:
		for _, fv := range [2][2]string{{"service", svc}, {"method", meth}} {
			if _, err := regexp.Compile(fv[1]); err != nil {
				fe.addf(path+"."+fv[0], "invalid regular expression (Go RE2 syntax): %v", err)
			}
		}
	default:
		fe.addf(path+".type", "unknown method match type %q: must be Exact or RegularExpression", *m.Type)
	}
	if len(svc) > 1024 || len(meth) > 1024 {
		fe.add(path, "service and method are at most 1024 characters each")
	}
}

func derefStr(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// The HTTPRoute forms of GRPCRoute parts, whose fields are the same.

func httpHeaderMatches(hs []gwapiv1.GRPCHeaderMatch) []gwapiv1.HTTPHeaderMatch {
	out := make([]gwapiv1.HTTPHeaderMatch, 0, len(hs))
	for _, h := range hs {
		t := gwapiv1.HeaderMatchExact
		if h.Type != nil && *h.Type == gwapiv1.GRPCHeaderMatchRegularExpression {
			t = gwapiv1.HeaderMatchRegularExpression
		} else if h.Type != nil && *h.Type != gwapiv1.GRPCHeaderMatchExact {
			t = gwapiv1.HeaderMatchType(*h.Type)
		}
		out = append(out, gwapiv1.HTTPHeaderMatch{Type: &t, Name: gwapiv1.HTTPHeaderName(h.Name), Value: h.Value})
	}
	return out
}

func httpFilters(fs []gwapiv1.GRPCRouteFilter) []gwapiv1.HTTPRouteFilter {
	out := make([]gwapiv1.HTTPRouteFilter, 0, len(fs))
	for _, f := range fs {
		out = append(out, gwapiv1.HTTPRouteFilter{
			Type:                   gwapiv1.HTTPRouteFilterType(f.Type),
			RequestHeaderModifier:  f.RequestHeaderModifier,
			ResponseHeaderModifier: f.ResponseHeaderModifier,
			RequestMirror:          f.RequestMirror,
			ExtensionRef:           f.ExtensionRef,
		})
	}
	return out
}

func httpBackendRefs(bs []gwapiv1.GRPCBackendRef) []gwapiv1.HTTPBackendRef {
	out := make([]gwapiv1.HTTPBackendRef, 0, len(bs))
	for _, b := range bs {
		hb := gwapiv1.HTTPBackendRef{BackendRef: b.BackendRef}
		if len(b.Filters) > 0 {
			hb.Filters = httpFilters(b.Filters)
		}
		out = append(out, hb)
	}
	return out
}

// asHTTP is the route's HTTPRoute form for the checks and attachments the
// two kinds share (parents, backends, mirrors); matches are not carried.
func (g *GRPCRoute) asHTTP() *HTTPRoute {
	h := &HTTPRoute{}
	h.ObjectMeta = g.ObjectMeta
	h.Spec.ParentRefs = g.Spec.ParentRefs
	for _, r := range g.Spec.Rules {
		h.Spec.Rules = append(h.Spec.Rules, gwapiv1.HTTPRouteRule{
			Filters:     httpFilters(r.Filters),
			BackendRefs: httpBackendRefs(r.BackendRefs),
		})
	}
	return h
}
