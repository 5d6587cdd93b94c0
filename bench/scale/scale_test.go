package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSmoke runs the harness end to end at N=20 against the real binary, so
// it cannot rot: every figure it reports must come out.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs a control plane")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "trellis")
	build := exec.Command("go", "build", "-o", bin, "trellis.dev/trellis/cmd/trellis")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	out := filepath.Join(dir, "scale.json")
	var stdout strings.Builder
	start := time.Now()
	err := run([]string{"-trellis", bin, "-n", "20", "-services", "30", "-applies", "4", "-churn", "3",
		"-steady", "1s", "-heartbeat", "1s", "-small-mesh", "5", "-out", out}, &stdout)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, stdout.String())
	}
	t.Logf("%s in %s", stdout.String(), time.Since(start))
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var rep report
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Runs) != 1 || rep.MeshSize == nil {
		t.Fatalf("report %s", data)
	}
	r := rep.Runs[0]
	checks := map[string]bool{
		"proxies":                      r.Proxies == 20,
		"applies timed":                r.ApplyP99Ms > 0 && r.ApplyP50Ms <= r.ApplyP99Ms,
		"endpoint changes timed":       r.EndpointP99Ms > 0,
		"bytes per change":             r.BytesPerApply > 0 && r.BytesPerEndpointChange > 0,
		"deltas sent":                  r.IncrementalShare > 0,
		"affected proxies":             r.AffectedPerApply >= 1,
		"snapshot size":                r.SnapshotBytesMean > 0 && r.ServicesPerSnapshot >= 2,
		"cpu and memory":               r.CPUSecondsStartup > 0 && r.RSSMB > 0 && r.PeakRSSMB >= r.RSSMB,
		"keep-alives at rest":          r.SteadyKeepAlivesPerSec > 0,
		"registrations wrote":          r.StartupStoreWrites >= 20,
		"mesh comparison":              rep.MeshSize.SmallBytes > 0 && rep.MeshSize.BigBytes > 0,
		"table printed":                strings.Contains(stdout.String(), "apply99"),
		"one control plane, then none": !strings.Contains(stdout.String(), "kept"),
	}
	for what, ok := range checks {
		if !ok {
			t.Errorf("%s: wrong in %s", what, data)
		}
	}
}
