// Package meshname parses and checks the names of the mesh: service and
// namespace names (RFC 1123 labels, as Kubernetes has them), service
// accounts and domains (RFC 1123 subdomains), the canonical "name.namespace"
// that the watch protocol carries, and the host forms an app may call a
// service by ("name", "name.ns", "name.ns.svc", "name.ns.svc.<domain>").
//
// There is one grammar and two kinds of front-end: Check*/Parse* return an
// *Error that says what is wrong, for field errors and the CLI; Is* and
// ParseHost return a bool and never allocate, for the proxy's hot path.
//
// Names are case-sensitive and lower case: "Orders" is not a service name,
// as in Kubernetes. Callers that hold a case-insensitive value (an HTTP Host,
// a DNS question) lower-case it first; ParseDomain does so itself.
package meshname

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Limits from RFC 1123 (and Kubernetes' validation of the same names).
const (
	MaxLabelLen     = 63
	MaxSubdomainLen = 253
)

// DefaultDomain is the mesh's DNS domain unless configured otherwise:
// services answer as <name>.<namespace>.svc.trellis.local.
const DefaultDomain = "trellis.local"

// ErrInvalid is matched (errors.Is) by every error this package returns.
var ErrInvalid = errors.New("meshname: invalid name")

// Error says why a value is not a valid name. Its text is the reason part of
// a field error: it quotes the value and says what to do instead, and it has
// no package prefix because callers put it after a field path.
type Error struct {
	Value string // the value as given
	msg   string
}

func (e *Error) Error() string { return e.msg }

// Is makes errors.Is(err, ErrInvalid) true.
func (e *Error) Is(target error) bool { return target == ErrInvalid }

func invalid(value, format string, a ...any) *Error {
	return &Error{Value: value, msg: fmt.Sprintf(format, a...)}
}

const (
	labelRule     = "use lower-case letters, digits and '-', starting and ending with a letter or digit (RFC 1123 label)"
	subdomainRule = "use dot-separated lower-case letters, digits and '-', each part starting and ending with a letter or digit (RFC 1123 subdomain)"
)

// IsLabel reports whether s is an RFC 1123 label: 1 to 63 lower-case
// letters, digits and '-', starting and ending with a letter or digit.
// Leading digits are allowed (RFC 1123 relaxed RFC 952 on that). Service,
// namespace and port names are labels. It does not allocate.
func IsLabel(s string) bool {
	if s == "" || len(s) > MaxLabelLen || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// CheckLabel returns nil if s is a label (see IsLabel), else an *Error
// saying what is wrong with it.
func CheckLabel(s string) error {
	if IsLabel(s) {
		return nil
	}
	if s == "" {
		return invalid(s, "required")
	}
	if len(s) > MaxLabelLen {
		return invalid(s, "%q is longer than %d characters", s, MaxLabelLen)
	}
	return invalid(s, "%q is not a valid name: %s; %s", s, labelProblem(s), labelRule)
}

// labelProblem names the first thing wrong with a non-empty label of valid
// length.
func labelProblem(s string) string {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'A' && c <= 'Z':
			return fmt.Sprintf("upper case is not allowed (did you mean %q?)", strings.ToLower(s))
		case c == '.':
			return "'.' is not allowed in a name"
		case !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-'):
			return fmt.Sprintf("%q is not allowed", rune(c))
		}
	}
	if s[0] == '-' {
		return "it starts with '-'"
	}
	return "it ends with '-'"
}

// IsSubdomain reports whether s is an RFC 1123 subdomain: dot-separated
// labels, at most 253 characters in all, no trailing dot. Service accounts
// are subdomains. It does not allocate.
func IsSubdomain(s string) bool {
	if s == "" || len(s) > MaxSubdomainLen {
		return false
	}
	for {
		label, rest, more := strings.Cut(s, ".")
		if !IsLabel(label) {
			return false
		}
		if !more {
			return true
		}
		s = rest
	}
}

// CheckSubdomain returns nil if s is a subdomain (see IsSubdomain), else an
// *Error saying what is wrong with it.
func CheckSubdomain(s string) error {
	if IsSubdomain(s) {
		return nil
	}
	if s == "" {
		return invalid(s, "required")
	}
	if len(s) > MaxSubdomainLen {
		return invalid(s, "%q is longer than %d characters", s, MaxSubdomainLen)
	}
	// Some part is not a label (else IsSubdomain would have said yes).
	parts := strings.Split(s, ".")
	i := slices.IndexFunc(parts, func(l string) bool { return !IsLabel(l) })
	label, problem := parts[i], "it is empty"
	switch {
	case label == "":
	case len(label) > MaxLabelLen:
		problem = fmt.Sprintf("it is longer than %d characters", MaxLabelLen)
	default:
		problem = labelProblem(label)
	}
	return invalid(s, "%q is not a valid name: part %d (%q): %s; %s", s, i+1, label, problem, subdomainRule)
}

// ParseDomain checks a DNS domain such as trellis.local and returns it in
// the form ParseHost compares against: lower case, without the trailing dot
// of an absolute name ("Trellis.Local." → "trellis.local"). DNS is
// case-insensitive, so unlike names a domain may be given in upper case.
func ParseDomain(s string) (string, error) {
	d := strings.ToLower(strings.TrimSuffix(s, "."))
	if IsSubdomain(d) {
		return d, nil
	}
	if d == "" {
		return "", invalid(s, "required: a DNS domain such as %s", DefaultDomain)
	}
	err := CheckSubdomain(d).(*Error)
	return "", invalid(s, "domain %s", err.msg)
}
