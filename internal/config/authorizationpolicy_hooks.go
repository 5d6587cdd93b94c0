package config

import (
	"fmt"
	"slices"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// AuthorizationPolicy's hooks: it applies to the inbound traffic of the
// services its scope covers (InboundContributor), adding itself to their
// snapshots' inbound_policy.authorization; its rule ports must be declared
// by the Services it targets (checkSet).

var _ InboundContributor = (*AuthorizationPolicy)(nil)

// AppliesTo: targeted Services; without targetRefs every Service of the
// namespace, or of the mesh from the root namespace.
func (p *AuthorizationPolicy) AppliesTo(svc ServiceKey) bool {
	if len(p.Spec.TargetRefs) == 0 {
		return p.Namespace == RootNamespace || p.Namespace == svc.Namespace
	}
	if svc.Namespace != p.Namespace {
		return false
	}
	for _, t := range p.Spec.TargetRefs {
		if t.Name == svc.Name {
			return true
		}
	}
	return false
}

// ContributeInbound appends the compiled policy to p's authorization.
func (p *AuthorizationPolicy) ContributeInbound(ip *meshv1.InboundPolicy) {
	if ip.Authorization == nil {
		ip.Authorization = &meshv1.Authorization{}
	}
	ip.Authorization.Policies = append(ip.Authorization.Policies, p.compile())
}

// checkSet refuses a rule port that a targeted Service (when declared)
// does not have: such a rule could never match, which is not what its
// author meant.
func (p *AuthorizationPolicy) checkSet(set *Set) []error {
	fe := &fieldErrors{ref: p.Ref()}
	for _, t := range p.Spec.TargetRefs {
		svc := set.service(p.Namespace, t.Name)
		if svc == nil {
			continue
		}
		for i, r := range p.Spec.Rules {
			for j, port := range r.Ports {
				if !slices.ContainsFunc(svc.Spec.Ports, func(sp ServicePort) bool { return sp.Port == port }) {
					fe.addf(fmt.Sprintf("spec.rules[%d].ports[%d]", i, j),
						"Service %s/%s declares no port %d", p.Namespace, t.Name, port)
				}
			}
		}
	}
	return fe.errs
}

var authzActions = map[string]meshv1.AuthzAction{
	AuthzActionAllow: meshv1.AuthzAction_AUTHZ_ALLOW,
	AuthzActionDeny:  meshv1.AuthzAction_AUTHZ_DENY,
}

func (p *AuthorizationPolicy) compile() *meshv1.AuthzPolicy {
	out := &meshv1.AuthzPolicy{Name: p.Namespace + "/" + p.Name, Action: authzActions[p.Spec.Action]}
	for i := range p.Spec.Rules {
		out.Rules = append(out.Rules, p.Spec.Rules[i].compile())
	}
	return out
}

func (r *AuthorizationRule) compile() *meshv1.AuthzRule {
	out := &meshv1.AuthzRule{Methods: r.Methods}
	for _, s := range r.From {
		out.From = append(out.From, s.compile())
	}
	for _, port := range r.Ports {
		out.Ports = append(out.Ports, uint32(port))
	}
	for _, pm := range r.Paths {
		if pm.Exact != "" {
			out.Paths = append(out.Paths, &meshv1.AuthzPath{Match: &meshv1.AuthzPath_Exact{Exact: pm.Exact}})
		} else {
			out.Paths = append(out.Paths, &meshv1.AuthzPath{Match: &meshv1.AuthzPath_Prefix{Prefix: pm.Prefix}})
		}
	}
	for _, h := range r.Headers {
		hm := &meshv1.AuthzHeader{Name: h.Name}
		if h.Present {
			hm.Match = &meshv1.AuthzHeader_Present{Present: true}
		} else {
			hm.Match = &meshv1.AuthzHeader_Exact{Exact: h.Exact}
		}
		out.Headers = append(out.Headers, hm)
	}
	for _, g := range r.GRPC {
		out.Grpc = append(out.Grpc, &meshv1.AuthzGRPC{Service: g.Service, Method: g.Method})
	}
	return out
}

func (s *AuthorizationSource) compile() *meshv1.AuthzSource {
	switch {
	case s.Identity != "":
		return &meshv1.AuthzSource{Match: &meshv1.AuthzSource_Identity{Identity: s.Identity}}
	case s.IdentityPrefix != "":
		return &meshv1.AuthzSource{Match: &meshv1.AuthzSource_IdentityPrefix{IdentityPrefix: s.IdentityPrefix}}
	case s.Namespace != "":
		return &meshv1.AuthzSource{Match: &meshv1.AuthzSource_Namespace{Namespace: s.Namespace}}
	}
	return &meshv1.AuthzSource{Match: &meshv1.AuthzSource_Authenticated{Authenticated: true}}
}
