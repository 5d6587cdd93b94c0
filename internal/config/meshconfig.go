package config

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MeshConfig (trellis.dev/v1alpha1) holds mesh-wide settings, as Istio's
// MeshConfig does. There is at most one, in the trellis-system namespace;
// without one every setting takes its default. Today it holds the
// outbound traffic policy.
type MeshConfig struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              MeshConfigSpec `json:"spec"`
}

// MeshConfigSpec is the mesh's settings; a section left out takes its
// default.
type MeshConfigSpec struct {
	// OutboundTrafficPolicy says what a proxy does with a request for a
	// host that is neither a mesh service nor an ExternalService.
	OutboundTrafficPolicy *OutboundTrafficPolicy `json:"outboundTrafficPolicy,omitempty"`
}

// OutboundTrafficPolicy is the mesh's egress policy.
type OutboundTrafficPolicy struct {
	// Mode: ALLOW_ANY (default: such hosts are passed through directly,
	// HTTP forwarded and CONNECT tunnelled) or REGISTRY_ONLY (refused: 502
	// with response flag EG for HTTP, 403 for CONNECT).
	Mode OutboundMode `json:"mode"`
}

// OutboundMode is an outbound traffic policy mode.
type OutboundMode string

// Outbound modes.
const (
	OutboundAllowAny     OutboundMode = "ALLOW_ANY"
	OutboundRegistryOnly OutboundMode = "REGISTRY_ONLY"
)

const meshConfigKind = "MeshConfig"

func meshConfigKindInfo() kindInfo {
	return kindInfo{kind: meshConfigKind, apiVersion: ServiceAPIVersion, newObject: func() object { return new(MeshConfig) }}
}

// Ref names the MeshConfig.
func (m *MeshConfig) Ref() Ref {
	return Ref{Kind: meshConfigKind, Namespace: namespaceOr(m.Namespace), Name: m.Name}
}

func (m *MeshConfig) typeMeta() *metav1.TypeMeta     { return &m.TypeMeta }
func (m *MeshConfig) objectMeta() *metav1.ObjectMeta { return &m.ObjectMeta }

// setDefaults: the namespace is trellis-system (the mesh's own), and an
// outbound policy section without a mode is ALLOW_ANY.
func (m *MeshConfig) setDefaults() {
	if m.Namespace == "" {
		m.Namespace = RootNamespace
	}
	if o := m.Spec.OutboundTrafficPolicy; o != nil && o.Mode == "" {
		o.Mode = OutboundAllowAny
	}
}

// Validate checks the namespace and the outbound policy's mode.
func (m *MeshConfig) Validate() error {
	fe := &fieldErrors{ref: m.Ref()}
	validateMeta(fe, &m.ObjectMeta)
	if m.Namespace != RootNamespace {
		fe.addf("metadata.namespace", "a MeshConfig is mesh-wide and lives in %s, got %q", RootNamespace, m.Namespace)
	}
	if o := m.Spec.OutboundTrafficPolicy; o != nil && o.Mode != OutboundAllowAny && o.Mode != OutboundRegistryOnly {
		fe.addf("spec.outboundTrafficPolicy.mode", "unknown mode %q: must be ALLOW_ANY or REGISTRY_ONLY", o.Mode)
	}
	return fe.err()
}
