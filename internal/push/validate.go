package push

import (
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/config"
	"trellis.dev/trellis/internal/meshname"
)

// maxSubscriptions bounds one WatchRequest so a broken proxy cannot make the
// control plane compile an unbounded snapshot.
const maxSubscriptions = 10000

// validLabel, validSubdomain and checkLabel are meshname's rules under the
// names this package's callers use.
func validLabel(s string) bool     { return meshname.IsLabel(s) }
func validSubdomain(s string) bool { return meshname.IsSubdomain(s) }

func checkLabel(field, s string) error {
	if err := meshname.CheckLabel(s); err != nil {
		return fmt.Errorf("%s: %v", field, err)
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
		if _, err := meshname.ParseQualified(s); err != nil {
			return nil, fmt.Errorf("subscriptions[%d]: %v", i, err)
		}
	}
	out := slices.Clone(subs)
	slices.Sort(out)
	return slices.Compact(out), nil
}
