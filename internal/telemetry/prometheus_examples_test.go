package telemetry

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

const examplesDir = "../../examples/prometheus"

func tool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed (apt-get install %s)", name, pkg)
	}
	return p
}

func run(t *testing.T, dir string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestPrometheusExamples checks examples/prometheus as Prometheus and
// Alertmanager would: the scrape config and rules load, the rules' unit
// tests pass, the Alertmanager config loads and routes each severity to
// its receiver.
func TestPrometheusExamples(t *testing.T) {
	t.Run("promtool", func(t *testing.T) {
		promtool := tool(t, "promtool", "prometheus")
		run(t, examplesDir, promtool, "check", "config", "prometheus.yml")
		run(t, examplesDir, promtool, "check", "rules", "rules.yml")
		run(t, examplesDir, promtool, "test", "rules", "rules_test.yml")
	})
	t.Run("amtool", func(t *testing.T) {
		amtool := tool(t, "amtool", "prometheus-alertmanager")
		run(t, examplesDir, amtool, "check-config", "alertmanager.yml")
		for sev, want := range map[string]string{"page": "pager", "ticket": "ticket"} {
			out := run(t, examplesDir, amtool, "config", "routes", "test", "--config.file=alertmanager.yml", "severity="+sev, "alertname=TrellisX")
			// The receiver is the last line (amtool warns on the others).
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if got := lines[len(lines)-1]; got != want {
				t.Errorf("severity=%s routes to %q, want %s", sev, got, want)
			}
		}
	})
}

// TestRulesUseExportedNames: every trellis_* series the example rules read
// is one the proxy or the control plane exports, so a rename cannot leave
// an alert silently matching nothing.
func TestRulesUseExportedNames(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(examplesDir, "rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, n := range []string{
		RequestsTotalName, ActiveRequestsName, CertExpiryName, MirrorRequestsName,
		TCPOpenedName, TCPClosedName, TCPSentName, TCPReceivedName, TCPOpenName,
		RetriesName, BreakerOverflowsName, OutlierEjectionsName,
		ControlConnectedProxiesName, ControlSnapshotsPushedName, ControlAcksName, ControlNacksName,
		ControlSlowConsumersName, ControlResourcesName, ControlCertsIssuedName, ControlCertSoonestExpiryName,
		ControlProxiesByStateName,
	} {
		known[n] = true
	}
	for _, h := range []string{RequestDurationName, RequestBytesName, ResponseBytesName, ControlPushAckDurationName, ControlStoreOpDurationName} {
		for _, suffix := range []string{"", "_bucket", "_count", "_sum"} {
			known[h+suffix] = true
		}
	}
	used := regexp.MustCompile(`\btrellis_[a-z0-9_]+`).FindAllString(string(b), -1)
	if len(used) < 5 {
		t.Fatalf("only %d trellis_ names in rules.yml", len(used))
	}
	for _, n := range used {
		if !known[n] && !strings.HasPrefix(n, "trellis_role") {
			t.Errorf("rules.yml reads %s, which nothing exports", n)
		}
	}
}
