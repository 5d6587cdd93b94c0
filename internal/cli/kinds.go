package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

// kindName is how the CLI names a resource kind: the kind, its plural and
// the short names kubectl users type (svc, hr).
type kindName struct {
	Kind       string
	APIVersion string
	Plural     string
	Short      []string
}

// kindNames lists every kind the control plane accepts; a test keeps it in
// step with config.Kinds().
func kindNames() []kindName {
	return []kindName{
		{Kind: "AuthorizationPolicy", APIVersion: "trellis.dev/v1alpha1", Plural: "authorizationpolicies", Short: []string{"ap"}},
		{Kind: "BackendPolicy", APIVersion: "trellis.dev/v1alpha1", Plural: "backendpolicies", Short: []string{"bp"}},
		{Kind: "ConcurrencyPolicy", APIVersion: "trellis.dev/v1alpha1", Plural: "concurrencypolicies", Short: []string{"cp"}},
		{Kind: "ExternalService", APIVersion: "trellis.dev/v1alpha1", Plural: "externalservices", Short: []string{"es"}},
		{Kind: "FaultInjection", APIVersion: "trellis.dev/v1alpha1", Plural: "faultinjections", Short: []string{"fi"}},
		{Kind: "GRPCRoute", APIVersion: "gateway.networking.k8s.io/v1", Plural: "grpcroutes", Short: []string{"gr"}},
		{Kind: "HTTPRoute", APIVersion: "gateway.networking.k8s.io/v1", Plural: "httproutes", Short: []string{"hr"}},
		{Kind: "MeshConfig", APIVersion: "trellis.dev/v1alpha1", Plural: "meshconfigs", Short: []string{"mc"}},
		{Kind: "RateLimitPolicy", APIVersion: "trellis.dev/v1alpha1", Plural: "ratelimitpolicies", Short: []string{"rlp"}},
		{Kind: "Service", APIVersion: "trellis.dev/v1alpha1", Plural: "services", Short: []string{"svc"}},
		{Kind: "Telemetry", APIVersion: "trellis.dev/v1alpha1", Plural: "telemetries", Short: []string{"tel"}},
	}
}

// resolveKind maps what a user types ("svc", "services", "HTTPRoute",
// "hr") to a kind, case-insensitively, or says which kinds there are.
func resolveKind(s string) (kindName, error) {
	l := strings.ToLower(s)
	for _, k := range kindNames() {
		if l == strings.ToLower(k.Kind) || l == k.Plural {
			return k, nil
		}
		for _, sh := range k.Short {
			if l == sh {
				return k, nil
			}
		}
	}
	var known []string
	for _, k := range kindNames() {
		known = append(known, fmt.Sprintf("%s (%s)", k.Plural, strings.Join(k.Short, ", ")))
	}
	return kindName{}, fmt.Errorf("unknown kind %q: known kinds are %s; 'trellis get' lists them", s, strings.Join(known, ", "))
}

// printKinds is `trellis get` without a kind, as `kubectl api-resources`.
func printKinds(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSHORTNAMES\tAPIVERSION\tNAMESPACED\tKIND")
	for _, k := range kindNames() {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%t\t%s\n", k.Plural, strings.Join(k.Short, ","), k.APIVersion, true, k.Kind)
	}
	return tw.Flush()
}

// completeKinds completes a command's first argument with the kinds' plural
// and short names.
func completeKinds(_ *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []string
	for _, k := range kindNames() {
		out = append(out, k.Plural+"\t"+k.Kind)
		for _, s := range k.Short {
			out = append(out, s+"\t"+k.Kind)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}
