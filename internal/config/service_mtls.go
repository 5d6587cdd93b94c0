package config

import meshv1 "trellis.dev/trellis/api/mesh/v1"

// MTLSMode is what a Service's inbound port accepts.
type MTLSMode string

// The mTLS modes.
const (
	// MTLSStrict accepts mutual TLS from mesh proxies only (the default).
	MTLSStrict MTLSMode = "STRICT"
	// MTLSPermissive also accepts plaintext on the inbound port, told apart
	// per connection, for moving a service into the mesh: plaintext
	// requests carry no identity and are counted.
	MTLSPermissive MTLSMode = "PERMISSIVE"
)

// ServiceMTLS is a Service's mutual TLS setting.
type ServiceMTLS struct {
	// Mode is STRICT (default) or PERMISSIVE.
	Mode MTLSMode `json:"mode,omitempty"`
}

var mtlsModes = map[MTLSMode]meshv1.MtlsMode{
	MTLSStrict:     meshv1.MtlsMode_STRICT,
	MTLSPermissive: meshv1.MtlsMode_PERMISSIVE,
}

func (m *ServiceMTLS) setDefaults() {
	if m != nil && m.Mode == "" {
		m.Mode = MTLSStrict
	}
}

func (m *ServiceMTLS) validate(fe *fieldErrors) {
	if m == nil {
		return
	}
	if _, ok := mtlsModes[m.Mode]; !ok {
		fe.addf("spec.mtls.mode", "unknown mode %q: must be STRICT or PERMISSIVE", m.Mode)
	}
}

// MTLSMode is the mode the service's proxies enforce on their inbound port.
func (s *Service) MTLSMode() meshv1.MtlsMode {
	if s.Spec.MTLS == nil {
		return meshv1.MtlsMode_STRICT
	}
	if m, ok := mtlsModes[s.Spec.MTLS.Mode]; ok {
		return m
	}
	return meshv1.MtlsMode_STRICT
}
