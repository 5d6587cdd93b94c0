package cli

import (
	"fmt"

	"trellis.dev/trellis/internal/meshname"
)

// checkResourceRef refuses, before any request is sent, a namespace or
// resource name the control plane could never hold, with the rule it breaks
// (the admin API would only answer "not found").
func checkResourceRef(cmd, namespace string, names ...string) error {
	if err := meshname.CheckLabel(namespace); err != nil {
		return fmt.Errorf("%s: --namespace: %w", cmd, err)
	}
	for _, n := range names {
		if err := meshname.CheckLabel(n); err != nil {
			return fmt.Errorf("%s: name: %w", cmd, err)
		}
	}
	return nil
}
