package config

import (
	"slices"
	"strings"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// MeshConfig's hooks: it applies to every proxy (ProxyScoped, at mesh
// scope), and a second MeshConfig is refused (checkSet).

var _ ProxyScoped = (*MeshConfig)(nil)

// AppliesTo: every proxy of the mesh.
func (m *MeshConfig) AppliesTo(ServiceKey) (Scope, bool) { return ScopeMesh, true }

// ContributeProxy sets the outbound traffic policy's mode.
func (m *MeshConfig) ContributeProxy(snap *meshv1.Snapshot) {
	o := m.Spec.OutboundTrafficPolicy
	if o == nil {
		return
	}
	if snap.OutboundTrafficPolicy == nil {
		snap.OutboundTrafficPolicy = &meshv1.OutboundTrafficPolicy{}
	}
	snap.OutboundTrafficPolicy.Mode = meshv1.OutboundTrafficPolicy_ALLOW_ANY
	if o.Mode == OutboundRegistryOnly {
		snap.OutboundTrafficPolicy.Mode = meshv1.OutboundTrafficPolicy_REGISTRY_ONLY
	}
}

// checkSet refuses a second MeshConfig: the mesh has one set of settings.
func (m *MeshConfig) checkSet(set *Set) []error {
	fe := &fieldErrors{ref: m.Ref()}
	var others []string
	for ref := range set.byRef {
		if ref.Kind == meshConfigKind && ref != m.Ref() {
			others = append(others, ref.Namespace+"/"+ref.Name)
		}
	}
	slices.Sort(others)
	if len(others) > 0 {
		fe.addf("metadata.name", "MeshConfig %s already holds the mesh's settings: there is one MeshConfig; edit that one", strings.Join(others, ", "))
	}
	return fe.errs
}
