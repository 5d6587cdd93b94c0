package config

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/meshname"
)

// ExternalService's hooks: it declares a service (Declarer) whose
// endpoints are its own (ExternalDeclarer), and its hosts are checked
// against every other ExternalService and Service of the set (checkSet).

var _ ExternalDeclarer = (*ExternalService)(nil)

// ExternalDeclarer is a Declarer of a service outside the mesh: the
// compiler takes its endpoints from it (not from the registry by
// selector), and gives every proxy its hosts so a request for one is sent
// there.
type ExternalDeclarer interface {
	Declarer
	// ExternalEndpoints are the service's endpoints (none for DNS
	// resolution), healthy, without identities.
	ExternalEndpoints() []*meshv1.Endpoint
	// ExternalHosts are the host names apps call it by.
	ExternalHosts() []string
}

// Declares is the service the ExternalService declares: its own name and
// namespace, in the same key space as Services (checkSet refuses both).
func (e *ExternalService) Declares() ServiceKey {
	return ServiceKey{Namespace: e.Ref().Namespace, Name: e.Name}
}

// externalProtocol maps a port protocol: https is TLS the app speaks
// itself, which the proxy can only tunnel, as tcp.
func externalProtocol(p Protocol) meshv1.Protocol {
	if p == ProtocolHTTPS {
		return meshv1.Protocol_TCP
	}
	return protocols[p]
}

// DeclarePorts sets svc's ports and its External part.
func (e *ExternalService) DeclarePorts(svc *meshv1.Service) {
	s := &e.Spec
	svc.Ports = make([]*meshv1.Port, 0, len(s.Ports))
	for _, p := range s.Ports {
		svc.Ports = append(svc.Ports, &meshv1.Port{
			Name: p.Name, Port: uint32(p.Number), TargetPort: uint32(p.TargetPort), Protocol: externalProtocol(p.Protocol),
		})
	}
	ext := &meshv1.External{Hosts: slices.Clone(s.Hosts)}
	if s.Resolution == ResolutionDNS {
		ext.Resolution = meshv1.External_DNS
	}
	if t := s.TLS; t != nil && t.Mode != TLSDisable {
		ext.Tls = &meshv1.TLSOrigination{
			Mode:              meshv1.TLSOrigination_SIMPLE,
			Sni:               t.SNI,
			CaCertificates:    t.CACertificates,
			ClientCertificate: t.ClientCertificate,
			PrivateKey:        t.PrivateKey,
		}
		if t.Mode == TLSMutual {
			ext.Tls.Mode = meshv1.TLSOrigination_MUTUAL
		}
	}
	svc.External = ext
}

// Selector selects nothing by label: the endpoints are the spec's.
func (e *ExternalService) Selector() map[string]string { return nil }

// ExternalEndpoints are the spec's endpoints, ids "<name>-<i>".
func (e *ExternalService) ExternalEndpoints() []*meshv1.Endpoint {
	out := make([]*meshv1.Endpoint, 0, len(e.Spec.Endpoints))
	for i, ep := range e.Spec.Endpoints {
		host, port, _ := ParseEndpointAddress(ep.Address)
		addr := host
		if port != 0 {
			addr = net.JoinHostPort(host, strconv.FormatUint(uint64(port), 10))
		} else if strings.Contains(host, ":") {
			addr = "[" + host + "]"
		}
		out = append(out, &meshv1.Endpoint{
			Id:        e.Name + "-" + strconv.Itoa(i),
			Service:   e.Name,
			Namespace: e.Ref().Namespace,
			Address:   addr,
			Labels:    ep.Labels,
			Healthy:   true,
		})
	}
	return out
}

// ExternalHosts are spec.hosts (lower case, no trailing dot).
func (e *ExternalService) ExternalHosts() []string { return e.Spec.Hosts }

// checkSet refuses what only the whole mesh shows: a Service of the same
// name and namespace (they would compile to one service), a host another
// ExternalService lists (which one a request goes to would depend on
// order), and a host that names a Service of the mesh in its own form
// (orders.shop): the mesh's names belong to the mesh.
func (e *ExternalService) checkSet(set *Set) []error {
	fe := &fieldErrors{ref: e.Ref()}
	me := e.Ref()
	if set.service(me.Namespace, me.Name) != nil {
		fe.addf("metadata.name", "Service %s/%s has the same name: an ExternalService and a Service share one name space; rename one", me.Namespace, me.Name)
	}
	var others []*ExternalService
	for ref, o := range set.byRef {
		if x, ok := o.(*ExternalService); ok && ref != me {
			others = append(others, x)
		}
	}
	slices.SortFunc(others, func(a, b *ExternalService) int {
		return strings.Compare(a.Ref().Namespace+"/"+a.Name, b.Ref().Namespace+"/"+b.Name)
	})
	for i, h := range e.Spec.Hosts {
		path := fmt.Sprintf("spec.hosts[%d]", i)
		for _, o := range others {
			if slices.Contains(o.Spec.Hosts, h) {
				fe.addf(path, "%q is also a host of ExternalService %s/%s: a host belongs to one ExternalService", h, o.Ref().Namespace, o.Name)
			}
		}
		if name, ns, ok := meshname.ParseHost(h, me.Namespace, meshname.DefaultDomain); ok && set.service(ns, name) != nil {
			fe.addf(path, "%q is the name of Service %s/%s in the mesh: use the external service's own DNS name", h, ns, name)
		}
	}
	return fe.errs
}
