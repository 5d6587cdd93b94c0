package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"trellis.dev/trellis/internal/control"
)

// liveControl is a real control plane on loopback ports, in process, and
// the CLI run against its data dir.
type liveControl struct {
	t   *testing.T
	dir string
}

func startLiveControl(t *testing.T) *liveControl {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	c, err := control.Start(ctx, control.Options{DataDir: dir, GRPCAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0"})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		c.Stop()
	})
	return &liveControl{t: t, dir: dir}
}

// run runs the CLI with stdin; it returns the exit code, stdout and stderr.
func (lc *liveControl) run(stdin string, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(append([]string{"--data-dir", lc.dir}, args...), strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

// must runs the CLI and fails the test on a non-zero exit.
func (lc *liveControl) must(stdin string, args ...string) string {
	lc.t.Helper()
	code, out, errOut := lc.run(stdin, args...)
	if code != 0 {
		lc.t.Fatalf("trellis %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// repoFile is a path from the repository root.
func repoFile(parts ...string) string {
	return filepath.Join(append([]string{"..", ".."}, parts...)...)
}

// TestRoundTrips: what get prints applies back unchanged (server-set
// creationTimestamp included), from stdin, as YAML and as JSON, one
// resource or a list.
func TestRoundTrips(t *testing.T) {
	lc := startLiveControl(t)
	lc.must("", "apply", "-f", repoFile("examples", "demo", "shop.yaml"))

	one := lc.must("", "get", "hr", "inventory-split", "-o", "yaml")
	if !strings.Contains(one, "creationTimestamp:") {
		t.Fatalf("get -o yaml shows no creationTimestamp:\n%s", one)
	}
	for _, tc := range []struct{ name, in string }{
		{"one as yaml", one},
		{"list as yaml", lc.must("", "get", "svc", "-o", "yaml")},
		{"one as json", lc.must("", "get", "service", "orders", "-o", "json")},
		{"list as json", lc.must("", "get", "httproutes", "-A", "-o", "json")},
	} {
		out := lc.must(tc.in, "apply", "-f", "-")
		if strings.Contains(out, "configured") || strings.Contains(out, "created") || !strings.Contains(out, "unchanged") {
			t.Errorf("%s: get | apply -f - changed something:\n%s", tc.name, out)
		}
	}
	// An edited copy applies as a change and keeps the creation time.
	edited := strings.Replace(one, "weight: 50", "weight: 70", 1)
	if out := lc.must(edited, "apply", "-f", "-"); !strings.Contains(out, "HTTPRoute default/inventory-split configured") {
		t.Errorf("edited route: %s", out)
	}
	after := lc.must("", "get", "hr", "inventory-split", "-o", "yaml")
	if creation(t, after) != creation(t, one) {
		t.Errorf("creationTimestamp moved: %s then %s", creation(t, one), creation(t, after))
	}
	// Errors from stdin name it.
	code, _, errOut := lc.run("kind: Nope\n", "apply", "-f", "-")
	if code == 0 || !strings.Contains(errOut, "<stdin>: document 1") {
		t.Errorf("bad stdin: exit %d, %s", code, errOut)
	}
}

func creation(t *testing.T, doc string) string {
	t.Helper()
	for _, l := range strings.Split(doc, "\n") {
		if strings.Contains(l, "creationTimestamp:") {
			return strings.TrimSpace(l)
		}
	}
	t.Fatalf("no creationTimestamp in\n%s", doc)
	return ""
}

// TestKubectlHabits: short names, -n/-A, get without a kind, delete
// checking the kind, delete -f, --version, completion.
func TestKubectlHabits(t *testing.T) {
	lc := startLiveControl(t)
	lc.must("", "apply", "-f", repoFile("examples", "demo", "shop.yaml"))
	other := "apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata: {name: ledger, namespace: shop}\nspec: {ports: [{port: 80}]}\n"
	lc.must(other, "apply", "-f", "-")

	// Column widths follow the longest kind name: compare words.
	if out := lc.must("", "get"); !strings.Contains(strings.Join(strings.Fields(out), " "), "httproutes hr") || !strings.Contains(strings.Join(strings.Fields(out), " "), "services svc") {
		t.Errorf("get without a kind:\n%s", out)
	}
	def := lc.must("", "get", "svc")
	if !strings.Contains(def, "orders") || strings.Contains(def, "ledger") {
		t.Errorf("get svc lists the default namespace only:\n%s", def)
	}
	if out := lc.must("", "get", "svc", "-n", "shop"); !strings.Contains(out, "ledger") || strings.Contains(out, "orders") {
		t.Errorf("get svc -n shop:\n%s", out)
	}
	if out := lc.must("", "get", "services", "--all-namespaces"); !strings.Contains(out, "ledger") || !strings.Contains(out, "orders") {
		t.Errorf("get services -A:\n%s", out)
	}
	if out := lc.must("", "get", "svc", "-n", "empty"); out != "No resources found in namespace empty.\n" {
		t.Errorf("empty namespace: %q", out)
	}
	if out := lc.must("", "get", "svc", "orders", "-o", "wide"); !strings.Contains(out, "CREATED") {
		t.Errorf("get -o wide:\n%s", out)
	}

	code, _, errOut := lc.run("", "delete", "foo", "nope")
	if code == 0 || !strings.Contains(errOut, `unknown kind "foo"`) {
		t.Errorf("delete foo nope: exit %d, %s", code, errOut)
	}
	code, _, errOut = lc.run("", "delete", "hr", "nope")
	if code == 0 || !strings.Contains(errOut, "delete: HTTPRoute default/nope not found") {
		t.Errorf("delete hr nope: exit %d, %s", code, errOut)
	}
	code, _, errOut = lc.run("", "get", "hr", "nope")
	if code == 0 || !strings.Contains(errOut, "get: HTTPRoute default/nope not found") {
		t.Errorf("get hr nope: exit %d, %s", code, errOut)
	}

	// delete -f deletes routes before the services they attach to.
	out := lc.must("", "delete", "-f", repoFile("examples", "demo", "shop.yaml"))
	if !strings.HasPrefix(out, "RateLimitPolicy default/") || strings.Count(out, "deleted") != 10 || strings.Index(out, "HTTPRoute default/inventory-split deleted") > strings.Index(out, "Service ") {
		t.Errorf("delete -f shop.yaml:\n%s", out)
	}
	code, out, errOut = lc.run(other, "delete", "-f", "-", "-f", repoFile("examples", "demo", "inventory-90-10.yaml"))
	if code == 0 || !strings.Contains(out, "Service shop/ledger deleted") || !strings.Contains(errOut, "HTTPRoute default/inventory-split not found") {
		t.Errorf("delete -f with one missing: exit %d\n%s\n%s", code, out, errOut)
	}
	lc.must("", "delete", "-f", repoFile("examples", "demo", "inventory-90-10.yaml"), "--ignore-not-found")

	if v, vc := lc.must("", "--version"), lc.must("", "version"); v != vc || !strings.HasPrefix(v, "trellis ") {
		t.Errorf("--version %q, version %q", v, vc)
	}
	for _, sh := range []string{"bash", "zsh", "fish"} {
		if out := lc.must("", "completion", sh); !strings.Contains(out, "trellis") {
			t.Errorf("completion %s printed nothing useful", sh)
		}
	}
	if out := lc.must("", "__complete", "get", ""); !strings.Contains(out, "svc") || !strings.Contains(out, "httproutes") {
		t.Errorf("completion of get's kind:\n%s", out)
	}
}

// TestApplyDirectoryNamesClashingFiles: examples/demo holds three versions
// of one route; applying the directory names the files that clash.
func TestApplyDirectoryNamesClashingFiles(t *testing.T) {
	lc := startLiveControl(t)
	code, _, errOut := lc.run("", "apply", "-f", repoFile("examples", "demo"))
	dir := repoFile("examples", "demo")
	for _, want := range []string{
		filepath.Join(dir, "inventory-v2-only.yaml") + ": HTTPRoute default/inventory-split: defined more than once: also in " + filepath.Join(dir, "inventory-90-10.yaml"),
		filepath.Join(dir, "shop.yaml") + ": HTTPRoute default/inventory-split: defined more than once: also in " + filepath.Join(dir, "inventory-90-10.yaml"),
	} {
		if code == 0 || !strings.Contains(errOut, want) {
			t.Errorf("exit %d; stderr lacks %q:\n%s", code, want, errOut)
		}
	}
	if strings.Contains(errOut, "items") {
		t.Errorf("error numbers items of the set:\n%s", errOut)
	}
}

// TestProxyStatusJSONNames: -o json and -o yaml use lowerCamelCase names.
func TestProxyStatusJSONNames(t *testing.T) {
	lc := startLiveControl(t)
	if out := lc.must("", "proxy-status", "-o", "json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("no proxies: %q", out)
	}
	if out := lc.must("", "proxy-status", "-o", "yaml"); strings.TrimSpace(out) != "[]" {
		t.Errorf("no proxies (yaml): %q", out)
	}
}

// TestProxyStatusFieldNames pins the admin API's JSON names of a proxy.
func TestProxyStatusFieldNames(t *testing.T) {
	var buf bytes.Buffer
	list := proxyFixture(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	if err := printValue(&buf, "json", list); err != nil {
		t.Fatal(err)
	}
	golden(t, "proxy-status-json", buf.Bytes())
	var back []map[string]any
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	for k := range back[0] {
		if k[0] < 'a' || k[0] > 'z' || strings.Contains(k, "_") {
			t.Errorf("field %q is not lowerCamelCase", k)
		}
	}
	buf.Reset()
	if err := printValue(&buf, "yaml", list); err != nil {
		t.Fatal(err)
	}
	golden(t, "proxy-status-yaml", buf.Bytes())
}
