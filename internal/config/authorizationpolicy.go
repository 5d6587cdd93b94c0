package config

import (
	"fmt"
	"net/http"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"trellis.dev/trellis/internal/meshname"
)

// AuthorizationPolicy says who may call a workload, and what: ALLOW or DENY
// rules on the caller's SPIFFE ID, the destination port, the HTTP method,
// path and headers, and the gRPC service and method. It applies, as
// Istio's does:
//
//   - with targetRefs: to those Services, in the policy's namespace;
//   - without: to every Service of its namespace;
//   - without, in the root namespace trellis-system: to every Service of
//     the mesh.
//
// The proxy of a workload evaluates every DENY policy that applies first
// (any matching rule denies), then, if any ALLOW policy applies, requires a
// request to match one of their rules; with no ALLOW policy the control
// plane's --default-authorization (allow unless set) decides.
type AuthorizationPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              AuthorizationPolicySpec `json:"spec"`
}

// AuthorizationPolicySpec is an AuthorizationPolicy's desired state.
type AuthorizationPolicySpec struct {
	// TargetRefs are Services of the policy's namespace; none: the whole
	// namespace (the whole mesh in trellis-system).
	TargetRefs []PolicyTargetRef `json:"targetRefs,omitempty"`
	// Action is ALLOW or DENY; required.
	Action string `json:"action"`
	// Rules: the policy matches a request that matches any of them; at
	// least one. A rule with no conditions ({}) matches every request.
	Rules []AuthorizationRule `json:"rules"`
}

// AuthorizationRule matches a request that meets every condition it sets;
// each list is met by any one of its entries.
type AuthorizationRule struct {
	// From: the caller is any of these. Every source needs a verified
	// identity: a plaintext request never matches a rule with from.
	From []AuthorizationSource `json:"from,omitempty"`
	// Ports are destination Service ports.
	Ports []int32 `json:"ports,omitempty"`
	// Methods are HTTP methods, upper case.
	Methods []string `json:"methods,omitempty"`
	// Paths match the request path after dot segments and repeated slashes
	// are resolved.
	Paths []AuthorizationPath `json:"paths,omitempty"`
	// Headers must all match.
	Headers []AuthorizationHeader `json:"headers,omitempty"`
	// GRPC calls, on ports declared grpc.
	GRPC []AuthorizationGRPC `json:"grpc,omitempty"`
}

// AuthorizationSource is one caller: set exactly one field.
type AuthorizationSource struct {
	// Identity is an exact SPIFFE ID.
	Identity string `json:"identity,omitempty"`
	// IdentityPrefix matches SPIFFE IDs starting with it.
	IdentityPrefix string `json:"identityPrefix,omitempty"`
	// Namespace matches every service account of the namespace.
	Namespace string `json:"namespace,omitempty"`
	// Authenticated matches any verified identity.
	Authenticated bool `json:"authenticated,omitempty"`
}

// AuthorizationPath is exact or a prefix by path segments (/api matches
// /api and /api/v1, not /apis): set one.
type AuthorizationPath struct {
	Exact  string `json:"exact,omitempty"`
	Prefix string `json:"prefix,omitempty"`
}

// AuthorizationHeader matches a request header by value or presence: set
// one of exact and present.
type AuthorizationHeader struct {
	Name    string `json:"name"`
	Exact   string `json:"exact,omitempty"`
	Present bool   `json:"present,omitempty"`
}

// AuthorizationGRPC is a gRPC service (package-qualified, shop.Orders) and
// optionally one of its methods; no method: every method.
type AuthorizationGRPC struct {
	Service string `json:"service"`
	Method  string `json:"method,omitempty"`
}

// Authorization actions.
const (
	AuthzActionAllow = "ALLOW"
	AuthzActionDeny  = "DENY"
)

// RootNamespace is where an AuthorizationPolicy without targetRefs applies
// to the whole mesh.
const RootNamespace = "trellis-system"

const authorizationPolicyKind = "AuthorizationPolicy"

func authorizationPolicyKindInfo() kindInfo {
	return kindInfo{kind: authorizationPolicyKind, apiVersion: ServiceAPIVersion, newObject: func() object { return new(AuthorizationPolicy) }}
}

// Ref names the policy.
func (p *AuthorizationPolicy) Ref() Ref {
	return Ref{Kind: authorizationPolicyKind, Namespace: namespaceOr(p.Namespace), Name: p.Name}
}

func (p *AuthorizationPolicy) typeMeta() *metav1.TypeMeta     { return &p.TypeMeta }
func (p *AuthorizationPolicy) objectMeta() *metav1.ObjectMeta { return &p.ObjectMeta }

// setDefaults: namespace, targetRef kind Service, canonical header names.
func (p *AuthorizationPolicy) setDefaults() {
	if p.Namespace == "" {
		p.Namespace = DefaultNamespace
	}
	for i := range p.Spec.TargetRefs {
		if p.Spec.TargetRefs[i].Kind == "" {
			p.Spec.TargetRefs[i].Kind = "Service"
		}
	}
	for i := range p.Spec.Rules {
		for j := range p.Spec.Rules[i].Headers {
			h := &p.Spec.Rules[i].Headers[j]
			if headerNameRE.MatchString(h.Name) {
				h.Name = http.CanonicalHeaderKey(h.Name)
			}
		}
	}
}

// Validate checks the policy; see Object.
func (p *AuthorizationPolicy) Validate() error {
	fe := &fieldErrors{ref: p.Ref()}
	validateMeta(fe, &p.ObjectMeta)
	p.validateTargets(fe)
	switch p.Spec.Action {
	case AuthzActionAllow, AuthzActionDeny:
	case "":
		fe.add("spec.action", "required: ALLOW or DENY")
	default:
		fe.addf("spec.action", "must be ALLOW or DENY, got %q", authzEcho(p.Spec.Action))
	}
	if len(p.Spec.Rules) == 0 {
		fe.add("spec.rules", "at least one rule is required; a rule {} matches every request")
	}
	for i := range p.Spec.Rules {
		p.Spec.Rules[i].validate(fe, fmt.Sprintf("spec.rules[%d]", i))
	}
	return fe.err()
}

func (p *AuthorizationPolicy) validateTargets(fe *fieldErrors) {
	seen := map[string]int{}
	for i, t := range p.Spec.TargetRefs {
		path := fmt.Sprintf("spec.targetRefs[%d]", i)
		if t.Group != "" && t.Group != trellisGroup {
			fe.addf(path+".group", "must be \"\" (core) or %s, got %q", trellisGroup, authzEcho(t.Group))
		}
		if t.Kind != "Service" {
			fe.addf(path+".kind", "must be Service, got %q: an AuthorizationPolicy applies to Services", authzEcho(t.Kind))
		}
		if prob := dnsLabelProblem(t.Name); prob != "" {
			fe.add(path+".name", prob)
		} else if j, dup := seen[t.Name]; dup {
			fe.addf(path+".name", "Service %s is already targeted by spec.targetRefs[%d]", t.Name, j)
		} else {
			seen[t.Name] = i
		}
	}
}

// maxListLen bounds each list of a rule, so one policy cannot make every
// decision of a proxy slow.
const maxListLen = 256

func (r *AuthorizationRule) validate(fe *fieldErrors, f string) {
	for name, n := range map[string]int{"from": len(r.From), "ports": len(r.Ports), "methods": len(r.Methods), "paths": len(r.Paths), "headers": len(r.Headers), "grpc": len(r.GRPC)} {
		if n > maxListLen {
			fe.addf(f+"."+name, "at most %d entries, got %d", maxListLen, n)
		}
	}
	for i := range r.From {
		r.From[i].validate(fe, fmt.Sprintf("%s.from[%d]", f, i))
	}
	for i, port := range r.Ports {
		if port < 1 || port > 65535 {
			fe.addf(fmt.Sprintf("%s.ports[%d]", f, i), "must be between 1 and 65535, got %d", port)
		}
	}
	for i, m := range r.Methods {
		if m == "" || strings.ToUpper(m) != m || !headerNameRE.MatchString(m) {
			fe.addf(fmt.Sprintf("%s.methods[%d]", f, i), "%q is not an upper case HTTP method (GET, POST, ...)", authzEcho(m))
		}
	}
	for i, pm := range r.Paths {
		pm.validate(fe, fmt.Sprintf("%s.paths[%d]", f, i))
	}
	for i, h := range r.Headers {
		h.validate(fe, fmt.Sprintf("%s.headers[%d]", f, i))
	}
	for i, g := range r.GRPC {
		path := fmt.Sprintf("%s.grpc[%d]", f, i)
		if g.Service == "" || !grpcNameOK(g.Service) {
			fe.addf(path+".service", "%q is not a gRPC service name (package.Service)", authzEcho(g.Service))
		}
		if g.Method != "" && !grpcNameOK(g.Method) {
			fe.addf(path+".method", "%q is not a gRPC method name", authzEcho(g.Method))
		}
	}
}

func (s *AuthorizationSource) validate(fe *fieldErrors, f string) {
	n := 0
	for _, set := range []bool{s.Identity != "", s.IdentityPrefix != "", s.Namespace != "", s.Authenticated} {
		if set {
			n++
		}
	}
	if n != 1 {
		fe.add(f, "set exactly one of identity, identityPrefix, namespace, authenticated")
		return
	}
	switch {
	case s.Identity != "":
		if p := spiffeIDProblem(s.Identity); p != "" {
			fe.add(f+".identity", p)
		}
	case s.IdentityPrefix != "":
		if !strings.HasPrefix(s.IdentityPrefix, "spiffe://") || len(s.IdentityPrefix) <= len("spiffe://") {
			fe.addf(f+".identityPrefix", "%q must start with spiffe://<trust-domain>", authzEcho(s.IdentityPrefix))
		}
	case s.Namespace != "":
		if err := meshname.CheckLabel(s.Namespace); err != nil {
			fe.addf(f+".namespace", "%v", err)
		}
	}
}

// spiffeIDProblem checks an exact workload ID:
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
func spiffeIDProblem(id string) string {
	rest, ok := strings.CutPrefix(id, "spiffe://")
	td, p, ok2 := strings.Cut(rest, "/")
	parts := strings.Split(p, "/")
	if !ok || !ok2 || td == "" || len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" ||
		meshname.CheckLabel(parts[1]) != nil || meshname.CheckSubdomain(parts[3]) != nil {
		return fmt.Sprintf("%q is not a workload ID: want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>", authzEcho(id))
	}
	return ""
}

func (pm *AuthorizationPath) validate(fe *fieldErrors, f string) {
	switch {
	case (pm.Exact == "") == (pm.Prefix == ""):
		fe.add(f, "set exactly one of exact, prefix")
	case pm.Exact != "" && !strings.HasPrefix(pm.Exact, "/"):
		fe.addf(f+".exact", "%q must start with /", authzEcho(pm.Exact))
	case pm.Prefix != "" && !strings.HasPrefix(pm.Prefix, "/"):
		fe.addf(f+".prefix", "%q must start with /", authzEcho(pm.Prefix))
	}
}

func (h *AuthorizationHeader) validate(fe *fieldErrors, f string) {
	if !headerNameRE.MatchString(h.Name) {
		fe.addf(f+".name", "%q is not a header name", authzEcho(h.Name))
	}
	if (h.Exact == "") == !h.Present {
		fe.add(f, "set exactly one of exact, present")
	}
}

// authzEcho bounds a value echoed in an error message: a 1 MiB name must
// not come back as a 1 MiB error.
func authzEcho(s string) string {
	const max = 128
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}

// grpcNameOK accepts protobuf full names and identifiers: letters, digits,
// '_' and '.', not starting with a digit or a dot.
func grpcNameOK(s string) bool {
	if s == "" || s[0] == '.' || (s[0] >= '0' && s[0] <= '9') || len(s) > 256 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || c == '.' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}
