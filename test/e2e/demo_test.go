package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDemo runs the demo headless: it must serve its traffic with ≥ 99%
// success, print the table, and leave no process behind.
func TestDemo(t *testing.T) {
	p := start(t, "demo", "demo", "--duration", "15s")
	code := p.wait(t, 90*time.Second)
	out := p.out.String()
	if code != 0 {
		t.Fatalf("trellis demo exited %d:\n%s", code, tail(out, 80))
	}
	for _, svc := range []string{"frontend", "orders", "payments", "inventory-v1", "inventory-v2"} {
		if !strings.Contains(out, svc) {
			t.Errorf("final table has no row for %s:\n%s", svc, tail(out, 40))
		}
	}
	// No orphan: nothing started from this binary may outlive the demo.
	time.Sleep(500 * time.Millisecond)
	if left := processesOf(trellisBin); len(left) > 0 {
		t.Fatalf("processes left behind by the demo:\n%s", strings.Join(left, "\n"))
	}
}

// TestDemoCtrlC: the interactive demo stops everything on Ctrl-C (SIGINT).
func TestDemoCtrlC(t *testing.T) {
	p := start(t, "demo", "demo")
	eventually(t, 60*time.Second, "demo traffic to start", func() bool {
		if p.exited() {
			t.Fatalf("demo exited early:\n%s", p.out.String())
		}
		return strings.Contains(p.out.String(), "traffic started")
	})
	time.Sleep(3 * time.Second)
	if err := p.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("demo exited %d after Ctrl-C:\n%s", code, tail(p.out.String(), 40))
	}
	time.Sleep(500 * time.Millisecond)
	if left := processesOf(trellisBin); len(left) > 0 {
		t.Fatalf("processes left behind after Ctrl-C:\n%s", strings.Join(left, "\n"))
	}
}

// processesOf lists the live processes (pid and command line) whose command
// line mentions bin, read from /proc. Zombies have no command line and are
// not counted: they hold no port and no CPU.
func processesOf(bin string) []string {
	var out []string
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		raw, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil || len(raw) == 0 {
			continue
		}
		cmd := strings.ReplaceAll(strings.TrimRight(string(raw), "\x00"), "\x00", " ")
		if strings.Contains(cmd, bin) {
			out = append(out, filepath.Base(d)+" "+cmd)
		}
	}
	return out
}

// The orphan check above must be able to fail: it sees a live process.
func TestProcessesOfSeesLiveProcess(t *testing.T) {
	marker := "trellis-e2e-marker-" + filepath.Base(t.TempDir())
	cmd := exec.Command("sh", "-c", "sleep 5 # "+marker)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if got := processesOf(marker); len(got) != 1 {
		t.Fatalf("processesOf(%q) = %v; want the one live sh", marker, got)
	}
}
