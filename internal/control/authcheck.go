package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/authz"
	"trellis.dev/trellis/internal/compiler"
	"trellis.dev/trellis/internal/meshname"
)

// POST /v1/authz/check explains how the destination's proxy would decide a
// request: the control plane compiles the destination's snapshot exactly as
// it does for that proxy (compiler.Snapshot), compiles its
// inbound_policy.authorization with authz.Compile as the proxy does, and
// runs the proxy's own Decide (through Explain). There is no second
// implementation to drift from the data plane.

// snapshotSource is what the check needs of the compiler.
type snapshotSource interface {
	Snapshot(ctx context.Context, n compiler.Node) (*meshv1.Snapshot, error)
}

// AuthzCheckRequest is the facts of the request to explain.
type AuthzCheckRequest struct {
	// From is the caller's SPIFFE ID; "" explains a plaintext request.
	From string `json:"from"`
	// To is the destination service, "name.namespace" or "name" (default
	// namespace).
	To string `json:"to"`
	// Port is a service port; 0: the service's first port, as the proxy
	// uses for a request that names none.
	Port    uint32              `json:"port,omitempty"`
	Method  string              `json:"method,omitempty"`
	Path    string              `json:"path,omitempty"`
	Headers map[string][]string `json:"headers,omitempty"`
}

// AuthzCheckResponse is the decision and why.
type AuthzCheckResponse struct {
	Service       string `json:"service"`
	Port          uint32 `json:"port"`
	Protocol      string `json:"protocol"`
	Allow         bool   `json:"allow"`
	Decision      string `json:"decision"` // allow or deny
	Reason        string `json:"reason"`
	Policy        string `json:"policy,omitempty"`
	Rule          *int   `json:"rule,omitempty"`
	DefaultAction string `json:"defaultAction"`
	// Revision is the store revision the policies were compiled from.
	Revision int64              `json:"revision"`
	Policies []AuthzPolicyTrace `json:"policies"`
}

// AuthzPolicyTrace is one policy in evaluation order.
type AuthzPolicyTrace struct {
	Name   string           `json:"name"`
	Action string           `json:"action"`
	Rules  []AuthzRuleTrace `json:"rules"`
}

// AuthzRuleTrace is one rule: matched, or the first condition it failed.
type AuthzRuleTrace struct {
	Index   int    `json:"index"`
	Matched bool   `json:"matched"`
	Failed  string `json:"failed,omitempty"`
}

// errCheck marks a request the check cannot answer as asked (400).
var errCheck = errors.New("authz check")

func (a *admin) authzCheck(w http.ResponseWriter, r *http.Request) {
	var req AuthzCheckRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "authz check: decode request: "+err.Error())
		return
	}
	if err := a.caughtUp(r.Context()); err != nil {
		a.internalError(w, "authz check", err)
		return
	}
	resp, err := explainAuthz(r.Context(), a.snapshots, &req)
	if errors.Is(err, errCheck) {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err != nil {
		a.internalError(w, "authz check", err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// explainAuthz compiles the destination's snapshot and explains req
// against its authorization.
func explainAuthz(ctx context.Context, src snapshotSource, req *AuthzCheckRequest) (*AuthzCheckResponse, error) {
	name, ns, ok := strings.Cut(req.To, ".")
	if !ok {
		ns = "default"
	}
	if !meshname.IsLabel(name) || !meshname.IsLabel(ns) {
		return nil, fmt.Errorf("%w: to: %q is not a service (name or name.namespace)", errCheck, clip(req.To))
	}
	snap, err := src.Snapshot(ctx, compiler.Node{ID: "authz-check", Service: name, Namespace: ns})
	if err != nil {
		return nil, err
	}
	e, err := authz.Compile(snap.GetInboundPolicy().GetAuthorization())
	if err != nil {
		return nil, fmt.Errorf("compile %s.%s's authorization: %w", name, ns, err)
	}
	port, proto, err := checkPort(snap.GetInbound(), req.Port)
	if err != nil {
		return nil, err
	}
	facts := &authz.Facts{PeerID: req.From, Port: port, Method: req.Method, Path: req.Path,
		Header: http.Header{}, GRPC: proto == meshv1.Protocol_GRPC, TCP: proto == meshv1.Protocol_TCP}
	if facts.Method == "" && !facts.TCP {
		facts.Method = http.MethodGet
	}
	if facts.Path == "" && !facts.TCP {
		facts.Path = "/"
	}
	for k, vv := range req.Headers {
		facts.Header[http.CanonicalHeaderKey(k)] = vv
	}
	return explanation(name+"."+ns, port, proto, snap.GetRevision(), e, e.Explain(facts)), nil
}

// checkPort picks the port as the proxy's local port stage does: the one
// asked for, which must be declared, or the service's first.
func checkPort(in *meshv1.Service, want uint32) (uint32, meshv1.Protocol, error) {
	ports := in.GetPorts()
	if len(ports) == 0 {
		return want, meshv1.Protocol_HTTP, nil
	}
	if want == 0 {
		return ports[0].GetPort(), ports[0].GetProtocol(), nil
	}
	for _, p := range ports {
		if p.GetPort() == want {
			return want, p.GetProtocol(), nil
		}
	}
	return 0, 0, fmt.Errorf("%w: port %d is not declared by %s.%s (its proxy answers 404)", errCheck, want, in.GetName(), in.GetNamespace())
}

func explanation(svc string, port uint32, proto meshv1.Protocol, rev int64, e *authz.Engine, ex authz.Explanation) *AuthzCheckResponse {
	d := ex.Decision
	out := &AuthzCheckResponse{
		Service: svc, Port: port, Protocol: strings.ToLower(proto.String()),
		Allow: d.Allow, Decision: "deny", Reason: d.Reason.String(),
		DefaultAction: "deny", Revision: rev, Policies: []AuthzPolicyTrace{},
	}
	if d.Allow {
		out.Decision = "allow"
	}
	if ex.DefaultAllow {
		out.DefaultAction = "allow"
	}
	if d.Policy >= 0 {
		out.Policy = e.Policies()[d.Policy]
		rule := d.Rule
		out.Rule = &rule
	}
	for _, pt := range ex.Policies {
		t := AuthzPolicyTrace{Name: pt.Name, Action: pt.Action}
		for i, rt := range pt.Rules {
			t.Rules = append(t.Rules, AuthzRuleTrace{Index: i, Matched: rt.Matched, Failed: failedName(rt)})
		}
		out.Policies = append(out.Policies, t)
	}
	return out
}

func failedName(rt authz.RuleTrace) string {
	if rt.Matched {
		return ""
	}
	return rt.Failed.String()
}

// clip bounds a value echoed in an error.
func clip(s string) string {
	if len(s) > 128 {
		return s[:128] + "..."
	}
	return s
}

// The values of Options.DefaultAuthorization (--default-authorization).
const (
	DefaultAuthorizationAllow = "allow"
	DefaultAuthorizationDeny  = "deny"
)

func checkDefaultAuthz(v string) error {
	if v != DefaultAuthorizationAllow && v != DefaultAuthorizationDeny {
		return fmt.Errorf("defaultAuthorization: %q: must be allow or deny", clip(v))
	}
	return nil
}

func defaultAuthz(v string) meshv1.AuthzAction {
	if v == DefaultAuthorizationDeny {
		return meshv1.AuthzAction_AUTHZ_DENY
	}
	return meshv1.AuthzAction_AUTHZ_ALLOW
}
