// Package config holds the resource kinds users apply with
// `trellis apply -f`: Trellis' own kinds (trellis.dev/v1alpha1) and the
// Gateway API routes in their mesh (GAMMA) form. Every document goes through
// the same lifecycle: strict decode (unknown or duplicate fields are errors),
// defaults, then Validate, whose errors name the file, the document, the
// field and the reason.
//
// Adding a kind is its file (the type, its defaults and its Validate) and
// its hooks file (cross-object checks, what it declares or attaches to in
// the compiled mesh), plus one line in kindTable; kinds.go says how.
package config

import (
	"errors"
	"fmt"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"trellis.dev/trellis/internal/echo"
)

// DefaultNamespace is the namespace of a resource whose metadata names none.
const DefaultNamespace = "default"

// Ref names one resource.
type Ref struct {
	Kind      string
	Namespace string
	Name      string
}

// String renders the ref as "HTTPRoute default/inventory-split".
func (r Ref) String() string {
	return r.Kind + " " + r.Namespace + "/" + r.Name
}

// Object is a decoded, defaulted resource. Decode and DecodeStored return
// pointers (*Service, *HTTPRoute).
type Object interface {
	Ref() Ref
	// Validate checks the object, assuming defaults were applied (Decode,
	// DecodeStored and Default do that). It returns every problem, joined with
	// errors.Join, each an *Error naming the field.
	Validate() error
}

// object is what the package needs of a kind beyond Object.
type object interface {
	Object
	typeMeta() *metav1.TypeMeta
	objectMeta() *metav1.ObjectMeta
	setDefaults()
}

// Default applies the kind's defaults to o in place: what Decode does between
// decoding and validating. Useful for objects built in Go.
func Default(o Object) {
	if obj, ok := o.(object); ok {
		if k, ok := lookupKind(o.Ref().Kind); ok {
			tm := obj.typeMeta()
			if tm.APIVersion == "" && tm.Kind == "" {
				tm.APIVersion, tm.Kind = k.apiVersion, k.kind
			}
		}
		obj.setDefaults()
	}
}

// Error is one problem with one resource. Decode, DecodeStored, Validate and
// CheckSet return these joined with errors.Join; walk them with
// errors.As or by unwrapping `interface{ Unwrap() []error }`.
type Error struct {
	// File is the file the document came from; empty for stored objects.
	File string
	// Doc is the 1-based index of the document in File; 0 when unknown.
	Doc int
	// Ref is the resource, as far as it could be read.
	Ref Ref
	// Field is the path of the offending field, e.g.
	// spec.rules[0].backendRefs[1].weight; empty for the whole document.
	Field string
	// Reason says what is wrong and, where it helps, what to do instead.
	Reason string
}

// Error renders as
// "route.yaml: document 2 (HTTPRoute default/x): spec.rules[0].backendRefs[1].weight: must be between 0 and 1000000".
//
// Every part may quote input (a file name, a resource name, a value), so
// each is clipped (echo.Clip): a huge name never makes a huge error.
func (e *Error) Error() string {
	parts := make([]string, 0, 4)
	if e.File != "" {
		parts = append(parts, echo.Clip(e.File, echo.Max))
	}
	ref := ""
	switch {
	case e.Ref.Name != "":
		ref = echo.Clip(e.Ref.String(), echo.Max)
	case e.Ref.Kind != "":
		ref = echo.Clip(e.Ref.Kind, echo.Max)
	}
	switch {
	case e.Doc > 0 && ref != "":
		parts = append(parts, fmt.Sprintf("document %d (%s)", e.Doc, ref))
	case e.Doc > 0:
		parts = append(parts, fmt.Sprintf("document %d", e.Doc))
	case ref != "":
		parts = append(parts, ref)
	}
	if e.Field != "" {
		parts = append(parts, echo.Clip(e.Field, echo.Max))
	}
	parts = append(parts, echo.Clip(e.Reason, maxReason))
	return strings.Join(parts, ": ")
}

// Errors returns the *Error values inside err (as joined by this package), in
// order. Other errors are skipped.
func Errors(err error) []*Error {
	var out []*Error
	var walk func(error)
	walk = func(err error) {
		if err == nil {
			return
		}
		if e, ok := err.(*Error); ok {
			out = append(out, e)
			return
		}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		var e *Error
		if errors.As(err, &e) {
			out = append(out, e)
		}
	}
	walk(err)
	return out
}

// maxReason bounds a reason as rendered: room for the rule and a quoted
// value.
const maxReason = 4 * echo.Max

// fieldErrors collects the problems of one resource.
type fieldErrors struct {
	ref  Ref
	errs []error
}

func (f *fieldErrors) add(field, reason string) {
	f.errs = append(f.errs, &Error{Ref: f.ref, Field: field, Reason: reason})
}

func (f *fieldErrors) addf(field, format string, args ...any) {
	f.add(field, fmt.Sprintf(format, args...))
}

func (f *fieldErrors) err() error { return errors.Join(f.errs...) }
