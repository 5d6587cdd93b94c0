package config

import (
	"fmt"
	"regexp"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/meshname"
)

// Route rule filters, timeouts and query-parameter matches: what HTTPRoute
// and GRPCRoute share (a GRPCRoute's filters are converted to
// HTTPRouteFilter, whose fields are a superset). Validation refuses by name
// what the mesh does not implement (CORS, ExternalAuth, an ExtensionRef to
// anything but a FaultInjection).

const (
	maxQueryParamMatches = 16
	maxHeaderModifiers   = 16
	maxMirrorsPerRule    = 8
	faultInjectionKind   = "FaultInjection"
)

// Gateway API Duration: 1 to 4 groups of up to 5 digits and a unit.
var gwDurationRE = regexp.MustCompile(`^([0-9]{1,5}(h|m|s|ms)){1,4}$`)

// hopByHop are header names a filter may not touch: the proxy owns them.
var hopByHop = []string{"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer", "host"}

// defaultFilter fills a filter's defaults: a mirror's backendRef group,
// kind and namespace, as for backendRefs.
func defaultFilter(f *gwapiv1.HTTPRouteFilter, ns gwapiv1.Namespace) {
	if f.RequestMirror == nil {
		return
	}
	b := &f.RequestMirror.BackendRef
	if b.Group == nil {
		b.Group = ptrTo(gwapiv1.Group(""))
	}
	if b.Kind == nil {
		b.Kind = ptrTo(gwapiv1.Kind("Service"))
	}
	if b.Namespace == nil {
		b.Namespace = ptrTo(ns)
	}
}

// allPrefix reports whether every match is a PathPrefix match (after
// defaults), which ReplacePrefixMatch needs.
func allPrefix(ms []gwapiv1.HTTPRouteMatch) bool {
	for _, m := range ms {
		if m.Path != nil && m.Path.Type != nil && *m.Path.Type != gwapiv1.PathMatchPathPrefix {
			return false
		}
	}
	return true
}

// validateFilters checks a rule's filters and reports whether the rule
// redirects (then it needs no backendRefs).
func validateFilters(fe *fieldErrors, path string, fs []gwapiv1.HTTPRouteFilter, prefixOnly bool) bool {
	count := map[gwapiv1.HTTPRouteFilterType]int{}
	for i := range fs {
		f := &fs[i]
		fp := fmt.Sprintf("%s[%d]", path, i)
		count[f.Type]++
		if !filterFieldsMatch(fe, fp, f) {
			continue
		}
		switch f.Type {
		case gwapiv1.HTTPRouteFilterRequestHeaderModifier:
			validateHeaderFilter(fe, fp+".requestHeaderModifier", f.RequestHeaderModifier)
		case gwapiv1.HTTPRouteFilterResponseHeaderModifier:
			validateHeaderFilter(fe, fp+".responseHeaderModifier", f.ResponseHeaderModifier)
		case gwapiv1.HTTPRouteFilterURLRewrite:
			validateURLRewrite(fe, fp+".urlRewrite", f.URLRewrite, prefixOnly)
		case gwapiv1.HTTPRouteFilterRequestRedirect:
			validateRedirect(fe, fp+".requestRedirect", f.RequestRedirect, prefixOnly)
		case gwapiv1.HTTPRouteFilterRequestMirror:
			validateMirror(fe, fp+".requestMirror", f.RequestMirror)
		case gwapiv1.HTTPRouteFilterExtensionRef:
			validateExtensionRef(fe, fp+".extensionRef", f.ExtensionRef)
		case gwapiv1.HTTPRouteFilterCORS:
			fe.add(fp+".type", "CORS filters are not supported by the mesh: CORS is a concern of the edge (a Gateway), not of service-to-service calls; remove it")
		case gwapiv1.HTTPRouteFilterExternalAuth:
			fe.add(fp+".type", "ExternalAuth filters are not supported: use an AuthorizationPolicy on the destination Service; remove it")
		default:
			fe.addf(fp+".type", "unknown filter type %q: must be RequestHeaderModifier, ResponseHeaderModifier, URLRewrite, RequestRedirect, RequestMirror or ExtensionRef (to a FaultInjection)", f.Type)
		}
	}
	for _, t := range []gwapiv1.HTTPRouteFilterType{gwapiv1.HTTPRouteFilterRequestHeaderModifier, gwapiv1.HTTPRouteFilterResponseHeaderModifier,
		gwapiv1.HTTPRouteFilterURLRewrite, gwapiv1.HTTPRouteFilterRequestRedirect, gwapiv1.HTTPRouteFilterExtensionRef} {
		if count[t] > 1 {
			fe.addf(path, "%s appears %d times: at most once per rule", t, count[t])
		}
	}
	if count[gwapiv1.HTTPRouteFilterRequestMirror] > maxMirrorsPerRule {
		fe.addf(path, "at most %d RequestMirror filters are allowed per rule", maxMirrorsPerRule)
	}
	redirect := count[gwapiv1.HTTPRouteFilterRequestRedirect] > 0
	if redirect && count[gwapiv1.HTTPRouteFilterURLRewrite] > 0 {
		fe.add(path, "RequestRedirect and URLRewrite cannot be in the same rule (Gateway API)")
	}
	return redirect
}

// filterFieldsMatch checks that exactly the field of f's type is set.
func filterFieldsMatch(fe *fieldErrors, fp string, f *gwapiv1.HTTPRouteFilter) bool {
	set := map[gwapiv1.HTTPRouteFilterType]bool{
		gwapiv1.HTTPRouteFilterRequestHeaderModifier:  f.RequestHeaderModifier != nil,
		gwapiv1.HTTPRouteFilterResponseHeaderModifier: f.ResponseHeaderModifier != nil,
		gwapiv1.HTTPRouteFilterURLRewrite:             f.URLRewrite != nil,
		gwapiv1.HTTPRouteFilterRequestRedirect:        f.RequestRedirect != nil,
		gwapiv1.HTTPRouteFilterRequestMirror:          f.RequestMirror != nil,
		gwapiv1.HTTPRouteFilterExtensionRef:           f.ExtensionRef != nil,
		gwapiv1.HTTPRouteFilterCORS:                   f.CORS != nil,
		gwapiv1.HTTPRouteFilterExternalAuth:           f.ExternalAuth != nil,
	}
	ok := true
	for t, isSet := range set {
		if isSet && t != f.Type {
			fe.addf(fp, "%s must be unset when type is %q", lowerFirst(string(t)), f.Type)
			ok = false
		}
	}
	if has, known := set[f.Type]; known && !has && f.Type != gwapiv1.HTTPRouteFilterCORS && f.Type != gwapiv1.HTTPRouteFilterExternalAuth {
		fe.addf(fp+"."+lowerFirst(string(f.Type)), "required when type is %q", f.Type)
		ok = false
	}
	return ok
}

func lowerFirst(s string) string {
	if s == "URLRewrite" {
		return "urlRewrite"
	}
	return strings.ToLower(s[:1]) + s[1:]
}

func validateHeaderFilter(fe *fieldErrors, path string, h *gwapiv1.HTTPHeaderFilter) {
	seen := map[string]string{}
	name := func(field, n string) {
		lower := strings.ToLower(n)
		switch {
		case n == "":
			fe.add(field, "required")
		case len(n) > maxHeaderNameLen || !headerNameRE.MatchString(n):
			fe.addf(field, "%q is not a valid HTTP header name", n)
		case containsStr(hopByHop, lower):
			fe.addf(field, "%s is a hop-by-hop header the proxy owns; it cannot be modified", n)
		case strings.HasPrefix(lower, "x-trellis-"):
			fe.addf(field, "%s is a header the mesh uses internally; it cannot be modified", n)
		default:
			if prev, dup := seen[lower]; dup {
				fe.addf(field, "%q is already modified by %s (a header name appears once per filter, case-insensitively)", n, prev)
			}
			seen[lower] = field
		}
	}
	pair := func(field string, vs []gwapiv1.HTTPHeader) {
		if len(vs) > maxHeaderModifiers {
			fe.addf(field, "at most %d headers are allowed, got %d", maxHeaderModifiers, len(vs))
		}
		for i, v := range vs {
			hp := fmt.Sprintf("%s[%d]", field, i)
			name(hp+".name", string(v.Name))
			if len(v.Value) > maxHeaderValueLen || strings.ContainsAny(v.Value, "\r\n\x00") {
				fe.addf(hp+".value", "not a valid header value (at most %d characters, no CR, LF or NUL)", maxHeaderValueLen)
			}
		}
	}
	pair(path+".set", h.Set)
	pair(path+".add", h.Add)
	if len(h.Remove) > maxHeaderModifiers {
		fe.addf(path+".remove", "at most %d headers are allowed, got %d", maxHeaderModifiers, len(h.Remove))
	}
	for i, r := range h.Remove {
		name(fmt.Sprintf("%s.remove[%d]", path, i), r)
	}
	if len(h.Set)+len(h.Add)+len(h.Remove) == 0 {
		fe.add(path, "empty: give set, add or remove")
	}
}

func containsStr(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func validateHostname(fe *fieldErrors, path string, h *gwapiv1.PreciseHostname) {
	if h == nil {
		return
	}
	if s := string(*h); !meshname.IsSubdomain(s) || strings.ToLower(s) != s {
		fe.addf(path, "%q is not a valid host name: lower-case RFC 1123 subdomain, no port, no wildcard", s)
	}
}

func validatePathModifier(fe *fieldErrors, path string, m *gwapiv1.HTTPPathModifier, prefixOnly bool) {
	if m == nil {
		return
	}
	check := func(field string, v *string) {
		if v == nil {
			fe.addf(field, "required when type is %q", m.Type)
			return
		}
		if len(*v) > maxPathLen {
			fe.addf(field, "longer than %d characters", maxPathLen)
		} else if p := plainPathProblem(*v); p != "" {
			fe.add(field, p)
		}
	}
	switch m.Type {
	case gwapiv1.FullPathHTTPPathModifier:
		check(path+".replaceFullPath", m.ReplaceFullPath)
		if m.ReplacePrefixMatch != nil {
			fe.add(path+".replacePrefixMatch", "must be unset when type is ReplaceFullPath")
		}
	case gwapiv1.PrefixMatchHTTPPathModifier:
		check(path+".replacePrefixMatch", m.ReplacePrefixMatch)
		if m.ReplaceFullPath != nil {
			fe.add(path+".replaceFullPath", "must be unset when type is ReplacePrefixMatch")
		}
		if !prefixOnly {
			fe.add(path+".type", "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match")
		}
	default:
		fe.addf(path+".type", "unknown path modifier type %q: must be ReplaceFullPath or ReplacePrefixMatch", m.Type)
	}
}

func validateURLRewrite(fe *fieldErrors, path string, u *gwapiv1.HTTPURLRewriteFilter, prefixOnly bool) {
	validateHostname(fe, path+".hostname", u.Hostname)
	validatePathModifier(fe, path+".path", u.Path, prefixOnly)
}

func validateRedirect(fe *fieldErrors, path string, r *gwapiv1.HTTPRequestRedirectFilter, prefixOnly bool) {
	if r.Scheme != nil && *r.Scheme != "http" && *r.Scheme != "https" {
		fe.addf(path+".scheme", "%q: must be http or https", *r.Scheme)
	}
	validateHostname(fe, path+".hostname", r.Hostname)
	validatePathModifier(fe, path+".path", r.Path, prefixOnly)
	if r.Port != nil {
		if p := portProblem(*r.Port); p != "" {
			fe.add(path+".port", p)
		}
	}
	if r.StatusCode != nil {
		switch *r.StatusCode {
		case 301, 302, 303, 307, 308:
		default:
			fe.addf(path+".statusCode", "%d: must be 301, 302, 303, 307 or 308", *r.StatusCode)
		}
	}
}

func validateMirror(fe *fieldErrors, path string, m *gwapiv1.HTTPRequestMirrorFilter) {
	validateBackendRef(fe, path+".backendRef", &gwapiv1.HTTPBackendRef{BackendRef: gwapiv1.BackendRef{BackendObjectReference: m.BackendRef}})
	if m.Percent != nil && m.Fraction != nil {
		fe.add(path, "give percent or fraction, not both")
	}
	if m.Percent != nil && (*m.Percent < 0 || *m.Percent > 100) {
		fe.addf(path+".percent", "must be between 0 and 100, got %d", *m.Percent)
	}
	if f := m.Fraction; f != nil {
		den := int32(100)
		if f.Denominator != nil {
			den = *f.Denominator
		}
		switch {
		case den < 1:
			fe.addf(path+".fraction.denominator", "must be at least 1, got %d", den)
		case f.Numerator < 0 || f.Numerator > den:
			fe.addf(path+".fraction.numerator", "must be between 0 and the denominator (%d), got %d", den, f.Numerator)
		}
	}
}

func validateExtensionRef(fe *fieldErrors, path string, r *gwapiv1.LocalObjectReference) {
	if r.Group != trellisGroup || r.Kind != faultInjectionKind {
		fe.addf(path, "ExtensionRef to %s (group %q) is not supported: only kind FaultInjection, group %s", r.Kind, r.Group, trellisGroup)
		return
	}
	if p := dnsLabelProblem(string(r.Name)); p != "" {
		fe.add(path+".name", p)
	}
}

// parseGWDuration parses a Gateway API Duration ("10s", "1m30s", "500ms").
func parseGWDuration(s string) (time.Duration, bool) {
	if !gwDurationRE.MatchString(s) {
		return 0, false
	}
	d, err := time.ParseDuration(s)
	return d, err == nil
}

func validateTimeouts(fe *fieldErrors, path string, t *gwapiv1.HTTPRouteTimeouts) {
	if t == nil {
		return
	}
	get := func(field string, v *gwapiv1.Duration) time.Duration {
		if v == nil {
			return 0
		}
		d, ok := parseGWDuration(string(*v))
		if !ok {
			fe.addf(path+"."+field, "%q is not a Gateway API duration (1 to 4 of <number><h|m|s|ms>, e.g. 10s, 1m30s, 500ms)", *v)
		}
		return d
	}
	req, be := get("request", t.Request), get("backendRequest", t.BackendRequest)
	if req > 0 && be > req {
		fe.addf(path+".backendRequest", "%s is longer than request %s: one attempt may not outlast the whole request", *t.BackendRequest, *t.Request)
	}
}

func validateQueryParams(fe *fieldErrors, path string, qs []gwapiv1.HTTPQueryParamMatch) {
	if len(qs) > maxQueryParamMatches {
		fe.addf(path, "at most %d query parameter matches are allowed, got %d", maxQueryParamMatches, len(qs))
	}
	seen := map[string]int{}
	for i, q := range qs {
		qp := fmt.Sprintf("%s[%d]", path, i)
		name := string(q.Name)
		switch {
		case name == "":
			fe.add(qp+".name", "required")
		case len(name) > maxHeaderNameLen || !headerNameRE.MatchString(name):
			fe.addf(qp+".name", "%q is not a valid query parameter name", name)
		default:
			// Names are compared exactly (case-sensitive), as the Gateway API says.
			if j, dup := seen[name]; dup {
				fe.addf(qp+".name", "%q is already matched by queryParams[%d]", name, j)
			} else {
				seen[name] = i
			}
		}
		switch {
		case q.Value == "":
			fe.add(qp+".value", "required")
		case len(q.Value) > 1024:
			fe.add(qp+".value", "longer than 1024 characters")
		}
		typ := gwapiv1.QueryParamMatchExact
		if q.Type != nil {
			typ = *q.Type
		}
		switch typ {
		case gwapiv1.QueryParamMatchExact:
		case gwapiv1.QueryParamMatchRegularExpression:
			if _, err := regexp.Compile(q.Value); err != nil {
				fe.addf(qp+".value", "invalid regular expression (Go RE2 syntax): %v", err)
			}
		default:
			fe.addf(qp+".type", "unknown query parameter match type %q: must be Exact or RegularExpression", typ)
		}
	}
}

// Compiling (inputs are defaulted and valid).

// compileFilters turns a rule's filters into snapshot filters, in order.
// An ExtensionRef names a FaultInjection in the route's namespace; when
// lookup cannot find it the rule answers 500, as the Gateway API requires
// of an unresolvable filter (never skipped).
func compileFilters(fs []gwapiv1.HTTPRouteFilter, ns string, lookup func(Ref) Object) []*meshv1.RouteFilter {
	var out []*meshv1.RouteFilter
	for i := range fs {
		f := &fs[i]
		var rf *meshv1.RouteFilter
		switch f.Type {
		case gwapiv1.HTTPRouteFilterRequestHeaderModifier:
			rf = &meshv1.RouteFilter{Filter: &meshv1.RouteFilter_RequestHeaderModifier{RequestHeaderModifier: headerModifier(f.RequestHeaderModifier)}}
		case gwapiv1.HTTPRouteFilterResponseHeaderModifier:
			rf = &meshv1.RouteFilter{Filter: &meshv1.RouteFilter_ResponseHeaderModifier{ResponseHeaderModifier: headerModifier(f.ResponseHeaderModifier)}}
		case gwapiv1.HTTPRouteFilterURLRewrite:
			u := &meshv1.URLRewrite{Path: pathModifier(f.URLRewrite.Path)}
			if f.URLRewrite.Hostname != nil {
				u.Hostname = string(*f.URLRewrite.Hostname)
			}
			rf = &meshv1.RouteFilter{Filter: &meshv1.RouteFilter_UrlRewrite{UrlRewrite: u}}
		case gwapiv1.HTTPRouteFilterRequestRedirect:
			rf = &meshv1.RouteFilter{Filter: &meshv1.RouteFilter_RequestRedirect{RequestRedirect: redirect(f.RequestRedirect)}}
		case gwapiv1.HTTPRouteFilterRequestMirror:
			rf = &meshv1.RouteFilter{Filter: &meshv1.RouteFilter_RequestMirror{RequestMirror: mirror(f.RequestMirror)}}
		case gwapiv1.HTTPRouteFilterExtensionRef:
			rf = &meshv1.RouteFilter{Filter: &meshv1.RouteFilter_Fault{Fault: faultOf(f.ExtensionRef, ns, lookup)}}
		default:
			continue // Validate refuses the rest
		}
		out = append(out, rf)
	}
	return out
}

func headerModifier(h *gwapiv1.HTTPHeaderFilter) *meshv1.HeaderModifier {
	m := &meshv1.HeaderModifier{Remove: append([]string(nil), h.Remove...)}
	for _, v := range h.Set {
		m.Set = append(m.Set, &meshv1.HeaderValue{Name: string(v.Name), Value: v.Value})
	}
	for _, v := range h.Add {
		m.Add = append(m.Add, &meshv1.HeaderValue{Name: string(v.Name), Value: v.Value})
	}
	return m
}

func pathModifier(p *gwapiv1.HTTPPathModifier) *meshv1.PathModifier {
	switch {
	case p == nil:
		return nil
	case p.Type == gwapiv1.PrefixMatchHTTPPathModifier:
		return &meshv1.PathModifier{Type: meshv1.PathModifier_REPLACE_PREFIX_MATCH, Value: *p.ReplacePrefixMatch}
	}
	return &meshv1.PathModifier{Type: meshv1.PathModifier_REPLACE_FULL_PATH, Value: *p.ReplaceFullPath}
}

func redirect(r *gwapiv1.HTTPRequestRedirectFilter) *meshv1.RequestRedirect {
	out := &meshv1.RequestRedirect{Path: pathModifier(r.Path), StatusCode: 302}
	if r.Scheme != nil {
		out.Scheme = *r.Scheme
	}
	if r.Hostname != nil {
		out.Hostname = string(*r.Hostname)
	}
	if r.Port != nil {
		out.Port = uint32(*r.Port)
	}
	if r.StatusCode != nil {
		out.StatusCode = uint32(*r.StatusCode)
	}
	return out
}

func mirror(m *gwapiv1.HTTPRequestMirrorFilter) *meshv1.RequestMirror {
	b := &meshv1.Backend{Service: string(m.BackendRef.Name), Namespace: string(*m.BackendRef.Namespace), Weight: 1}
	if m.BackendRef.Port != nil {
		b.Port = uint32(*m.BackendRef.Port)
	}
	out := &meshv1.RequestMirror{Backend: b}
	switch {
	case m.Percent != nil:
		out.Numerator, out.Denominator = uint32(*m.Percent), 100
	case m.Fraction != nil:
		out.Numerator, out.Denominator = uint32(m.Fraction.Numerator), 100
		if m.Fraction.Denominator != nil {
			out.Denominator = uint32(*m.Fraction.Denominator)
		}
	}
	return out
}

// unresolvedFault answers every request with 500: the rule names a
// FaultInjection that does not exist (yet).
func unresolvedFault() *meshv1.Fault {
	return &meshv1.Fault{Abort: &meshv1.FaultAbort{HttpStatus: 500, Percent: 100}}
}

func faultOf(ref *gwapiv1.LocalObjectReference, ns string, lookup func(Ref) Object) *meshv1.Fault {
	if lookup == nil {
		return unresolvedFault()
	}
	fi, ok := lookup(Ref{Kind: faultInjectionKind, Namespace: ns, Name: string(ref.Name)}).(*FaultInjection)
	if !ok {
		return unresolvedFault()
	}
	return fi.compile()
}

func durationOrNil(d time.Duration) *durationpb.Duration {
	if d <= 0 {
		return nil
	}
	return durationpb.New(d)
}

// compileTimeouts emits a rule's timeouts; "0s" (or unset) is none.
func compileTimeouts(t *gwapiv1.HTTPRouteTimeouts) *meshv1.RouteTimeouts {
	if t == nil {
		return nil
	}
	out := &meshv1.RouteTimeouts{}
	if t.Request != nil {
		d, _ := parseGWDuration(string(*t.Request))
		out.Request = durationOrNil(d)
	}
	if t.BackendRequest != nil {
		d, _ := parseGWDuration(string(*t.BackendRequest))
		out.BackendRequest = durationOrNil(d)
	}
	if out.Request == nil && out.BackendRequest == nil {
		return nil
	}
	return out
}

func queryMatches(qs []gwapiv1.HTTPQueryParamMatch) []*meshv1.QueryParamMatch {
	var out []*meshv1.QueryParamMatch
	for _, q := range qs {
		t := meshv1.QueryParamMatch_EXACT
		if *q.Type == gwapiv1.QueryParamMatchRegularExpression {
			t = meshv1.QueryParamMatch_REGEX
		}
		out = append(out, &meshv1.QueryParamMatch{Type: t, Name: string(q.Name), Value: q.Value})
	}
	return out
}
