package push

import (
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/config"
)

// maxSubscriptions bounds one WatchRequest so a broken proxy cannot make the
// control plane compile an unbounded snapshot.
const maxSubscriptions = 10000

// validLabel reports whether s is a DNS-1123 label: lower-case alphanumerics
// and '-', starting and ending alphanumeric, at most 63 characters.
func validLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i > 0 && i < len(s)-1:
		default:
			return false
		}
	}
	return true
}

// validSubdomain reports whether s is a DNS-1123 subdomain (what Kubernetes
// allows for service account names).
func validSubdomain(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for l := range strings.SplitSeq(s, ".") {
		if !validLabel(l) {
			return false
		}
	}
	return true
}

func checkLabel(field, s string) error {
	if s == "" {
		return fmt.Errorf("%s: required", field)
	}
	if !validLabel(s) {
		return fmt.Errorf("%s: %q is not a DNS label (lower-case letters, digits and '-', at most 63)", field, s)
	}
	return nil
}

func checkHostPort(field, s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%s: %q is not host:port: %v", field, s, err)
	}
	if host == "" {
		return fmt.Errorf("%s: %q has no host", field, s)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%s: %q: port must be 1-65535", field, s)
	}
	return nil
}

// validateEndpoint checks what the proxy sends in Register; identity and
// healthy are the server's to judge, not checked here.
func validateEndpoint(ep *meshv1.Endpoint) error {
	if ep == nil {
		return fmt.Errorf("endpoint: required")
	}
	if ep.GetId() == "" {
		return fmt.Errorf("endpoint.id: required")
	}
	if len(ep.GetId()) > 253 {
		return fmt.Errorf("endpoint.id: longer than 253 characters")
	}
	if err := checkLabel("endpoint.service", ep.GetService()); err != nil {
		return err
	}
	if err := checkLabel("endpoint.namespace", ep.GetNamespace()); err != nil {
		return err
	}
	if err := checkHostPort("endpoint.address", ep.GetAddress()); err != nil {
		return err
	}
	if a := ep.GetAdminAddress(); a != "" {
		if err := checkHostPort("endpoint.admin_address", a); err != nil {
			return err
		}
	}
	labels := ep.GetLabels()
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		if p := config.LabelProblem(k, labels[k]); p != "" {
			return fmt.Errorf("endpoint.labels[%s]: %s", k, p)
		}
	}
	return nil
}

// normalizeSubscriptions validates subs ("name.namespace") and returns them
// sorted and deduplicated.
func normalizeSubscriptions(subs []string) ([]string, error) {
	if len(subs) > maxSubscriptions {
		return nil, fmt.Errorf("subscriptions: %d entries, at most %d", len(subs), maxSubscriptions)
	}
	for i, s := range subs {
		name, ns, ok := strings.Cut(s, ".")
		if !ok || !validLabel(name) || !validLabel(ns) {
			return nil, fmt.Errorf("subscriptions[%d]: %q is not name.namespace", i, s)
		}
	}
	out := slices.Clone(subs)
	slices.Sort(out)
	return slices.Compact(out), nil
}
