package cli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
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
each error names the file, the document, the field and the reason. '-f -'
reads standard input. What the control plane sets itself
(metadata.creationTimestamp) may be applied back as 'trellis get -o yaml'
prints it: the stored value is kept.

With --wait, apply then waits until every connected proxy runs a config at or
past the new revision (proxies the change does not affect are there at once).
If one refuses its config, or --timeout passes first, it names the proxies
that did not get there and exits non-zero; the change stays applied.`,
		Example: `  trellis apply -f examples/demo/inventory-90-10.yaml
  trellis apply -f examples/routing/ --dry-run
  trellis get httproute inventory-split -o yaml | trellis apply -f -
  trellis apply -f route.yaml --wait --timeout 1m`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(files) == 0 {
				return fmt.Errorf("apply: -f FILE|DIR is required")
			}
			if err := checkWaitFlags(cmd, wait, dryRun, timeout); err != nil {
				return err
			}
			body, err := readApplyFiles(files, g.stdin)
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
	cmd.Flags().StringArrayVarP(&files, "filename", "f", nil, "file or directory of .yaml/.yml/.json files, or - for standard input (repeatable)")
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
// recursive), reads every file, and reads stdin for "-".
func readApplyFiles(paths []string, stdin io.Reader) ([]applyFile, error) {
	names, err := expandPaths("apply", paths)
	if err != nil {
		return nil, err
	}
	files := make([]applyFile, 0, len(names))
	for _, n := range names {
		data, err := readInput("apply", n, stdin)
		if err != nil {
			return nil, err
		}
		if n == "-" {
			n = stdinName
		}
		files = append(files, applyFile{Name: n, Content: string(data)})
	}
	return files, nil
}

// expandPaths lists the files of -f arguments: a file as is, "-" (stdin)
// as is, a directory's .yaml, .yml and .json files in name order.
func expandPaths(cmd string, paths []string) ([]string, error) {
	var names []string
	stdin := false
	for _, p := range paths {
		if p == "-" {
			if stdin {
				return nil, fmt.Errorf("%s: -f - given twice: standard input can be read once", cmd)
			}
			stdin = true
			names = append(names, p)
			continue
		}
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", cmd, err)
		}
		if !st.IsDir() {
			names = append(names, p)
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", cmd, err)
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
			return nil, fmt.Errorf("%s: directory %s has no .yaml, .yml or .json files", cmd, p)
		}
	}
	return names, nil
}

// readInput reads one -f file; "-" is stdin.
func readInput(cmd, name string, stdin io.Reader) ([]byte, error) {
	if name != "-" {
		data, err := os.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", cmd, err)
		}
		return data, nil
	}
	if stdin == nil {
		return nil, fmt.Errorf("%s: -f -: no standard input", cmd)
	}
	data, err := io.ReadAll(io.LimitReader(stdin, maxStdinBytes))
	if err != nil {
		return nil, fmt.Errorf("%s: read standard input: %w", cmd, err)
	}
	return data, nil
}

// maxStdinBytes bounds what -f - reads: the admin API refuses bigger
// bodies anyway.
const maxStdinBytes = 8 << 20

// stdinName names standard input in errors ("<stdin>: document 2 ...").
const stdinName = "<stdin>"
