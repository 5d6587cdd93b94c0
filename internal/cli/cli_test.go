package cli

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"trellis.dev/trellis/internal/config"
	"trellis.dev/trellis/internal/push"
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
	files, err := readApplyFiles([]string{dir}, nil)
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
	if _, err := readApplyFiles([]string{empty}, nil); err == nil || !strings.Contains(err.Error(), "has no .yaml") {
		t.Errorf("empty dir error = %v", err)
	}
	if _, err := readApplyFiles([]string{filepath.Join(dir, "missing.yaml")}, nil); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
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
	// A replica's control.json naming every replica: the proxy gets them all.
	os.WriteFile(filepath.Join(dir, "control.json"), []byte(`{"grpc_addr":"127.0.0.1:4000","grpc_replicas":["127.0.0.1:4000","127.0.0.1:5000"],"admin_addr":"127.0.0.1:4001"}`), 0o644)
	o = sidecar.Options{}
	discoverControl(dir, &o)
	if o.ControlAddr != "127.0.0.1:4000,127.0.0.1:5000" {
		t.Errorf("ControlAddr = %q; want control.json's grpc_replicas", o.ControlAddr)
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
	 {"apiVersion":"trellis.dev/v1alpha1","kind":"Service","metadata":{"name":"orders","namespace":"default","creationTimestamp":"2026-03-01T12:00:00Z","labels":{"team":"shop","tier":"api"}},
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

	for _, format := range []string{"wide", "yaml", "json"} {
		buf.Reset()
		if err := printResources(&buf, format, items, false); err != nil {
			t.Fatal(err)
		}
		golden(t, "get-"+format, buf.Bytes())
	}
	buf.Reset()
	if err := printResources(&buf, "json", items[:1], true); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(buf.String(), "{\n") || !strings.Contains(buf.String(), `"name": "inventory-split"`) {
		t.Errorf("json of one resource is not one object:\n%s", buf.String())
	}
	buf.Reset()
	if err := printKinds(&buf); err != nil {
		t.Fatal(err)
	}
	golden(t, "get-kinds", buf.Bytes())
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
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	list := proxyFixture(now)
	var buf bytes.Buffer
	if err := printProxyStatus(&buf, list, nil, now); err != nil {
		t.Fatal(err)
	}
	golden(t, "proxy-status", buf.Bytes())

	// -o wide: the two web replicas differ by address and labels.
	eps := []endpoint{
		{ID: "web-default-2", Address: "127.0.0.1:15006", Labels: map[string]string{"app": "web", "version": "v1"}},
		{ID: "web-default-3", Address: "127.0.0.1:25006", Labels: map[string]string{"version": "v2", "app": "web"}},
	}
	buf.Reset()
	if err := printProxyStatus(&buf, list, eps, now); err != nil {
		t.Fatal(err)
	}
	golden(t, "proxy-status-wide", buf.Bytes())
}

// proxyFixture is three proxies: one NACKed, two replicas of web (one
// with an expired certificate).
func proxyFixture(now time.Time) []push.ProxyStatus {
	return []push.ProxyStatus{
		{NodeID: "api-default-1", Replica: "cp1", Service: "api", Namespace: "default", Identity: "spiffe://trellis.local/ns/default/sa/api", SentVersion: "fedcba", SentRevision: 12,
			State: push.StateNacked, Error: "bad regex", CertExpiry: now.Add(20 * time.Hour), ConnectedAt: now.Add(-time.Hour)},
		{NodeID: "web-default-2", Replica: "cp2", Service: "web", Namespace: "default", AckedVersion: "0123456789abcdef", Revision: 1234567, State: push.StateSynced},
		{NodeID: "web-default-3", Service: "web", Namespace: "default", AckedVersion: "0123456789abcdef", Revision: 1234567, State: push.StateSynced,
			CertExpiry: now.Add(-time.Hour), LastAck: now.Add(-time.Minute)},
	}
}

func TestCLIUsageErrors(t *testing.T) {
	tests := []struct {
		args    []string
		wantErr string
	}{
		{[]string{"apply"}, "-f FILE|DIR is required"},
		{[]string{"get", "services", "-o", "xml"}, `-o "xml": want table, wide, yaml or json`},
		{[]string{"proxy-status", "-o", "xml"}, `-o "xml": want table, wide, yaml or json`},
		{[]string{"get", "foo", "--data-dir", "/nonexistent-trellis"}, `get: unknown kind "foo": known kinds are authorizationpolicies (ap), backendpolicies (bp), concurrencypolicies (cp), externalservices (es), faultinjections (fi), grpcroutes (gr), httproutes (hr), meshconfigs (mc), ratelimitpolicies (rlp), services (svc)`},
		{[]string{"delete", "foo", "nope", "--data-dir", "/nonexistent-trellis"}, `delete: unknown kind "foo": known kinds are authorizationpolicies (ap), backendpolicies (bp), concurrencypolicies (cp), externalservices (es), faultinjections (fi), grpcroutes (gr), httproutes (hr), meshconfigs (mc), ratelimitpolicies (rlp), services (svc)`},
		{[]string{"delete", "svc", "--data-dir", "/nonexistent-trellis"}, `delete: want KIND NAME`},
		{[]string{"delete", "svc", "a", "-f", "x.yaml", "--data-dir", "/nonexistent-trellis"}, `not both`},
		{[]string{"get", "svc", "orders", "-A", "--data-dir", "/nonexistent-trellis"}, `a name needs one namespace`},
		{[]string{"apply", "-f", "-", "-f", "-"}, `standard input can be read once`},
		{[]string{"proxy", "--service", "x", "stray"}, "put the app's command after --"},
		{[]string{"proxy", "--service", "x", "--labels", "nokey"}, "want KEY=VALUE"},
		{[]string{"proxy", "--service", "x", "--labels", "version=v 1"}, "--labels version=v 1: value"},
		{[]string{"proxy", "--service", "x", "--balancer", "bogus"}, "unknown policy"},
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

// TestKindNamesCoverConfig: the CLI's names (plurals, short names) cover
// exactly the kinds the control plane accepts.
func TestKindNamesCoverConfig(t *testing.T) {
	var got []string
	for _, k := range kindNames() {
		got = append(got, k.Kind)
		for _, name := range append([]string{k.Kind, strings.ToLower(k.Kind), k.Plural, strings.ToUpper(k.Plural)}, k.Short...) {
			if r, err := resolveKind(name); err != nil || r.Kind != k.Kind {
				t.Errorf("resolveKind(%q) = %v, %v; want %s", name, r.Kind, err, k.Kind)
			}
		}
	}
	if want := config.Kinds(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("CLI kinds %v; config has %v", got, want)
	}
	if _, err := resolveKind("deployments"); err == nil || !strings.Contains(err.Error(), "'trellis get' lists them") {
		t.Errorf("unknown kind: %v", err)
	}
}
