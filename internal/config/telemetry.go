package config

import (
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Telemetry (trellis.dev/v1alpha1) turns tracing sampling and access logs
// up or down for the proxies of a mesh, a namespace or some Services, as
// Istio's Telemetry API does:
//
//   - in the trellis-system namespace without targetRefs: mesh-wide;
//   - in another namespace without targetRefs: that namespace's services;
//   - with targetRefs: those Services (in its own namespace).
//
// A proxy takes the mesh-wide one, then its namespace's, then its
// service's, the narrower winning field by field. Where exporters are
// (the OTLP collector, the log file) stays a proxy flag; a proxy flag
// given on the command line wins over any Telemetry.
type Telemetry struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              TelemetrySpec `json:"spec"`
}

// TelemetrySpec is what a Telemetry sets; a section left out leaves it to
// the wider Telemetry or the proxy's default.
type TelemetrySpec struct {
	// TargetRefs: the Services it applies to; empty: the namespace (or, in
	// trellis-system, the mesh).
	TargetRefs    []PolicyTargetRef       `json:"targetRefs,omitempty"`
	Tracing       *TelemetryTracing       `json:"tracing,omitempty"`
	AccessLogging *TelemetryAccessLogging `json:"accessLogging,omitempty"`
}

// TelemetryTracing is the tracing section.
type TelemetryTracing struct {
	// RandomSamplingPercentage of new traces sampled, 0–100 (a request
	// whose caller sampled it is traced whatever this says).
	RandomSamplingPercentage *float64 `json:"randomSamplingPercentage"`
}

// TelemetryAccessLogging is the access log section.
type TelemetryAccessLogging struct {
	// Disabled turns access logs off; false (the default when the section
	// is given) turns them on.
	Disabled bool `json:"disabled"`
}

const telemetryKind = "Telemetry"

func telemetryKindInfo() kindInfo {
	return kindInfo{kind: telemetryKind, apiVersion: ServiceAPIVersion, newObject: func() object { return new(Telemetry) }}
}

// Ref names the Telemetry.
func (t *Telemetry) Ref() Ref {
	return Ref{Kind: telemetryKind, Namespace: namespaceOr(t.Namespace), Name: t.Name}
}

func (t *Telemetry) typeMeta() *metav1.TypeMeta     { return &t.TypeMeta }
func (t *Telemetry) objectMeta() *metav1.ObjectMeta { return &t.ObjectMeta }

// setDefaults: the namespace.
func (t *Telemetry) setDefaults() {
	if t.Namespace == "" {
		t.Namespace = DefaultNamespace
	}
}

// Validate checks the targets and the sampling percentage.
func (t *Telemetry) Validate() error {
	fe := &fieldErrors{ref: t.Ref()}
	validateMeta(fe, &t.ObjectMeta)
	s := &t.Spec
	if s.Tracing == nil && s.AccessLogging == nil {
		fe.add("spec", "give tracing, accessLogging or both")
	}
	seen := map[string]int{}
	for i, r := range s.TargetRefs {
		path := fmt.Sprintf("spec.targetRefs[%d]", i)
		if r.Group != "" && r.Group != trellisGroup {
			fe.addf(path+".group", "must be \"\" (core) or %s, got %q", trellisGroup, r.Group)
		}
		if r.Kind != "Service" {
			fe.addf(path+".kind", "must be Service, got %q: a Telemetry applies to Services", r.Kind)
		}
		if prob := dnsLabelProblem(r.Name); prob != "" {
			fe.add(path+".name", prob)
		} else if j, dup := seen[r.Name]; dup {
			fe.addf(path+".name", "Service %s is already targeted by spec.targetRefs[%d]", r.Name, j)
		} else {
			seen[r.Name] = i
		}
	}
	if tr := s.Tracing; tr != nil {
		if tr.RandomSamplingPercentage == nil {
			fe.add("spec.tracing.randomSamplingPercentage", "required in a tracing section, 0–100 (e.g. 1 or 100)")
		} else {
			validatePercent(fe, "spec.tracing.randomSamplingPercentage", tr.RandomSamplingPercentage)
		}
	}
	return fe.err()
}
