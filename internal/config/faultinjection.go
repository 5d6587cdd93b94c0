package config

import (
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// FaultInjection is a Trellis kind (trellis.dev/v1alpha1) that an HTTPRoute
// or GRPCRoute rule refers to with an ExtensionRef filter
// (group trellis.dev, kind FaultInjection, same namespace): a fixed delay
// and/or an abort for a percentage of the rule's requests, as Istio's
// HTTPFaultInjection. It attaches to nothing on its own.
type FaultInjection struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              FaultInjectionSpec `json:"spec"`
}

// FaultInjectionSpec is the faults injected; at least one of them.
type FaultInjectionSpec struct {
	// Delay holds requests back before they are sent on.
	Delay *FaultDelay `json:"delay,omitempty"`
	// Abort answers requests itself, without sending them on.
	Abort *FaultAbort `json:"abort,omitempty"`
}

// FaultDelay is a fixed delay for a percentage of requests.
type FaultDelay struct {
	// FixedDelay is a Gateway API duration ("200ms", "2s"), at most 1h.
	FixedDelay string `json:"fixedDelay"`
	// Percentage of requests delayed, 0–100 (fractions allowed); default 100.
	Percentage *float64 `json:"percentage,omitempty"`
}

// FaultAbort answers a percentage of requests with an error.
type FaultAbort struct {
	// HTTPStatus is the status sent, 200–599; default 503.
	HTTPStatus int32 `json:"httpStatus,omitempty"`
	// GRPCStatus, when set, is the grpc-status (1–16) a gRPC request gets
	// instead, in an HTTP 200 response, as a gRPC server would answer.
	GRPCStatus *int32 `json:"grpcStatus,omitempty"`
	// Percentage of requests aborted, 0–100 (fractions allowed); default 100.
	Percentage *float64 `json:"percentage,omitempty"`
}

const maxFaultDelay = 3600e9 // 1h, in nanoseconds

func faultInjectionKindInfo() kindInfo {
	return kindInfo{kind: faultInjectionKind, apiVersion: ServiceAPIVersion, newObject: func() object { return new(FaultInjection) }}
}

// Ref names the fault injection.
func (f *FaultInjection) Ref() Ref {
	return Ref{Kind: faultInjectionKind, Namespace: namespaceOr(f.Namespace), Name: f.Name}
}

func (f *FaultInjection) typeMeta() *metav1.TypeMeta     { return &f.TypeMeta }
func (f *FaultInjection) objectMeta() *metav1.ObjectMeta { return &f.ObjectMeta }

// setDefaults: namespace, percentages 100, abort status 503.
func (f *FaultInjection) setDefaults() {
	if f.Namespace == "" {
		f.Namespace = DefaultNamespace
	}
	if d := f.Spec.Delay; d != nil && d.Percentage == nil {
		d.Percentage = ptrTo(100.0)
	}
	if a := f.Spec.Abort; a != nil {
		if a.Percentage == nil {
			a.Percentage = ptrTo(100.0)
		}
		if a.HTTPStatus == 0 {
			a.HTTPStatus = 503
		}
	}
}

// Validate checks the faults.
func (f *FaultInjection) Validate() error {
	fe := &fieldErrors{ref: f.Ref()}
	validateMeta(fe, &f.ObjectMeta)
	s := &f.Spec
	if s.Delay == nil && s.Abort == nil {
		fe.add("spec", "give a delay, an abort or both")
	}
	if d := s.Delay; d != nil {
		dur, ok := parseGWDuration(d.FixedDelay)
		switch {
		case d.FixedDelay == "":
			fe.add("spec.delay.fixedDelay", "required, e.g. 200ms")
		case !ok:
			fe.addf("spec.delay.fixedDelay", "%q is not a Gateway API duration (e.g. 200ms, 2s, 1m30s)", d.FixedDelay)
		case dur > maxFaultDelay:
			fe.addf("spec.delay.fixedDelay", "%s is longer than 1h", d.FixedDelay)
		}
		validatePercent(fe, "spec.delay.percentage", d.Percentage)
	}
	if a := s.Abort; a != nil {
		if a.HTTPStatus < 200 || a.HTTPStatus > 599 {
			fe.addf("spec.abort.httpStatus", "must be between 200 and 599, got %d", a.HTTPStatus)
		}
		if a.GRPCStatus != nil && (*a.GRPCStatus < 1 || *a.GRPCStatus > 16) {
			fe.addf("spec.abort.grpcStatus", "must be a gRPC status code from 1 (CANCELLED) to 16 (UNAUTHENTICATED), got %d", *a.GRPCStatus)
		}
		validatePercent(fe, "spec.abort.percentage", a.Percentage)
	}
	return fe.err()
}

func validatePercent(fe *fieldErrors, path string, p *float64) {
	if p != nil && (*p < 0 || *p > 100 || *p != *p) {
		fe.add(path, fmt.Sprintf("must be between 0 and 100, got %v", *p))
	}
}

// compile is the fault as routes carry it (defaulted, valid).
func (f *FaultInjection) compile() *meshv1.Fault {
	out := &meshv1.Fault{}
	if d := f.Spec.Delay; d != nil {
		dur, _ := parseGWDuration(d.FixedDelay)
		out.Delay = &meshv1.FaultDelay{FixedDelay: durationOrNil(dur), Percent: *d.Percentage}
	}
	if a := f.Spec.Abort; a != nil {
		out.Abort = &meshv1.FaultAbort{HttpStatus: uint32(a.HTTPStatus), Percent: *a.Percentage}
		if a.GRPCStatus != nil {
			out.Abort.GrpcStatus = ptrTo(uint32(*a.GRPCStatus))
		}
	}
	return out
}
