package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"
)

type applyFile struct {
	Name    string `json:"name"`
	Content string `json:"content"`
}

func newApplyCmd(g *globals) *cobra.Command {
	var files []string
	var dryRun, wait bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "apply -f FILE|DIR [-f ...]",
		Short: "Create or update resources from YAML or JSON files",
		Long: `Apply validates every resource in the given files and directories and
writes them all in one atomic step. If anything is invalid, nothing changes and
each error names the file, the document, the field and the reason.

With --wait, apply then waits until every connected proxy runs a config at or
past the new revision (proxies the change does not affect are there at once).
If one refuses its config, or --timeout passes first, it names the proxies
that did not get there and exits non-zero; the change stays applied.`,
		Example: `  trellis apply -f examples/demo/inventory-90-10.yaml
  trellis apply -f ./mesh/ --dry-run
  trellis apply -f route.yaml --wait --timeout 1m`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(files) == 0 {
				return fmt.Errorf("apply: -f FILE|DIR is required")
			}
			if err := checkWaitFlags(cmd, wait, dryRun, timeout); err != nil {
				return err
			}
			body, err := readApplyFiles(files)
			if err != nil {
				return err
			}
			c, err := newAdminClient(g.dataDir)
			if err != nil {
				return err
			}
			var out struct {
				Revision int64 `json:"revision"`
				Results  []struct {
					Ref    string `json:"ref"`
					Action string `json:"action"`
				} `json:"results"`
			}
			req := map[string]any{"files": body, "dryRun": dryRun}
			if err := c.do(cmd.Context(), "POST", "/v1/apply", req, &out); err != nil {
				return fmt.Errorf("apply refused, nothing changed: %w", err)
			}
			suffix := ""
			if dryRun {
				suffix = " (dry run)"
			}
			for _, r := range out.Results {
				fmt.Fprintf(g.stdout, "%s %s%s\n", r.Ref, r.Action, suffix)
			}
			if !wait {
				return nil
			}
			return waitForRevision(cmd.Context(), c, g.stdout, out.Revision, timeout)
		},
	}
	cmd.Flags().StringArrayVarP(&files, "filename", "f", nil, "file or directory of .yaml/.yml/.json files (repeatable)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "validate only; change nothing")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until every connected proxy runs the applied revision")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "how long --wait waits")
	return cmd
}

func checkWaitFlags(cmd *cobra.Command, wait, dryRun bool, timeout time.Duration) error {
	switch {
	case wait && dryRun:
		return fmt.Errorf("apply: --wait cannot be used with --dry-run: a dry run changes nothing, so no proxy gets a new config to wait for")
	case !wait && cmd.Flags().Changed("timeout"):
		return fmt.Errorf("apply: --timeout only applies with --wait")
	case timeout <= 0:
		return fmt.Errorf("apply: --timeout %s: want a positive duration such as 30s", timeout)
	}
	return nil
}

// readApplyFiles expands directories (their .yaml, .yml and .json files, not
// recursive) and reads every file.
func readApplyFiles(paths []string) ([]applyFile, error) {
	var names []string
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("apply: %w", err)
		}
		if !st.IsDir() {
			names = append(names, p)
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			return nil, fmt.Errorf("apply: %w", err)
		}
		n := len(names)
		for _, e := range entries {
			switch strings.ToLower(filepath.Ext(e.Name())) {
			case ".yaml", ".yml", ".json":
				if !e.IsDir() {
					names = append(names, filepath.Join(p, e.Name()))
				}
			}
		}
		if len(names) == n {
			return nil, fmt.Errorf("apply: directory %s has no .yaml, .yml or .json files", p)
		}
	}
	files := make([]applyFile, 0, len(names))
	for _, n := range names {
		data, err := os.ReadFile(n)
		if err != nil {
			return nil, fmt.Errorf("apply: %w", err)
		}
		files = append(files, applyFile{Name: n, Content: string(data)})
	}
	return files, nil
}

func newGetCmd(g *globals) *cobra.Command {
	var namespace, output string
	cmd := &cobra.Command{
		Use:   "get KIND [NAME]",
		Short: "Show resources (services, httproutes)",
		Example: `  trellis get httproutes
  trellis get httproute inventory-split -o yaml`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch output {
			case "table", "yaml", "json":
			default:
				return fmt.Errorf("get: -o %q: want table, yaml or json", output)
			}
			if err := checkResourceRef("get", namespace, args[1:]...); err != nil {
				return err
			}
			c, err := newAdminClient(g.dataDir)
			if err != nil {
				return err
			}
			path := "/v1/resources/" + url.PathEscape(args[0])
			if len(args) == 2 {
				path += "/" + url.PathEscape(namespace) + "/" + url.PathEscape(args[1])
			}
			var raw json.RawMessage
			if err := c.do(cmd.Context(), "GET", path, nil, &raw); err != nil {
				return fmt.Errorf("get: %w", err)
			}
			items, err := resourceItems(raw)
			if err != nil {
				return fmt.Errorf("get: %w", err)
			}
			if len(args) == 1 && namespace != "" && cmd.Flags().Changed("namespace") {
				items = filterNamespace(items, namespace)
			}
			return printResources(g.stdout, output, items, len(args) == 2)
		},
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "default", "namespace")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table, yaml or json")
	return cmd
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

func filterNamespace(items []map[string]any, ns string) []map[string]any {
	var out []map[string]any
	for _, it := range items {
		if metaField(it, "namespace") == ns {
			out = append(out, it)
		}
	}
	return out
}

func metaField(obj map[string]any, field string) string {
	meta, _ := obj["metadata"].(map[string]any)
	s, _ := meta[field].(string)
	return s
}

func printResources(w io.Writer, format string, items []map[string]any, single bool) error {
	switch format {
	case "json":
		var v any = items
		if single && len(items) == 1 {
			v = items[0]
		}
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	case "yaml":
		for i, it := range items {
			b, err := yaml.Marshal(it)
			if err != nil {
				return err
			}
			if i > 0 {
				fmt.Fprintln(w, "---")
			}
			w.Write(b)
		}
		return nil
	}
	if len(items) == 0 {
		fmt.Fprintln(w, "No resources found.")
		return nil
	}
	sort.Slice(items, func(i, j int) bool {
		a, b := items[i], items[j]
		if metaField(a, "namespace") != metaField(b, "namespace") {
			return metaField(a, "namespace") < metaField(b, "namespace")
		}
		return metaField(a, "name") < metaField(b, "name")
	})
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "KIND\tNAMESPACE\tNAME\tSUMMARY")
	for _, it := range items {
		kind, _ := it["kind"].(string)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", kind, metaField(it, "namespace"), metaField(it, "name"), summarize(it))
	}
	return tw.Flush()
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
	}
	return ""
}

func newDeleteCmd(g *globals) *cobra.Command {
	var namespace string
	cmd := &cobra.Command{
		Use:     "delete KIND NAME",
		Short:   "Delete a resource",
		Example: `  trellis delete httproute inventory-split`,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkResourceRef("delete", namespace, args[1]); err != nil {
				return err
			}
			c, err := newAdminClient(g.dataDir)
			if err != nil {
				return err
			}
			path := "/v1/resources/" + url.PathEscape(args[0]) + "/" + url.PathEscape(namespace) + "/" + url.PathEscape(args[1])
			if err := c.do(cmd.Context(), "DELETE", path, nil, nil); err != nil {
				if isNotFound(err) {
					return fmt.Errorf("delete: %s %s/%s not found", args[0], namespace, args[1])
				}
				return fmt.Errorf("delete: %w", err)
			}
			fmt.Fprintf(g.stdout, "%s %s/%s deleted\n", args[0], namespace, args[1])
			return nil
		},
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "default", "namespace")
	return cmd
}
