package e2e

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
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

// TestDemoCtrlCUnderBrokenPipe is 'make demo 2>&1 | tee log' and Ctrl-C,
// which stops tee as well: output that is not a terminal gets plain table
// lines every refresh; once the pipe's reader is gone, the demo is not
// killed by SIGPIPE but still stops everything it started, exits 0 and
// removes its temporary data dir.
func TestDemoCtrlCUnderBrokenPipe(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(trellisBin, "demo")
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })

	// Read as tee would, until a plain table has been printed.
	var seen strings.Builder
	dir := ""
	sc := bufio.NewScanner(r)
	deadline := time.AfterFunc(60*time.Second, func() { r.Close() })
	for sc.Scan() {
		line := sc.Text()
		seen.WriteString(line + "\n")
		if d, ok := strings.CutPrefix(line, "data dir:  "); ok {
			dir, _, _ = strings.Cut(d, " (logs")
		}
		if strings.HasPrefix(line, "SERVICE ") {
			break
		}
	}
	deadline.Stop()
	if dir == "" || !strings.Contains(seen.String(), "SERVICE ") || strings.Contains(seen.String(), "\x1b[") {
		t.Fatalf("no plain table (or escape codes) before Ctrl-C:\n%s", seen.String())
	}
	r.Close() // tee is gone: the next refresh writes into a broken pipe
	time.Sleep(2 * time.Second)
	select {
	case err := <-done:
		t.Fatalf("demo died when its output broke, before Ctrl-C: %v (SIGPIPE?)", err)
	default:
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("demo under a broken pipe: %v (killed by SIGPIPE?)\n%s", err, seen.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("demo did not stop within 30s of Ctrl-C")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("temporary data dir %s left behind (%v)", dir, err)
	}
	time.Sleep(500 * time.Millisecond)
	if left := processesOf(trellisBin); len(left) > 0 {
		t.Fatalf("processes left behind:\n%s", strings.Join(left, "\n"))
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
	// The whole temp dir path is unique per run (its base alone, "001",
	// is not), so a concurrent run's marker process never counts here.
	marker := "trellis-e2e-marker:" + t.TempDir()
	cmd := exec.Command("sh", "-c", "sleep 5 # "+marker)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	// Start returns once the child is forked; its command line names the
	// marker only after it has exec'd sh.
	eventually(t, 5*time.Second, "the live sh listed by processesOf("+marker+")", func() bool { return len(processesOf(marker)) == 1 })
	if got := processesOf(marker); len(got) != 1 {
		t.Fatalf("processesOf(%q) = %v; want the one live sh", marker, got)
	}
}
