package config

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"

	"trellis.dev/trellis/internal/meshname"
)

// HTTPRouteAPIVersion is the apiVersion HTTPRoute is accepted under.
const HTTPRouteAPIVersion = "gateway.networking.k8s.io/v1"

// HTTPRoute is the Gateway API HTTPRoute in its mesh (GAMMA) form: its
// parentRefs name Services, and its rules split traffic addressed to those
// Services between backend Services by weight.
//
// After Decode (defaults applied) every parentRef has Group "" (or
// "trellis.dev"), Kind "Service" and a Namespace; every rule has at least one
// match, every match a path with Type and Value, every header match a Type;
// every backendRef has Group, Kind "Service", Namespace and Weight.
type HTTPRoute struct{ gwapiv1.HTTPRoute }

// Upstream Gateway API (v1.6) CRD limits.
const (
	maxParentRefs     = 32
	maxRules          = 16
	maxMatches        = 64
	maxTotalMatches   = 128
	maxHeaderMatches  = 16
	maxBackendRefs    = 16
	maxWeight         = 1000000
	maxPathLen        = 1024
	maxHeaderNameLen  = 256
	maxHeaderValueLen = 4096
	maxSectionNameLen = 253
	trellisGroup      = "trellis.dev"
	notSupportedYet   = "not supported yet"
)

var (
	headerNameRE  = regexp.MustCompile("^[A-Za-z0-9!#$%&'*+\\-.^_`|~]+$")
	headerValueRE = regexp.MustCompile(`^[!-~]+([\t ]?[!-~]+)*$`)
	pathValueRE   = regexp.MustCompile(`^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$`)
)

func httpRouteKind() kindInfo {
	return kindInfo{kind: "HTTPRoute", apiVersion: HTTPRouteAPIVersion, newObject: func() object { return new(HTTPRoute) }}
}

// Ref names the route.
func (r *HTTPRoute) Ref() Ref {
	return Ref{Kind: "HTTPRoute", Namespace: namespaceOr(r.Namespace), Name: r.Name}
}

func (r *HTTPRoute) typeMeta() *metav1.TypeMeta     { return &r.TypeMeta }
func (r *HTTPRoute) objectMeta() *metav1.ObjectMeta { return &r.ObjectMeta }

// appliedStatus reports whether a user tried to apply status.
func (r *HTTPRoute) appliedStatus() bool { return len(r.Status.Parents) > 0 }

func ptrTo[T any](v T) *T { return &v }

// setDefaults applies the Gateway API defaults (path match PathPrefix "/",
// header match Exact, backend kind Service in the core group, weight 1) and
// spells out the namespaces that default to the route's own.
func (r *HTTPRoute) setDefaults() {
	if r.Namespace == "" {
		r.Namespace = DefaultNamespace
	}
	ns := gwapiv1.Namespace(r.Namespace)
	defaultParentRefs(r.Spec.ParentRefs, ns)
	for i := range r.Spec.Rules {
		rule := &r.Spec.Rules[i]
		if len(rule.Matches) == 0 {
			rule.Matches = []gwapiv1.HTTPRouteMatch{{}}
		}
		for j := range rule.Matches {
			m := &rule.Matches[j]
			if m.Path == nil {
				m.Path = &gwapiv1.HTTPPathMatch{}
			}
			if m.Path.Type == nil {
				m.Path.Type = ptrTo(gwapiv1.PathMatchPathPrefix)
			}
			if m.Path.Value == nil {
				m.Path.Value = ptrTo("/")
			}
			for k := range m.Headers {
				if m.Headers[k].Type == nil {
					m.Headers[k].Type = ptrTo(gwapiv1.HeaderMatchExact)
				}
			}
			for k := range m.QueryParams {
				if m.QueryParams[k].Type == nil {
					m.QueryParams[k].Type = ptrTo(gwapiv1.QueryParamMatchExact)
				}
			}
		}
		for j := range rule.Filters {
			defaultFilter(&rule.Filters[j], ns)
		}
		for j := range rule.BackendRefs {
			defaultBackendRef(&rule.BackendRefs[j].BackendRef, ns)
		}
	}
}

func defaultParentRefs(refs []gwapiv1.ParentReference, ns gwapiv1.Namespace) {
	for i := range refs {
		p := &refs[i]
		// Upstream, an omitted kind means Gateway, which Validate refuses;
		// only a Service parent gets its group and namespace filled in.
		if p.Kind == nil || !serviceLikeKind(string(*p.Kind)) {
			continue
		}
		if p.Group == nil {
			p.Group = ptrTo(gwapiv1.Group(""))
		}
		if p.Namespace == nil {
			p.Namespace = ptrTo(ns)
		}
	}
}

func defaultBackendRef(b *gwapiv1.BackendRef, ns gwapiv1.Namespace) {
	if b.Group == nil {
		b.Group = ptrTo(gwapiv1.Group(""))
	}
	if b.Kind == nil {
		b.Kind = ptrTo(gwapiv1.Kind("Service"))
	}
	if b.Namespace == nil {
		b.Namespace = ptrTo(ns)
	}
	if b.Weight == nil {
		b.Weight = ptrTo(int32(1))
	}
}

// Validate checks the route against the mesh (GAMMA) profile Trellis
// implements; see Object. What Trellis does not implement yet is refused,
// never ignored.
func (r *HTTPRoute) Validate() error {
	fe := &fieldErrors{ref: r.Ref()}
	validateMeta(fe, &r.ObjectMeta)
	spec := &r.Spec
	if len(spec.Hostnames) > 0 {
		fe.add("spec.hostnames", "not supported for mesh routes: a route attached to a Service applies to all traffic addressed to that Service; remove hostnames")
	}
	validateParentRefs(fe, r.Spec.ParentRefs, r.Namespace)
	validateDefaultGateways(fe, r.Spec.UseDefaultGateways)

	switch n := len(spec.Rules); {
	case n == 0:
		fe.add("spec.rules", "at least one rule is required")
	case n > maxRules:
		fe.addf("spec.rules", "at most %d rules are allowed, got %d", maxRules, n)
	}
	total := 0
	ruleNames := map[gwapiv1.SectionName]int{}
	for i := range spec.Rules {
		rule := &spec.Rules[i]
		path := fmt.Sprintf("spec.rules[%d]", i)
		total += len(rule.Matches)
		if rule.Name != nil {
			name := *rule.Name
			if p := sectionNameProblem(string(name)); p != "" {
				fe.add(path+".name", p)
			} else if j, dup := ruleNames[name]; dup {
				fe.addf(path+".name", "%q is already used by spec.rules[%d]", name, j)
			} else {
				ruleNames[name] = i
			}
		}
		validateRule(fe, path, rule)
	}
	if total > maxTotalMatches {
		fe.addf("spec.rules", "at most %d matches are allowed across all rules, got %d", maxTotalMatches, total)
	}
	return fe.err()
}

// validateDefaultGateways refuses useDefaultGateways: it attaches a route
// to Gateways, and mesh routes attach to Services only.
func validateDefaultGateways(fe *fieldErrors, scope gwapiv1.GatewayDefaultScope) {
	if scope != "" {
		fe.add("spec.useDefaultGateways", "not supported: it attaches the route to Gateways, and Trellis routes are mesh (GAMMA) routes attached to Services by parentRefs; remove it")
	}
}

func validateParentRefs(fe *fieldErrors, refs []gwapiv1.ParentReference, routeNS string) {
	switch n := len(refs); {
	case n == 0:
		fe.add("spec.parentRefs", "at least one parentRef is required: name the Service whose traffic this route handles (kind: Service, group: \"\")")
	case n > maxParentRefs:
		fe.addf("spec.parentRefs", "at most %d parentRefs are allowed, got %d", maxParentRefs, n)
	}
	type key struct {
		group, kind, ns, name string
		port                  int32
	}
	seen := map[key]int{}
	for i, p := range refs {
		path := fmt.Sprintf("spec.parentRefs[%d]", i)
		kind := "Gateway" // upstream default
		if p.Kind != nil {
			kind = string(*p.Kind)
		}
		switch {
		case p.Kind == nil:
			fe.add(path+".kind", "required: when omitted it means Gateway, and Gateway parents are not supported: Trellis routes are mesh (GAMMA) routes; use kind: Service")
		case kind == "Gateway" || kind == "ListenerSet":
			fe.add(path+".kind", "Gateway parents are not supported: Trellis routes are mesh (GAMMA) routes; use kind: Service")
		case !serviceLikeKind(kind):
			fe.addf(path+".kind", "kind %q is not supported: parentRefs must name a Service (kind: Service) or an ExternalService", kind)
		}
		group := ""
		if p.Group != nil {
			group = string(*p.Group)
		}
		if serviceLikeKind(kind) && group != "" && group != trellisGroup {
			fe.addf(path+".group", "group %q is not supported for kind %s: use \"\" (or %q)", group, kind, trellisGroup)
		}
		if prob := dnsLabelProblem(string(p.Name)); prob != "" {
			fe.add(path+".name", prob)
		}
		ns := routeNS
		if p.Namespace != nil {
			ns = string(*p.Namespace)
			if prob := dnsLabelProblem(ns); prob != "" {
				fe.add(path+".namespace", prob)
			}
		}
		if p.SectionName != nil {
			fe.add(path+".sectionName", notSupportedYet+": select the Service port with port instead")
		}
		var port int32
		if p.Port != nil {
			port = *p.Port
			if prob := portProblem(port); prob != "" {
				fe.add(path+".port", prob)
			}
		}
		k := key{group, kind, ns, string(p.Name), port}
		if j, dup := seen[k]; dup {
			fe.addf(path, "duplicates spec.parentRefs[%d]", j)
		} else {
			seen[k] = i
		}
	}
}

func validateRule(fe *fieldErrors, path string, rule *gwapiv1.HTTPRouteRule) {
	if len(rule.Matches) > maxMatches {
		fe.addf(path+".matches", "at most %d matches are allowed in a rule, got %d", maxMatches, len(rule.Matches))
	}
	for j := range rule.Matches {
		validateMatch(fe, fmt.Sprintf("%s.matches[%d]", path, j), &rule.Matches[j])
	}
	redirect := validateFilters(fe, path+".filters", rule.Filters, allPrefix(rule.Matches))
	validateTimeouts(fe, path+".timeouts", rule.Timeouts)
	if rule.Retry != nil {
		fe.add(path+".retry", "not supported: retries are a BackendPolicy's (trellis.dev/v1alpha1, spec.retry) attached to the backend Service; remove it")
	}
	if rule.SessionPersistence != nil {
		fe.add(path+".sessionPersistence", "sessionPersistence is not supported; for sticky routing use a BackendPolicy with a RING_HASH or MAGLEV balancer hashing a cookie or header; remove it")
	}
	validateBackendRefs(fe, path+".backendRefs", rule.BackendRefs, redirect)
}

// validateBackendRefs checks a rule's backends; a redirecting rule needs none.
func validateBackendRefs(fe *fieldErrors, path string, refs []gwapiv1.HTTPBackendRef, redirect bool) {
	switch n := len(refs); {
	case n == 0 && redirect:
		// The proxy answers a redirect itself.
	case n == 0:
		fe.add(path, "at least one backendRef is required (or a RequestRedirect filter)")
	case n > maxBackendRefs:
		fe.addf(path, "at most %d backendRefs are allowed in a rule, got %d", maxBackendRefs, n)
	}
	positive := false
	for j := range refs {
		b := &refs[j]
		validateBackendRef(fe, fmt.Sprintf("%s[%d]", path, j), b)
		positive = positive || b.Weight == nil || *b.Weight > 0
	}
	// Gateway API lets every weight be 0 (all requests then fail with 500);
	// that is never what anyone means, and proxies refuse such a route.
	if len(refs) > 0 && !positive {
		fe.add(path, "every weight is 0: give at least one backendRef a weight above 0")
	}
}

func validateMatch(fe *fieldErrors, path string, m *gwapiv1.HTTPRouteMatch) {
	if m.Path != nil {
		validatePathMatch(fe, path+".path", m.Path)
	}
	if len(m.Headers) > maxHeaderMatches {
		fe.addf(path+".headers", "at most %d header matches are allowed, got %d", maxHeaderMatches, len(m.Headers))
	}
	seen := map[string]int{}
	for k, h := range m.Headers {
		hp := fmt.Sprintf("%s.headers[%d]", path, k)
		name := string(h.Name)
		switch {
		case name == "":
			fe.add(hp+".name", "required")
		case len(name) > maxHeaderNameLen:
			fe.addf(hp+".name", "longer than %d characters", maxHeaderNameLen)
		case !headerNameRE.MatchString(name):
			fe.addf(hp+".name", "%q is not a valid HTTP header name", name)
		default:
			lower := strings.ToLower(name)
			if j, dup := seen[lower]; dup {
				fe.addf(hp+".name", "%q is already matched by headers[%d] (header names are case-insensitive)", name, j)
			} else {
				seen[lower] = k
			}
		}
		typ := gwapiv1.HeaderMatchExact
		if h.Type != nil {
			typ = *h.Type
		}
		switch {
		case h.Value == "":
			fe.add(hp+".value", "required")
		case len(h.Value) > maxHeaderValueLen:
			fe.addf(hp+".value", "longer than %d characters", maxHeaderValueLen)
		}
		switch typ {
		case gwapiv1.HeaderMatchExact:
			if h.Value != "" && len(h.Value) <= maxHeaderValueLen && !headerValueRE.MatchString(h.Value) {
				fe.addf(hp+".value", "%q is not a valid header value: use printable ASCII, optionally separated by single spaces or tabs", h.Value)
			}
		case gwapiv1.HeaderMatchRegularExpression:
			if _, err := regexp.Compile(h.Value); err != nil {
				fe.addf(hp+".value", "invalid regular expression (Go RE2 syntax): %v", err)
			}
		default:
			fe.addf(hp+".type", "unknown header match type %q: must be Exact or RegularExpression", typ)
		}
	}
	validateQueryParams(fe, path+".queryParams", m.QueryParams)
	if m.Method != nil && !slices.Contains(httpMethods(), *m.Method) {
		fe.addf(path+".method", "unknown method %q: must be one of GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH", *m.Method)
	}
}

func validatePathMatch(fe *fieldErrors, path string, pm *gwapiv1.HTTPPathMatch) {
	typ := gwapiv1.PathMatchPathPrefix
	if pm.Type != nil {
		typ = *pm.Type
	}
	value := "/"
	if pm.Value != nil {
		value = *pm.Value
	}
	if len(value) > maxPathLen {
		fe.addf(path+".value", "longer than %d characters", maxPathLen)
		return
	}
	switch typ {
	case gwapiv1.PathMatchExact, gwapiv1.PathMatchPathPrefix:
		if p := plainPathProblem(value); p != "" {
			fe.add(path+".value", p)
		}
	case gwapiv1.PathMatchRegularExpression:
		if value == "" {
			fe.add(path+".value", "required")
		} else if _, err := regexp.Compile(value); err != nil {
			fe.addf(path+".value", "invalid regular expression (Go RE2 syntax): %v", err)
		}
	default:
		fe.addf(path+".type", "unknown path match type %q: must be Exact, PathPrefix or RegularExpression", typ)
	}
}

// plainPathProblem applies the upstream rules for Exact and PathPrefix values.
func plainPathProblem(v string) string {
	switch {
	case !strings.HasPrefix(v, "/"):
		return fmt.Sprintf("%q must start with \"/\"", v)
	case strings.Contains(v, "//"):
		return fmt.Sprintf("%q must not contain \"//\"", v)
	case strings.Contains(v, "/./"), strings.HasSuffix(v, "/."):
		return fmt.Sprintf("%q must not contain a \".\" segment", v)
	case strings.Contains(v, "/../"), strings.HasSuffix(v, "/.."):
		return fmt.Sprintf("%q must not contain a \"..\" segment", v)
	case strings.Contains(v, "%2f"), strings.Contains(v, "%2F"):
		return fmt.Sprintf("%q must not contain an encoded slash (%%2F)", v)
	case strings.Contains(v, "#"):
		return fmt.Sprintf("%q must not contain \"#\"", v)
	case !pathValueRE.MatchString(v):
		return fmt.Sprintf("%q contains characters not allowed in a path: use RFC 3986 path characters or %%-escapes", v)
	}
	return ""
}

func validateBackendRef(fe *fieldErrors, path string, b *gwapiv1.HTTPBackendRef) {
	kind := "Service"
	if b.Kind != nil {
		kind = string(*b.Kind)
	}
	if !serviceLikeKind(kind) {
		fe.addf(path+".kind", "kind %q is not supported: backendRefs must name a Service or an ExternalService", kind)
	}
	if b.Group != nil && *b.Group != "" && *b.Group != trellisGroup {
		fe.addf(path+".group", "group %q is not supported: use \"\" (or %q)", *b.Group, trellisGroup)
	}
	if prob := dnsLabelProblem(string(b.Name)); prob != "" {
		fe.add(path+".name", prob)
	}
	if b.Namespace != nil {
		if prob := dnsLabelProblem(string(*b.Namespace)); prob != "" {
			fe.add(path+".namespace", prob)
		}
	}
	if b.Port != nil {
		if prob := portProblem(*b.Port); prob != "" {
			fe.add(path+".port", prob)
		}
	}
	if b.Weight != nil && (*b.Weight < 0 || *b.Weight > maxWeight) {
		fe.addf(path+".weight", "must be between 0 and %d, got %d", maxWeight, *b.Weight)
	}
	if len(b.Filters) > 0 {
		fe.add(path+".filters", "filters on a backendRef are "+notSupportedYet+": put them on the rule (spec.rules[].filters)")
	}
}

func sectionNameProblem(s string) string {
	switch {
	case s == "":
		return "must not be empty"
	case len(s) > maxSectionNameLen:
		return fmt.Sprintf("longer than %d characters", maxSectionNameLen)
	case !meshname.IsSubdomain(s):
		return fmt.Sprintf("%q is not valid: use lower-case letters, digits, '-' and '.'", s)
	}
	return ""
}

func httpMethods() []gwapiv1.HTTPMethod {
	return []gwapiv1.HTTPMethod{
		gwapiv1.HTTPMethodGet, gwapiv1.HTTPMethodHead, gwapiv1.HTTPMethodPost,
		gwapiv1.HTTPMethodPut, gwapiv1.HTTPMethodDelete, gwapiv1.HTTPMethodConnect,
		gwapiv1.HTTPMethodOptions, gwapiv1.HTTPMethodTrace, gwapiv1.HTTPMethodPatch,
	}
}

// serviceLikeKind reports whether kind names something that compiles to a
// mesh service a route can attach to or send to: a Service, or an
// ExternalService (which shares the Services' name space).
func serviceLikeKind(kind string) bool { return kind == "Service" || kind == externalServiceKind }
