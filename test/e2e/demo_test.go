package e2e

import (
	"os"
	"os/exec"
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
	if left, err := exec.Command("pgrep", "-af", trellisBin).Output(); err == nil && len(left) > 0 {
		t.Fatalf("processes left behind by the demo:\n%s", left)
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
	if left, err := exec.Command("pgrep", "-af", trellisBin).Output(); err == nil && len(left) > 0 {
		t.Fatalf("processes left behind after Ctrl-C:\n%s", left)
	}
}
