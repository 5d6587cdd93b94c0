package config

import meshv1 "trellis.dev/trellis/api/mesh/v1"

// Service's hooks: it declares a mesh service (Declarer). It has no
// cross-object checks of its own: a port it drops is reported against the
// routes still using it (HTTPRoute's checkSet).

var _ Declarer = (*Service)(nil)

// Declares is the service s declares.
func (s *Service) Declares() ServiceKey {
	return ServiceKey{Namespace: s.Ref().Namespace, Name: s.Name}
}

// protocols maps the protocols Validate accepts (defaults fill in http).
var protocols = map[Protocol]meshv1.Protocol{
	ProtocolHTTP:  meshv1.Protocol_HTTP,
	ProtocolHTTP2: meshv1.Protocol_HTTP2,
	ProtocolGRPC:  meshv1.Protocol_GRPC,
	ProtocolTCP:   meshv1.Protocol_TCP,
}

// DeclarePorts sets svc's ports from the spec (Validate requires at least
// one, with a known protocol).
func (s *Service) DeclarePorts(svc *meshv1.Service) {
	svc.Ports = make([]*meshv1.Port, 0, len(s.Spec.Ports))
	for _, p := range s.Spec.Ports {
		svc.Ports = append(svc.Ports, &meshv1.Port{
			Name:       p.Name,
			Port:       uint32(p.Port),
			TargetPort: uint32(p.TargetPort),
			Protocol:   protocols[p.Protocol],
		})
	}
}

// Selector picks the service's endpoints (defaults make it app: <name>).
func (s *Service) Selector() map[string]string { return s.Spec.Selector }
