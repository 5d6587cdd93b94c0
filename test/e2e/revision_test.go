package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestApplyWait: `trellis apply --wait` returns once every proxy runs the
// applied revision, those the change does not touch included; proxy-status
// shows the revision; the control plane's /metrics counts the proxies.
func TestApplyWait(t *testing.T) {
	cp := startControl(t, "")
	cp.apply(t, services)
	cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "web", nil), labels: "version=v1"})
	cp.proxy(t, proxyConfig{service: "client", upstreams: []string{"web"}})
	cp.proxy(t, proxyConfig{service: "other", app: appServer(t, "other", nil)})

	f := filepath.Join(t.TempDir(), "route.yaml")
	if err := os.WriteFile(f, []byte(splitRoute(100, 0)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := cp.cli(t, "apply", "-f", f, "--wait", "--timeout", "20s")
	if err != nil || !strings.Contains(out, "all 3 connected proxies run it") {
		t.Fatalf("apply --wait: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`revision (\d+) applied`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no revision in %q", out)
	}
	rev, _ := strconv.ParseInt(m[1], 10, 64)

	// The same again changes nothing: the current revision, run already.
	if out, err := cp.cli(t, "apply", "-f", f, "--wait", "--timeout", "5s"); err != nil || !strings.Contains(out, "unchanged") || !strings.Contains(out, "all 3 connected proxies run it") {
		t.Fatalf("unchanged apply --wait: %v\n%s", err, out)
	}

	out, err = cp.cli(t, "proxy-status", "-o", "json")
	if err != nil {
		t.Fatalf("proxy-status: %v\n%s", err, out)
	}
	var list []struct {
		NodeID   string `json:"nodeId"`
		Revision int64  `json:"revision"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 3 {
		t.Fatalf("proxy-status json (%v):\n%s", err, out)
	}
	for _, p := range list {
		if p.Revision < rev {
			t.Errorf("%s at revision %d after apply --wait returned for %d", p.NodeID, p.Revision, rev)
		}
	}
	if out, err = cp.cli(t, "proxy-status"); err != nil || !strings.Contains(out, "REVISION") {
		t.Fatalf("proxy-status table: %v\n%s", err, out)
	}

	resp, err := http.Get("http://" + cp.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "\ntrellis_control_push_connected_proxies 3\n") {
		t.Fatalf("/metrics does not count 3 connected proxies:\n%s", body)
	}
}
