package config

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"trellis.dev/trellis/internal/meshname"
)

// labelNameRE is Kubernetes' label name and value syntax (not a DNS name:
// upper case, '_' and '.' are allowed).
var labelNameRE = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`)

// dnsLabelProblem returns why s is not an RFC 1123 label (what names,
// namespaces and port names are), or "". The rule is meshname's, shared with
// the control plane's protocol checks, the proxy and the CLI.
func dnsLabelProblem(s string) string {
	if err := meshname.CheckLabel(s); err != nil {
		return err.Error()
	}
	return ""
}

// qualifiedNameProblem checks a label or annotation key: an optional
// DNS-1123 subdomain prefix and '/', then a name of at most 63 characters.
func qualifiedNameProblem(key string) string {
	name := key
	if prefix, rest, ok := strings.Cut(key, "/"); ok {
		if !meshname.IsSubdomain(prefix) {
			return fmt.Sprintf("key %q: prefix must be a DNS subdomain such as example.com", key)
		}
		name = rest
	}
	switch {
	case name == "":
		return fmt.Sprintf("key %q: name part is empty", key)
	case len(name) > 63:
		return fmt.Sprintf("key %q: name part is longer than 63 characters", key)
	case !labelNameRE.MatchString(name):
		return fmt.Sprintf("key %q: use letters, digits, '-', '_' and '.', starting and ending with a letter or digit", key)
	}
	return ""
}

// labelValueProblem checks a label value: empty, or at most 63 characters of
// the label-name alphabet.
func labelValueProblem(v string) string {
	switch {
	case v == "":
		return ""
	case len(v) > 63:
		return fmt.Sprintf("value %q is longer than 63 characters", v)
	case !labelNameRE.MatchString(v):
		return fmt.Sprintf("value %q: use letters, digits, '-', '_' and '.', starting and ending with a letter or digit", v)
	}
	return ""
}

// LabelProblem says why key=value is not a valid label under Kubernetes'
// rules, or "" when it is. Endpoint labels follow the same rules as the
// selectors that match them.
func LabelProblem(key, value string) string {
	if p := qualifiedNameProblem(key); p != "" {
		return p
	}
	return labelValueProblem(value)
}

// validateLabels checks a label map at path (e.g. "metadata.labels").
func validateLabels(fe *fieldErrors, path string, labels map[string]string) {
	for _, k := range sortedKeys(labels) {
		if p := qualifiedNameProblem(k); p != "" {
			fe.add(path, p)
		}
		if p := labelValueProblem(labels[k]); p != "" {
			fe.add(fmt.Sprintf("%s[%s]", path, k), p)
		}
	}
}

const maxAnnotationBytes = 256 << 10

// validateMeta checks the metadata every kind shares: name and namespace are
// DNS-1123 labels, labels and annotation keys are well formed.
func validateMeta(fe *fieldErrors, m *metav1.ObjectMeta) {
	if p := dnsLabelProblem(m.Name); p != "" {
		fe.add("metadata.name", p)
	}
	if p := dnsLabelProblem(m.Namespace); p != "" {
		fe.add("metadata.namespace", p)
	}
	validateLabels(fe, "metadata.labels", m.Labels)
	total := 0
	for _, k := range sortedKeys(m.Annotations) {
		if p := qualifiedNameProblem(k); p != "" {
			fe.add("metadata.annotations", p)
		}
		total += len(k) + len(m.Annotations[k])
	}
	if total > maxAnnotationBytes {
		fe.addf("metadata.annotations", "total size %d bytes exceeds %d", total, maxAnnotationBytes)
	}
}

// checkAppliedMeta refuses metadata that the control plane owns or that
// Trellis has no use for. Only user input goes through it (Decode), so the
// control plane stays free to record such fields in stored objects.
func checkAppliedMeta(fe *fieldErrors, m *metav1.ObjectMeta) {
	const owned = "is set by the control plane, not by users; remove it"
	const unsupported = "is not supported: Trellis metadata holds name, namespace, labels and annotations"
	if m.UID != "" {
		fe.add("metadata.uid", owned)
	}
	if m.ResourceVersion != "" {
		fe.add("metadata.resourceVersion", owned)
	}
	if m.Generation != 0 {
		fe.add("metadata.generation", owned)
	}
	// metadata.creationTimestamp is set by the control plane too, but taken
	// back as 'trellis get -o yaml' prints it, as kubectl does: apply keeps
	// the stored time (or stamps a new object now), so the value given is
	// dropped and the output of get applies unchanged.
	if m.DeletionTimestamp != nil {
		fe.add("metadata.deletionTimestamp", owned)
	}
	if m.DeletionGracePeriodSeconds != nil {
		fe.add("metadata.deletionGracePeriodSeconds", owned)
	}
	//lint:ignore SA1019 refused on apply precisely because it is a legacy server-owned field
	if m.SelfLink != "" {
		fe.add("metadata.selfLink", owned)
	}
	if len(m.ManagedFields) > 0 {
		fe.add("metadata.managedFields", owned)
	}
	if m.GenerateName != "" {
		fe.add("metadata.generateName", unsupported+"; set metadata.name")
	}
	if len(m.OwnerReferences) > 0 {
		fe.add("metadata.ownerReferences", unsupported)
	}
	if len(m.Finalizers) > 0 {
		fe.add("metadata.finalizers", unsupported)
	}
}

func portProblem(p int32) string {
	if p < 1 || p > 65535 {
		return fmt.Sprintf("must be between 1 and 65535, got %d", p)
	}
	return ""
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
