package cli

import (
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

// TestExamplesApply applies every YAML file under examples/ to a fresh real
// control plane, and then every directory but demo/ (whose files are
// versions of one route) as a whole, as the docs suggest.
func TestExamplesApply(t *testing.T) {
	root := repoFile("examples")
	var files []string
	dirs := map[string]bool{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && filepath.Base(path) == "prometheus" {
			// Prometheus and Alertmanager configs, not resources:
			// telemetry's TestPrometheusExamples checks them.
			return filepath.SkipDir
		}
		if d.IsDir() && filepath.Base(path) == "xds" {
			// A gRPC xDS bootstrap, not a resource: xds's
			// TestExampleBootstrap checks it.
			return filepath.SkipDir
		}
		if ext := filepath.Ext(path); !d.IsDir() && (ext == ".yaml" || ext == ".yml" || ext == ".json") {
			files = append(files, path)
			dirs[filepath.Dir(path)] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 8 {
		t.Fatalf("only %d example files under %s: %v", len(files), root, files)
	}
	for _, f := range files {
		t.Run(strings.TrimPrefix(f, root+"/"), func(t *testing.T) {
			lc := startLiveControl(t)
			out := lc.must("", "apply", "-f", f)
			if n := strings.Count(out, " created"); n == 0 {
				t.Errorf("apply -f %s created nothing:\n%s", f, out)
			}
			// Applied again, nothing changes: the examples hold no field
			// the control plane rewrites.
			if again := lc.must("", "apply", "-f", f); strings.Contains(again, "configured") {
				t.Errorf("second apply of %s changed something:\n%s", f, again)
			}
		})
	}
	for dir := range dirs {
		if filepath.Base(dir) == "demo" {
			continue
		}
		lc := startLiveControl(t)
		lc.must("", "apply", "-f", dir)
	}
}
