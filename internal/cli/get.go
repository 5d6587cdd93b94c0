package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"
)

func newGetCmd(g *globals) *cobra.Command {
	var namespace, output string
	var all bool
	cmd := &cobra.Command{
		Use:   "get [KIND [NAME]]",
		Short: "Show resources (services/svc, httproutes/hr); without a kind, list the kinds",
		Long: `Show resources of one kind in a namespace (-n, default "default") or in
all namespaces (-A), or one resource by name. Without a kind, list the kinds
and their short names.

-o yaml and -o json print what the control plane stores, in a form that
'trellis apply -f' takes back unchanged.

'get concurrencypolicy NAME' also lists the proxies of the Services it
targets with the limit and shed count each last reported.

'get endpoints [SERVICE]' (or ep) lists the endpoints proxies registered,
with STATE (HEALTHY, or UNHEALTHY: out of discovery while its app fails its
health check) and REASON ("connect refused", "HTTP 503", ...).`,
		Example: `  trellis get
  trellis get httproutes -A
  trellis get svc orders -o yaml
  trellis get httproute inventory-split -o yaml | trellis apply -f -
  trellis get endpoints -A`,
		Args:              cobra.MaximumNArgs(2),
		ValidArgsFunction: completeKinds,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput("get", output, "table", "wide", "yaml", "json"); err != nil {
				return err
			}
			if len(args) == 0 {
				return printKinds(g.stdout)
			}
			if endpointNames[args[0]] {
				return runGetEndpoints(cmd, g, namespace, all, output, args[1:])
			}
			kind, err := resolveKind(args[0])
			if err != nil {
				return fmt.Errorf("get: %w", err)
			}
			if all && len(args) == 2 {
				return fmt.Errorf("get: -A/--all-namespaces lists a kind; a name needs one namespace (-n)")
			}
			if err := checkResourceRef("get", namespace, args[1:]...); err != nil {
				return err
			}
			c, err := newAdminClient(g.dataDir)
			if err != nil {
				return err
			}
			path := "/v1/resources/" + url.PathEscape(kind.Plural)
			switch {
			case len(args) == 2:
				path += "/" + url.PathEscape(namespace) + "/" + url.PathEscape(args[1])
			case !all:
				path += "?namespace=" + url.QueryEscape(namespace)
			}
			var raw json.RawMessage
			if err := c.do(cmd.Context(), "GET", path, nil, &raw); err != nil {
				if isNotFound(err) && len(args) == 2 {
					return fmt.Errorf("get: %s %s/%s not found", kind.Kind, namespace, args[1])
				}
				return fmt.Errorf("get: %w", err)
			}
			items, err := resourceItems(raw)
			if err != nil {
				return fmt.Errorf("get: %w", err)
			}
			if len(args) == 1 && !all && len(items) == 0 && output != "json" && output != "yaml" {
				fmt.Fprintf(g.stdout, "No resources found in namespace %s.\n", namespace)
				return nil
			}
			if err := printResources(g.stdout, output, items, len(args) == 2); err != nil {
				return err
			}
			if kind.Kind == "ConcurrencyPolicy" && len(args) == 2 && len(items) == 1 && (output == "table" || output == "wide") {
				list, err := proxyList(cmd.Context(), c)
				if err != nil {
					return fmt.Errorf("get: proxies: %w", err)
				}
				return printConcurrencyStatus(g.stdout, items[0], list)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "default", "namespace")
	cmd.Flags().BoolVarP(&all, "all-namespaces", "A", false, "list the kind in every namespace")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table, wide, yaml or json")
	return cmd
}

// runGetEndpoints is 'get endpoints [SERVICE]'.
func runGetEndpoints(cmd *cobra.Command, g *globals, namespace string, all bool, output string, service []string) error {
	if all && len(service) == 1 {
		return fmt.Errorf("get: -A/--all-namespaces lists every endpoint; a service needs one namespace (-n)")
	}
	c, err := newAdminClient(g.dataDir)
	if err != nil {
		return err
	}
	return getEndpoints(cmd.Context(), g.stdout, c, namespace, all, output, service)
}

// checkOutput refuses an -o value the command cannot print.
func checkOutput(cmd, got string, want ...string) error {
	for _, w := range want {
		if got == w {
			return nil
		}
	}
	last := len(want) - 1
	return fmt.Errorf("%s: -o %q: want %s or %s", cmd, got, strings.Join(want[:last], ", "), want[last])
}

// resourceItems accepts the admin API's answer: one object, a JSON array,
// or an object with "items".
func resourceItems(raw json.RawMessage) ([]map[string]any, error) {
	var list []map[string]any
	if err := json.Unmarshal(raw, &list); err == nil {
		return list, nil
	}
	var obj map[string]any
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, fmt.Errorf("decode answer: %w", err)
	}
	if items, ok := obj["items"].([]any); ok {
		for _, it := range items {
			if m, ok := it.(map[string]any); ok {
				list = append(list, m)
			}
		}
		return list, nil
	}
	return []map[string]any{obj}, nil
}

func metaField(obj map[string]any, field string) string {
	meta, _ := obj["metadata"].(map[string]any)
	s, _ := meta[field].(string)
	return s
}

// printValue prints v as indented JSON or as YAML.
func printValue(w io.Writer, format string, v any) error {
	var b []byte
	var err error
	if format == "json" {
		b, err = json.MarshalIndent(v, "", "  ")
		b = append(b, '\n')
	} else {
		b, err = yaml.Marshal(v)
	}
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// printResources prints resources; yaml and json are what apply -f takes
// back: YAML documents separated by "---", a JSON object or array.
func printResources(w io.Writer, format string, items []map[string]any, single bool) error {
	sortResources(items)
	switch format {
	case "json":
		if single && len(items) == 1 {
			return printValue(w, format, items[0])
		}
		if items == nil {
			items = []map[string]any{}
		}
		return printValue(w, format, items)
	case "yaml":
		for i, it := range items {
			if i > 0 {
				fmt.Fprintln(w, "---")
			}
			if err := printValue(w, format, it); err != nil {
				return err
			}
		}
		return nil
	}
	if len(items) == 0 {
		fmt.Fprintln(w, "No resources found.")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	header := "KIND\tNAMESPACE\tNAME\tSUMMARY"
	if format == "wide" {
		header += "\tCREATED\tLABELS"
	}
	fmt.Fprintln(tw, header)
	for _, it := range items {
		kind, _ := it["kind"].(string)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s", kind, metaField(it, "namespace"), metaField(it, "name"), summarize(it))
		if format == "wide" {
			meta, _ := it["metadata"].(map[string]any)
			labels, _ := meta["labels"].(map[string]any)
			fmt.Fprintf(tw, "\t%s\t%s", orDash(metaField(it, "creationTimestamp")), labelText(labels))
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

func sortResources(items []map[string]any) {
	sort.SliceStable(items, func(i, j int) bool {
		a, b := items[i], items[j]
		for _, k := range []string{"namespace", "name"} {
			if x, y := metaField(a, k), metaField(b, k); x != y {
				return x < y
			}
		}
		x, _ := a["kind"].(string)
		y, _ := b["kind"].(string)
		return x < y
	})
}

// labelText renders labels as k=v,k=v in key order; "-" for none.
func labelText[V any](labels map[string]V) string {
	if len(labels) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%v", k, labels[k])
	}
	return strings.Join(parts, ",")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// summarize gives a one-line view of a resource's spec for the table.
func summarize(obj map[string]any) string {
	spec, _ := obj["spec"].(map[string]any)
	switch obj["kind"] {
	case "Service":
		var ports []string
		list, _ := spec["ports"].([]any)
		for _, p := range list {
			pm, _ := p.(map[string]any)
			ports = append(ports, fmt.Sprintf("%v/%v", pm["port"], pm["protocol"]))
		}
		return "ports " + strings.Join(ports, ",")
	case "HTTPRoute":
		var parents, backends []string
		prs, _ := spec["parentRefs"].([]any)
		for _, p := range prs {
			pm, _ := p.(map[string]any)
			parents = append(parents, fmt.Sprint(pm["name"]))
		}
		rules, _ := spec["rules"].([]any)
		for _, r := range rules {
			rm, _ := r.(map[string]any)
			brs, _ := rm["backendRefs"].([]any)
			for _, b := range brs {
				bm, _ := b.(map[string]any)
				w := bm["weight"]
				if w == nil {
					w = 1
				}
				backends = append(backends, fmt.Sprintf("%v=%v", bm["name"], w))
			}
		}
		return fmt.Sprintf("parents %s → %s", strings.Join(parents, ","), strings.Join(backends, ","))
	case "BackendPolicy":
		return summarizeBackendPolicy(spec)
	case "ConcurrencyPolicy":
		return summarizeConcurrencyPolicy(spec)
	}
	return ""
}

// summarizeBackendPolicy names the targeted Services and the sections set:
// "targets inventory: loadBalancer=maglev retry outlierDetection".
func summarizeBackendPolicy(spec map[string]any) string {
	var targets, parts []string
	trs, _ := spec["targetRefs"].([]any)
	for _, t := range trs {
		tm, _ := t.(map[string]any)
		targets = append(targets, fmt.Sprint(tm["name"]))
	}
	if lb, ok := spec["loadBalancer"].(map[string]any); ok {
		parts = append(parts, fmt.Sprintf("loadBalancer=%v", lb["type"]))
	}
	for _, s := range []string{"retry", "circuitBreaker", "outlierDetection"} {
		if spec[s] != nil {
			parts = append(parts, s)
		}
	}
	return "targets " + strings.Join(targets, ",") + ": " + strings.Join(parts, " ")
}
