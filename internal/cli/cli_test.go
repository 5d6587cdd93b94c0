package cli

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"trellis.dev/trellis/internal/sidecar"
)

var update = flag.Bool("update", false, "rewrite golden files")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from golden file:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func TestParsePairs(t *testing.T) {
	tests := []struct {
		in      []string
		want    map[string]string
		wantErr string
	}{
		{in: nil, want: map[string]string{}},
		{in: []string{"version=v1", "zone=a"}, want: map[string]string{"version": "v1", "zone": "a"}},
		{in: []string{"payments=127.0.0.1:9001"}, want: map[string]string{"payments": "127.0.0.1:9001"}},
		{in: []string{"version"}, wantErr: `--labels "version": want KEY=VALUE`},
		{in: []string{"=v1"}, wantErr: "want KEY=VALUE"},
		{in: []string{"version="}, wantErr: "want KEY=VALUE"},
	}
	for _, tt := range tests {
		got, err := parsePairs("--labels", tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parsePairs(%q) error = %v; want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || len(got) != len(tt.want) {
			t.Fatalf("parsePairs(%q) = %v, %v", tt.in, got, err)
		}
		for k, v := range tt.want {
			if got[k] != v {
				t.Errorf("parsePairs(%q)[%s] = %q; want %q", tt.in, k, got[k], v)
			}
		}
	}
}

func TestReadApplyFiles(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "b.yaml"), []byte("b"), 0o644)
	os.WriteFile(filepath.Join(dir, "a.json"), []byte("a"), 0o644)
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("x"), 0o644)
	os.Mkdir(filepath.Join(dir, "sub.yaml"), 0o755)
	files, err := readApplyFiles([]string{dir})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f.Name))
	}
	if strings.Join(names, ",") != "a.json,b.yaml" {
		t.Errorf("files = %v; want a.json,b.yaml (sorted, .txt and dirs skipped)", names)
	}

	empty := t.TempDir()
	if _, err := readApplyFiles([]string{empty}); err == nil || !strings.Contains(err.Error(), "has no .yaml") {
		t.Errorf("empty dir error = %v", err)
	}
	if _, err := readApplyFiles([]string{filepath.Join(dir, "missing.yaml")}); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("missing file error = %v", err)
	}
}

func TestDiscoverControl(t *testing.T) {
	dir := t.TempDir()
	var o sidecar.Options
	discoverControl(dir, &o)
	if o.ControlAddr != "127.0.0.1:15010" || o.CAFile != filepath.Join(dir, "ca.crt") || o.TokenFile != filepath.Join(dir, "bootstrap-token") {
		t.Errorf("defaults without control.json = %+v", o)
	}
	os.WriteFile(filepath.Join(dir, "control.json"), []byte(`{"grpc_addr":"127.0.0.1:4000","admin_addr":"127.0.0.1:4001"}`), 0o644)
	o = sidecar.Options{}
	discoverControl(dir, &o)
	if o.ControlAddr != "127.0.0.1:4000" {
		t.Errorf("ControlAddr = %q; want control.json's grpc_addr", o.ControlAddr)
	}
	o = sidecar.Options{ControlAddr: "10.0.0.1:1", CAFile: "/x", TokenFile: "/y"}
	discoverControl(dir, &o)
	if o.ControlAddr != "10.0.0.1:1" || o.CAFile != "/x" || o.TokenFile != "/y" {
		t.Errorf("explicit flags overridden: %+v", o)
	}
}

func TestAdminClientErrorsSayWhatToDo(t *testing.T) {
	dir := t.TempDir()
	_, err := newAdminClient(dir)
	if err == nil || !strings.Contains(err.Error(), "trellis control") {
		t.Fatalf("error without control.json = %v; want a hint to start the control plane", err)
	}
	os.WriteFile(filepath.Join(dir, "control.json"), []byte(`{"admin_addr":"127.0.0.1:1"}`), 0o644)
	if _, err := newAdminClient(dir); err == nil || !strings.Contains(err.Error(), "grpc_addr and admin_addr are required") {
		t.Fatalf("error with incomplete control.json = %v", err)
	}
	os.WriteFile(filepath.Join(dir, "control.json"), []byte(`{"grpc_addr":"127.0.0.1:2","admin_addr":"127.0.0.1:1"}`), 0o644)
	os.WriteFile(filepath.Join(dir, "admin-token"), []byte("t\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "ca.crt"), []byte("not pem"), 0o644)
	if _, err := newAdminClient(dir); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("error with bad ca.crt = %v", err)
	}
}

func TestDecodeAPIError(t *testing.T) {
	err := decodeAPIError(422, []byte(`{"errors":["a.yaml: document 1 (Service default/x): spec.ports: required","b.yaml: bad"]}`))
	if got := err.Error(); !strings.Contains(got, "2 errors") || !strings.Contains(got, "spec.ports: required") {
		t.Errorf("422 = %q", got)
	}
	err = decodeAPIError(401, []byte(`{"error":"missing or wrong admin token"}`))
	if err.Error() != "missing or wrong admin token" {
		t.Errorf("401 = %q", err)
	}
	err = decodeAPIError(502, []byte("bad gateway\n"))
	if err.Error() != "control plane: 502: bad gateway" {
		t.Errorf("non-JSON = %q", err)
	}
	if !isNotFound(decodeAPIError(404, nil)) || isNotFound(decodeAPIError(400, nil)) {
		t.Error("isNotFound wrong")
	}
}

func TestGetTableGolden(t *testing.T) {
	raw := []byte(`[
	 {"apiVersion":"gateway.networking.k8s.io/v1","kind":"HTTPRoute","metadata":{"name":"inventory-split","namespace":"default"},
	  "spec":{"parentRefs":[{"kind":"Service","name":"inventory"}],"rules":[{"backendRefs":[{"name":"inventory-v1","weight":90},{"name":"inventory-v2","weight":10}]}]}},
	 {"apiVersion":"trellis.dev/v1alpha1","kind":"Service","metadata":{"name":"orders","namespace":"default"},
	  "spec":{"ports":[{"name":"http","port":80,"protocol":"http"},{"name":"grpc","port":9090,"protocol":"grpc"}]}}
	]`)
	items, err := resourceItems(raw)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := printResources(&buf, "table", items, false); err != nil {
		t.Fatal(err)
	}
	golden(t, "get-table", buf.Bytes())

	buf.Reset()
	if err := printResources(&buf, "yaml", items[:1], true); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "name: inventory-split") {
		t.Errorf("yaml output:\n%s", buf.String())
	}
	buf.Reset()
	printResources(&buf, "table", nil, false)
	if buf.String() != "No resources found.\n" {
		t.Errorf("empty table = %q", buf.String())
	}
}

func TestResourceItemsShapes(t *testing.T) {
	for _, raw := range []string{`{"kind":"Service"}`, `[{"kind":"Service"}]`, `{"items":[{"kind":"Service"}]}`} {
		items, err := resourceItems([]byte(raw))
		if err != nil || len(items) != 1 || items[0]["kind"] != "Service" {
			t.Errorf("resourceItems(%s) = %v, %v", raw, items, err)
		}
	}
	if _, err := resourceItems([]byte(`"nope"`)); err == nil {
		t.Error("a JSON string was accepted")
	}
}

func TestProxyStatusTableGolden(t *testing.T) {
	expiry := time.Now().Add(20 * time.Hour).UTC().Format(time.RFC3339Nano)
	list := []map[string]any{
		{"NodeID": "web-default-2", "Service": "web", "Namespace": "default", "AckedVersion": "0123456789abcdef", "Revision": 1234567.0, "State": "SYNCED", "CertExpiry": "0001-01-01T00:00:00Z"},
		{"NodeID": "api-default-1", "Service": "api", "Namespace": "default", "SentVersion": "fedcba", "Revision": 0.0, "SentRevision": 12.0, "State": "NACKED", "Error": "bad regex", "CertExpiry": expiry},
	}
	var buf bytes.Buffer
	g := &globals{stdout: &buf}
	if err := printProxyStatus(g, list); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	// The expiry column depends on the clock; check it, then blank it for the golden file.
	if !strings.Contains(out, "(in 20h0m0s)") {
		t.Errorf("expiry column missing relative time:\n%s", out)
	}
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "api-default-1") {
			lines[i] = strings.Replace(l, l[strings.Index(l, "20"):strings.Index(l, ")")+1], "<expiry>", 1)
		}
	}
	golden(t, "proxy-status", []byte(strings.Join(lines, "\n")))
}

func TestCLIUsageErrors(t *testing.T) {
	tests := []struct {
		args    []string
		wantErr string
	}{
		{[]string{"apply"}, "-f FILE|DIR is required"},
		{[]string{"get", "services", "-o", "xml"}, `-o "xml": want table, yaml or json`},
		{[]string{"proxy", "--service", "x", "stray"}, "put the app's command after --"},
		{[]string{"proxy", "--service", "x", "--labels", "nokey"}, "want KEY=VALUE"},
		{[]string{"proxy", "--service", "x", "--labels", "version=v 1"}, "--labels version=v 1: value"},
		{[]string{"proxy", "--service", "x", "--balancer", "random"}, "unknown policy"},
		{[]string{"control", "--log-level", "loud"}, "--log-level"},
		{[]string{"control", "--domain", "trellis..local"}, `control: --domain: domain "trellis..local" is not a valid name`},
		// Names are checked before the admin client is even built.
		{[]string{"get", "services", "Orders", "--data-dir", "/nonexistent-trellis"}, `get: name: "Orders" is not a valid name: upper case is not allowed (did you mean "orders"?)`},
		{[]string{"get", "services", "-n", "shop_eu", "--data-dir", "/nonexistent-trellis"}, `get: --namespace: "shop_eu" is not a valid name`},
		{[]string{"delete", "httproute", "a.b", "--data-dir", "/nonexistent-trellis"}, `delete: name: "a.b" is not a valid name`},
		{[]string{"delete", "httproute", "ok", "-n", "", "--data-dir", "/nonexistent-trellis"}, `delete: --namespace: required`},
		{[]string{"proxy", "--service", "Orders"}, `sidecar: --service: "Orders" is not a valid name`},
		{[]string{"proxy", "--service", "orders", "--namespace", "a.b"}, `sidecar: --namespace: "a.b" is not a valid name`},
		{[]string{"proxy", "--service", "orders", "--upstream", "pay_ments=127.0.0.1:9001"}, `sidecar: --upstream pay_ments: "pay_ments" is not a service name`},
		{[]string{"get", "services", "--data-dir", "/nonexistent-trellis"}, "trellis control"},
	}
	for _, tt := range tests {
		var out, errb bytes.Buffer
		code := Main(tt.args, &out, &errb)
		if code == 0 || !strings.Contains(errb.String(), tt.wantErr) {
			t.Errorf("trellis %v: exit %d, stderr %q; want non-zero and %q", tt.args, code, errb.String(), tt.wantErr)
		}
	}
}
