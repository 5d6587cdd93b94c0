package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
)

// endpointNames are the names `trellis get` takes for the registry's
// endpoints (not a resource kind: proxies register them, nobody applies them).
var endpointNames = map[string]bool{"endpoints": true, "endpoint": true, "ep": true}

// registeredEndpoint is what `get endpoints` reads of /v1/endpoints.
type registeredEndpoint struct {
	ID           string            `json:"id"`
	Service      string            `json:"service"`
	Namespace    string            `json:"namespace"`
	Address      string            `json:"address"`
	Labels       map[string]string `json:"labels"`
	Identity     string            `json:"identity"`
	AdminAddress string            `json:"adminAddress"`
	Healthy      bool              `json:"healthy"`
	HealthReason string            `json:"healthReason"`
}

// getEndpoints is `trellis get endpoints [SERVICE]`: the registered
// endpoints of a namespace (or all, -A) with their health.
func getEndpoints(ctx context.Context, w io.Writer, c *adminClient, namespace string, all bool, output string, service []string) error {
	var raw []json.RawMessage
	if err := c.do(ctx, "GET", "/v1/endpoints", nil, &raw); err != nil {
		return fmt.Errorf("get: endpoints: %w", err)
	}
	var eps []registeredEndpoint
	var keep []json.RawMessage
	for _, r := range raw {
		var ep registeredEndpoint
		if err := json.Unmarshal(r, &ep); err != nil {
			return fmt.Errorf("get: endpoints: decode: %w", err)
		}
		if (!all && ep.Namespace != namespace) || (len(service) == 1 && ep.Service != service[0]) {
			continue
		}
		eps = append(eps, ep)
		keep = append(keep, r)
	}
	switch output {
	case "json", "yaml":
		if keep == nil {
			keep = []json.RawMessage{}
		}
		return printValue(w, output, keep)
	}
	if len(eps) == 0 {
		if all {
			fmt.Fprintln(w, "No endpoints registered.")
		} else {
			fmt.Fprintf(w, "No endpoints found in namespace %s.\n", namespace)
		}
		return nil
	}
	return printEndpoints(w, eps, all, output == "wide")
}

// printEndpoints prints the endpoint table: STATE is HEALTHY or
// UNHEALTHY (out of discovery), REASON why; -o wide adds labels, identity
// and the proxy's admin address.
func printEndpoints(w io.Writer, eps []registeredEndpoint, all, wide bool) error {
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	header := "SERVICE\tENDPOINT\tADDRESS\tSTATE\tREASON"
	if all {
		header = "NAMESPACE\t" + header
	}
	if wide {
		header += "\tLABELS\tIDENTITY\tADMIN"
	}
	fmt.Fprintln(tw, header)
	for _, ep := range eps {
		if all {
			fmt.Fprintf(tw, "%s\t", ep.Namespace)
		}
		state, reason := "HEALTHY", "-"
		if !ep.Healthy {
			state, reason = "UNHEALTHY", orDash(ep.HealthReason)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s", ep.Service, ep.ID, ep.Address, state, reason)
		if wide {
			fmt.Fprintf(tw, "\t%s\t%s\t%s", labelText(ep.Labels), orDash(ep.Identity), orDash(ep.AdminAddress))
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}
