// Package authz decides whether a request may reach a workload, from the
// AuthorizationPolicies that apply to it. The control plane compiles the
// policies into meshv1.Authorization; Compile turns that into an Engine once
// per snapshot, and Decide evaluates one request's facts against it without
// allocating. The proxy's filter and `trellis auth check` both call Decide,
// so what the CLI explains is what the proxy does.
//
// Order: DENY policies first (any matching rule denies); then, if any ALLOW
// policy applies, the request must match one of their rules; with no ALLOW
// policy the mesh-wide default decides.
package authz

import (
	"errors"
	"fmt"
	"net/http"
	"path"
	"slices"
	"strings"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// ErrInvalid wraps every reason Compile refuses an Authorization.
var ErrInvalid = errors.New("authz: invalid authorization")

// Facts are what a decision looks at: one request, or one TCP connection.
type Facts struct {
	// PeerID is the caller's verified SPIFFE ID; "" is unauthenticated
	// (plaintext), which no source condition matches.
	PeerID string
	// Port is the destination service port.
	Port uint32
	// Method, Path and Header are the HTTP request's; Path is decoded.
	Method, Path string
	Header       http.Header
	// GRPC says the port is declared grpc.
	GRPC bool
	// TCP marks an opaque TCP connection: there is no method, path or
	// header to match.
	TCP bool
}

// Reason says how a decision was reached.
type Reason uint8

// The reasons of a Decision.
const (
	// ReasonDefault: no ALLOW policy applies and no DENY rule matched; the
	// mesh-wide default decided.
	ReasonDefault Reason = iota
	// ReasonDenied: a rule of a DENY policy matched.
	ReasonDenied
	// ReasonAllowed: a rule of an ALLOW policy matched.
	ReasonAllowed
	// ReasonNoAllowMatch: ALLOW policies apply and none of their rules
	// matched.
	ReasonNoAllowMatch
)

var reasonNames = [...]string{"default", "denied by policy", "allowed by policy", "no ALLOW policy matched"}

func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return fmt.Sprintf("Reason(%d)", r)
}

// Decision is the result of Decide.
type Decision struct {
	Allow  bool
	Reason Reason
	// Policy is the index in Engine.Policies of the policy that decided,
	// or -1 (the default, or no ALLOW policy matched); Rule is the index of
	// its rule that matched, or -1.
	Policy, Rule int
}

// Engine is a compiled Authorization, immutable and safe for concurrent use.
type Engine struct {
	policies []policy
	// deny and allow index policies in evaluation order.
	deny, allow   []int
	defaultAllow  bool
	names, action []string
}

type policy struct {
	name  string
	deny  bool
	rules []rule
	// byID, byNS and byPrefix index the rules whose every source is an
	// exact identity, a namespace or an identity prefix, by those; open are
	// the other rules. All hold rule indexes in ascending order, so the
	// first matching rule is the one a scan of every rule finds, and a
	// policy of many per-caller rules costs a few map lookups and the few
	// rules of that caller.
	byID, byNS, byPrefix map[string][]int
	// prefixLens are the distinct lengths of byPrefix's keys: a caller's
	// candidate prefixes are its ID cut at each.
	prefixLens []int
	open       []int
}

// maxPrefixLens bounds the prefix lookups of one decision; a policy whose
// identity prefixes come in more lengths leaves its prefix rules open.
const maxPrefixLens = 8

type rule struct {
	from    []source
	ports   []uint32
	methods []string
	paths   []pathMatch
	headers []headerMatch
	grpc    []string // "/svc/method", or "/svc/" for any method
	// http says the rule has a condition only an HTTP request can meet.
	http bool
}

type sourceKind uint8

const (
	srcExact sourceKind = iota
	srcPrefix
	srcNamespace
	srcAuthenticated
)

type source struct {
	kind sourceKind
	// value is the ID, the prefix, or the namespace.
	value string
}

type pathMatch struct {
	prefix bool
	value  string
}

type headerMatch struct {
	name    string
	exact   string
	present bool
}

// allowAll is a nil Authorization's engine: no policy
// and default allow.
func allowAll() *Engine { return &Engine{defaultAllow: true} }

// Compile builds the engine of az; nil allows everything (a control plane
// that sends no authorization). Anything malformed is refused whole.
func Compile(az *meshv1.Authorization) (*Engine, error) {
	if az == nil {
		return allowAll(), nil
	}
	e := &Engine{}
	switch az.GetDefaultAction() {
	case meshv1.AuthzAction_AUTHZ_ALLOW:
		e.defaultAllow = true
	case meshv1.AuthzAction_AUTHZ_DENY:
	default:
		return nil, fmt.Errorf("%w: default_action %v", ErrInvalid, az.GetDefaultAction())
	}
	for i, p := range az.GetPolicies() {
		cp, err := compilePolicy(p)
		if err != nil {
			return nil, fmt.Errorf("%w: policies[%d] %q: %v", ErrInvalid, i, p.GetName(), err)
		}
		e.policies = append(e.policies, cp)
		e.names = append(e.names, cp.name)
		if cp.deny {
			e.deny = append(e.deny, i)
			e.action = append(e.action, "DENY")
		} else {
			e.allow = append(e.allow, i)
			e.action = append(e.action, "ALLOW")
		}
	}
	return e, nil
}

func compilePolicy(p *meshv1.AuthzPolicy) (policy, error) {
	out := policy{name: p.GetName()}
	if out.name == "" {
		return out, errors.New("name: empty")
	}
	switch p.GetAction() {
	case meshv1.AuthzAction_AUTHZ_ALLOW:
	case meshv1.AuthzAction_AUTHZ_DENY:
		out.deny = true
	default:
		return out, fmt.Errorf("action %v", p.GetAction())
	}
	if len(p.GetRules()) == 0 {
		return out, errors.New("rules: empty")
	}
	for i, r := range p.GetRules() {
		cr, err := compileRule(r)
		if err != nil {
			return out, fmt.Errorf("rules[%d]: %v", i, err)
		}
		out.rules = append(out.rules, cr)
	}
	out.index()
	return out, nil
}

func (p *policy) index() {
	p.byID, p.byNS, p.byPrefix = map[string][]int{}, map[string][]int{}, map[string][]int{}
	for i := range p.rules {
		for _, src := range p.rules[i].from {
			if src.kind == srcPrefix && !slices.Contains(p.prefixLens, len(src.value)) {
				p.prefixLens = append(p.prefixLens, len(src.value))
			}
		}
	}
	prefixes := len(p.prefixLens) <= maxPrefixLens
	if !prefixes {
		p.prefixLens = nil
	}
	for i := range p.rules {
		r := &p.rules[i]
		if !r.keyed(prefixes) {
			p.open = append(p.open, i)
			continue
		}
		for _, src := range r.from {
			m := p.byID
			switch src.kind {
			case srcNamespace:
				m = p.byNS
			case srcPrefix:
				m = p.byPrefix
			}
			if l := m[src.value]; len(l) == 0 || l[len(l)-1] != i {
				m[src.value] = append(l, i)
			}
		}
	}
}

// keyed reports whether every source of r is an exact identity, a
// namespace or (when prefixes are indexed) an identity prefix, so r can
// match only callers its index keys name.
func (r *rule) keyed(prefixes bool) bool {
	for _, s := range r.from {
		switch {
		case s.kind == srcExact, s.kind == srcNamespace:
		case s.kind == srcPrefix && prefixes:
		default:
			return false
		}
	}
	return len(r.from) > 0
}

func compileRule(r *meshv1.AuthzRule) (rule, error) {
	var out rule
	for i, s := range r.GetFrom() {
		cs, err := compileSource(s)
		if err != nil {
			return out, fmt.Errorf("from[%d]: %v", i, err)
		}
		out.from = append(out.from, cs)
	}
	for i, p := range r.GetPorts() {
		if p == 0 || p > 65535 {
			return out, fmt.Errorf("ports[%d]: %d out of range", i, p)
		}
	}
	out.ports = r.GetPorts()
	for i, m := range r.GetMethods() {
		if m == "" || strings.ToUpper(m) != m {
			return out, fmt.Errorf("methods[%d]: %q: want an upper case method", i, m)
		}
	}
	out.methods = r.GetMethods()
	for i, p := range r.GetPaths() {
		cp, err := compilePath(p)
		if err != nil {
			return out, fmt.Errorf("paths[%d]: %v", i, err)
		}
		out.paths = append(out.paths, cp)
	}
	for i, h := range r.GetHeaders() {
		name := h.GetName()
		if name == "" || http.CanonicalHeaderKey(name) != name {
			return out, fmt.Errorf("headers[%d]: name %q: want a canonical header name", i, name)
		}
		hm := headerMatch{name: name}
		switch m := h.GetMatch().(type) {
		case *meshv1.AuthzHeader_Exact:
			hm.exact = m.Exact
		case *meshv1.AuthzHeader_Present:
			if !m.Present {
				return out, fmt.Errorf("headers[%d]: present: false matches nothing", i)
			}
			hm.present = true
		default:
			return out, fmt.Errorf("headers[%d]: no match", i)
		}
		out.headers = append(out.headers, hm)
	}
	for i, g := range r.GetGrpc() {
		svc, m := g.GetService(), g.GetMethod()
		if svc == "" || strings.Contains(svc, "/") || strings.Contains(m, "/") {
			return out, fmt.Errorf("grpc[%d]: service %q method %q", i, svc, m)
		}
		out.grpc = append(out.grpc, "/"+svc+"/"+m)
	}
	out.http = len(out.methods)+len(out.paths)+len(out.headers)+len(out.grpc) > 0
	return out, nil
}

func compileSource(s *meshv1.AuthzSource) (source, error) {
	switch m := s.GetMatch().(type) {
	case *meshv1.AuthzSource_Identity:
		if !strings.HasPrefix(m.Identity, spiffePrefix) {
			return source{}, fmt.Errorf("identity %q: want spiffe://", m.Identity)
		}
		return source{kind: srcExact, value: m.Identity}, nil
	case *meshv1.AuthzSource_IdentityPrefix:
		if !strings.HasPrefix(m.IdentityPrefix, spiffePrefix) {
			return source{}, fmt.Errorf("identityPrefix %q: want spiffe://", m.IdentityPrefix)
		}
		return source{kind: srcPrefix, value: m.IdentityPrefix}, nil
	case *meshv1.AuthzSource_Namespace:
		if m.Namespace == "" || strings.Contains(m.Namespace, "/") {
			return source{}, fmt.Errorf("namespace %q", m.Namespace)
		}
		return source{kind: srcNamespace, value: m.Namespace}, nil
	case *meshv1.AuthzSource_Authenticated:
		if !m.Authenticated {
			return source{}, errors.New("authenticated: false matches nothing")
		}
		return source{kind: srcAuthenticated}, nil
	}
	return source{}, errors.New("no match")
}

const spiffePrefix = "spiffe://"

// Policies returns the names ("namespace/name") of the engine's policies,
// in the order Decision.Policy indexes. The caller must not modify it.
func (e *Engine) Policies() []string { return e.names }

// Action returns "ALLOW" or "DENY" for policy i.
func (e *Engine) Action(i int) string { return e.action[i] }

// DefaultAllow reports the mesh-wide default.
func (e *Engine) DefaultAllow() bool { return e.defaultAllow }

// HasPolicies reports whether any policy applies.
func (e *Engine) HasPolicies() bool { return len(e.policies) > 0 }

// Decide evaluates f: DENY policies, then ALLOW policies, then the default.
// It does not allocate.
func (e *Engine) Decide(f *Facts) Decision {
	q := query{Facts: f, ns: namespaceOf(f.PeerID)}
	for _, i := range e.deny {
		if r := e.policies[i].match(&q); r >= 0 {
			return Decision{Allow: false, Reason: ReasonDenied, Policy: i, Rule: r}
		}
	}
	if len(e.allow) > 0 {
		for _, i := range e.allow {
			if r := e.policies[i].match(&q); r >= 0 {
				return Decision{Allow: true, Reason: ReasonAllowed, Policy: i, Rule: r}
			}
		}
		return Decision{Allow: false, Reason: ReasonNoAllowMatch, Policy: -1, Rule: -1}
	}
	return Decision{Allow: e.defaultAllow, Reason: ReasonDefault, Policy: -1, Rule: -1}
}

// query is the facts of one decision plus what Decide derives from them
// once: the caller's namespace.
type query struct {
	*Facts
	ns string // "" without a workload identity
}

// match returns the index of the first rule of p that matches q, or -1:
// the rules keyed by q's identity, namespace and identity prefixes and the
// open ones, merged in rule order (a rule keyed several ways is tried once).
func (p *policy) match(q *query) int {
	var lists [3 + maxPrefixLens][]int
	n := 0
	if id := q.PeerID; id != "" {
		lists[n], n = p.byID[id], n+1
		for _, l := range p.prefixLens {
			if l <= len(id) {
				lists[n], n = p.byPrefix[id[:l]], n+1
			}
		}
	}
	if q.ns != "" {
		lists[n], n = p.byNS[q.ns], n+1
	}
	lists[n], n = p.open, n+1
	for last := -1; ; {
		i := -1
		for j := range n {
			if l := lists[j]; len(l) > 0 && (i < 0 || l[0] < i) {
				i = l[0]
			}
		}
		if i < 0 {
			return -1
		}
		for j := range n {
			if l := lists[j]; len(l) > 0 && l[0] == i {
				lists[j] = l[1:]
			}
		}
		if i != last && p.rules[i].mismatch(q, p.deny) == condNone {
			return i
		}
		last = i
	}
}

// Cond names the condition of a rule that did not match.
type Cond uint8

// The conditions of a rule, in the order they are checked.
const (
	condNone Cond = iota
	CondFrom
	CondPorts
	CondTCP // an ALLOW rule with HTTP conditions never matches a TCP connection
	CondMethods
	CondPaths
	CondHeaders
	CondGRPC
)

var condNames = [...]string{"", "from", "ports", "tcp", "methods", "paths", "headers", "grpc"}

func (c Cond) String() string {
	if int(c) < len(condNames) {
		return condNames[c]
	}
	return fmt.Sprintf("Cond(%d)", c)
}

// mismatch returns the first condition of r that f fails, or condNone.
// Decide and Explain both use it. On a TCP connection the HTTP conditions
// cannot be evaluated: an ALLOW rule that has them does not match (fail
// closed), and a DENY rule that has them is decided by its other
// conditions (fail closed again, as Istio does).
func (r *rule) mismatch(q *query, deny bool) Cond {
	f := q.Facts
	if len(r.from) > 0 && !r.fromOK(q) {
		return CondFrom
	}
	if len(r.ports) > 0 && !containsPort(r.ports, f.Port) {
		return CondPorts
	}
	if f.TCP {
		if r.http && !deny {
			return CondTCP
		}
		return condNone
	}
	if len(r.methods) > 0 && !containsString(r.methods, f.Method) {
		return CondMethods
	}
	if len(r.paths) > 0 && !r.pathOK(f.Path) {
		return CondPaths
	}
	for i := range r.headers {
		if !r.headers[i].ok(f.Header) {
			return CondHeaders
		}
	}
	if len(r.grpc) > 0 && !r.grpcOK(f) {
		return CondGRPC
	}
	return condNone
}

func (r *rule) fromOK(q *query) bool {
	if q.PeerID == "" {
		return false // every source needs a verified identity
	}
	for i := range r.from {
		if r.from[i].ok(q) {
			return true
		}
	}
	return false
}

func (s *source) ok(q *query) bool {
	switch s.kind {
	case srcExact:
		return q.PeerID == s.value
	case srcPrefix:
		return strings.HasPrefix(q.PeerID, s.value)
	case srcNamespace:
		return q.ns != "" && q.ns == s.value
	}
	return true // srcAuthenticated: the ID is non-empty here
}

// namespaceOf returns <ns> of spiffe://<td>/ns/<ns>/sa/<sa> (any trust
// domain the chain verified against), or "" for an ID of another shape.
func namespaceOf(id string) string {
	rest, ok := strings.CutPrefix(id, spiffePrefix)
	if !ok {
		return ""
	}
	slash := strings.IndexByte(rest, '/')
	if slash < 0 {
		return ""
	}
	p, ok := strings.CutPrefix(rest[slash:], "/ns/")
	if !ok {
		return ""
	}
	end := strings.IndexByte(p, '/')
	if end <= 0 {
		return ""
	}
	sa, ok := strings.CutPrefix(p[end:], "/sa/")
	if !ok || sa == "" || strings.IndexByte(sa, '/') >= 0 {
		return ""
	}
	return p[:end]
}

func (r *rule) pathOK(p string) bool {
	p = cleanPath(p)
	for i := range r.paths {
		if r.paths[i].ok(p) {
			return true
		}
	}
	return false
}

// cleanPath returns p with dot segments and repeated slashes resolved, so
// "/public/../admin" is matched as "/admin", as the app may read it. It
// allocates only for a path that is not clean already.
func cleanPath(p string) string {
	if p == "" {
		return "/"
	}
	if p[0] != '/' {
		p = "/" + p // "*" (OPTIONS *): never a prefix of a real path
	}
	if isClean(p) {
		return p
	}
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c
}

func isClean(p string) bool {
	if p[0] != '/' {
		return false
	}
	for i := 1; i < len(p); i++ {
		if p[i] != '/' && p[i] != '.' {
			continue
		}
		if p[i] == '/' && p[i-1] == '/' {
			return false
		}
		if p[i] == '.' && p[i-1] == '/' {
			// "/." or "/.." as a whole segment.
			j := i + 1
			if j < len(p) && p[j] == '.' {
				j++
			}
			if j == len(p) || p[j] == '/' {
				return false
			}
		}
	}
	return true
}

// ok matches exactly, or by path segments: prefix /api matches /api,
// /api/ and /api/v1 but not /apis.
func (m *pathMatch) ok(p string) bool {
	if !m.prefix {
		return p == m.value
	}
	pre := m.value
	if pre == "/" {
		return true
	}
	pre = strings.TrimSuffix(pre, "/")
	if !strings.HasPrefix(p, pre) {
		return false
	}
	return len(p) == len(pre) || p[len(pre)] == '/'
}

func (h *headerMatch) ok(hdr http.Header) bool {
	vv := hdr[h.name]
	if h.present {
		return len(vv) > 0
	}
	for _, v := range vv {
		if v == h.exact {
			return true
		}
	}
	return false
}

func (r *rule) grpcOK(f *Facts) bool {
	if !f.GRPC {
		return false
	}
	for _, g := range r.grpc {
		if g[len(g)-1] == '/' {
			if strings.HasPrefix(f.Path, g) && strings.IndexByte(f.Path[len(g):], '/') < 0 && len(f.Path) > len(g) {
				return true
			}
		} else if f.Path == g {
			return true
		}
	}
	return false
}

func containsPort(ps []uint32, p uint32) bool {
	for _, x := range ps {
		if x == p {
			return true
		}
	}
	return false
}

func containsString(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func compilePath(p *meshv1.AuthzPath) (pathMatch, error) {
	switch m := p.GetMatch().(type) {
	case *meshv1.AuthzPath_Exact:
		if !strings.HasPrefix(m.Exact, "/") {
			return pathMatch{}, fmt.Errorf("exact %q: want a path starting with /", m.Exact)
		}
		return pathMatch{value: m.Exact}, nil
	case *meshv1.AuthzPath_Prefix:
		if !strings.HasPrefix(m.Prefix, "/") {
			return pathMatch{}, fmt.Errorf("prefix %q: want a path starting with /", m.Prefix)
		}
		return pathMatch{prefix: true, value: m.Prefix}, nil
	}
	return pathMatch{}, errors.New("no match")
}
