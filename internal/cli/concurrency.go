package cli

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"trellis.dev/trellis/internal/push"
)

// `trellis get concurrencypolicy NAME` follows the policy with what each
// proxy of a targeted Service last reported: its adaptive limit now and
// the requests it shed since it started.

// summarizeConcurrencyPolicy is the table's one line: "targets orders:
// limit 3..500".
func summarizeConcurrencyPolicy(spec map[string]any) string {
	a, _ := spec["adaptive"].(map[string]any)
	return "targets " + strings.Join(policyTargets(spec), ",") + fmt.Sprintf(": limit %v..%v", a["minLimit"], a["maxLimit"])
}

func policyTargets(spec map[string]any) []string {
	var targets []string
	trs, _ := spec["targetRefs"].([]any)
	for _, t := range trs {
		tm, _ := t.(map[string]any)
		targets = append(targets, fmt.Sprint(tm["name"]))
	}
	return targets
}

// printConcurrencyStatus lists the proxies of the Services policy targets
// with their reported limit and shed count.
func printConcurrencyStatus(w io.Writer, policy map[string]any, list []push.ProxyStatus) error {
	spec, _ := policy["spec"].(map[string]any)
	ns := metaField(policy, "namespace")
	targets := policyTargets(spec)
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	n := 0
	for _, p := range list {
		if p.Namespace != ns || !slices.Contains(targets, p.Service) {
			continue
		}
		if n == 0 {
			fmt.Fprintln(tw, "\nPROXY\tSERVICE\tLIMIT\tSHED")
		}
		n++
		limit := "-" // a proxy that has not applied the policy (yet)
		if p.ConcurrencyLimit > 0 {
			limit = fmt.Sprint(p.ConcurrencyLimit)
		}
		fmt.Fprintf(tw, "%s\t%s.%s\t%s\t%d\n", p.NodeID, p.Service, p.Namespace, limit, p.ConcurrencyShed)
	}
	if n == 0 {
		fmt.Fprintf(tw, "\nNo proxy of %s is connected.\n", strings.Join(targets, ", "))
	}
	return tw.Flush()
}
