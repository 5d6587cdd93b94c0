package demo

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"trellis.dev/trellis/internal/telemetry"
)

// fakeProcesses lists live processes (other than us) that carry token in
// their environment: what a run left behind.
func fakeProcesses(t *testing.T, token string) []string {
	t.Helper()
	var left []string
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, _ := strconv.Atoi(filepath.Base(d))
		if pid == os.Getpid() {
			continue
		}
		env, err := os.ReadFile(filepath.Join(d, "environ"))
		if err != nil || !bytes.Contains(env, []byte(fakeEnv+"="+token)) {
			continue
		}
		stat, _ := os.ReadFile(filepath.Join(d, "stat"))
		if f := strings.Fields(string(stat)); len(f) > 2 && f[2] == "Z" {
			continue // a zombie is dead
		}
		cmd, _ := os.ReadFile(filepath.Join(d, "cmdline"))
		left = append(left, strings.ReplaceAll(string(cmd), "\x00", " "))
	}
	return left
}

func TestRunFakeMesh(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a dozen processes")
	}
	token := strconv.FormatInt(time.Now().UnixNano(), 36)
	t.Setenv(fakeEnv, token)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	type ret struct {
		res Result
		err error
	}
	done := make(chan ret, 1)
	w := &syncBuffer{}
	go func() {
		res, err := Run(ctx, Options{Binary: os.Args[0], DataDir: dir, Live: true, RPS: 40, Out: w})
		done <- ret{res, err}
	}()
	// Wait for the second redraw, then "press Ctrl-C".
	deadline := time.Now().Add(25 * time.Second)
	for strings.Count(w.String(), "\x1b[2J") < 2 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	r := <-done
	if r.err != nil {
		t.Fatalf("Run: %v\n%s", r.err, w.String())
	}
	res, shown := r.res, w.String()

	if strings.Count(shown, "\x1b[2J") < 2 {
		t.Fatalf("live mode did not redraw:\n%s", shown)
	}
	for _, want := range []string{"data dir:  " + dir, "apply -f ", "inventory-90-10.yaml --data-dir " + dir, "Whole run", "inventory-v2"} {
		if !strings.Contains(shown, want) {
			t.Errorf("output lacks %q:\n%s", want, shown)
		}
	}
	if len(res.Rows) != len(rowOrder) {
		t.Fatalf("rows %+v", res.Rows)
	}
	by := map[string]telemetry.Row{}
	for i, row := range res.Rows {
		if row.Service != rowOrder[i] {
			t.Fatalf("row %d is %s, want %s", i, row.Service, rowOrder[i])
		}
		by[row.Service] = row
	}
	fe, ord := by["frontend"], by["orders"]
	if fe.Requests < 40 || fe.Success != 1 || res.SuccessRate() != 1 {
		t.Fatalf("frontend %+v, overall %v; want ≥ 40 requests, all served", fe, res.SuccessRate())
	}
	if res.Load.Sent != fe.Requests || res.Load.Failed != 0 || !strings.Contains(shown, "load generator: ") {
		t.Errorf("load generator reported %+v, frontend served %d", res.Load, fe.Requests)
	}
	if ord.Requests != fe.Requests || by["payments"].Requests != fe.Requests {
		t.Errorf("each order calls orders and payments once: %+v", res.Rows)
	}
	v1, v2 := by["inventory-v1"].Requests, by["inventory-v2"].Requests
	if v1+v2 != fe.Requests || v1 == 0 || v2 == 0 {
		t.Errorf("inventory split v1=%d v2=%d of %d", v1, v2, fe.Requests)
	}
	if fe.P50 < 3*time.Millisecond || fe.P99 < fe.P50 {
		t.Errorf("frontend latency p50=%v p99=%v: it waits for two hops of 1–5 ms work", fe.P50, fe.P99)
	}
	if rps := fe.RPS; rps < 20 || rps > 45 {
		t.Errorf("frontend rps %.1f, want about 40", rps)
	}
	if left := fakeProcesses(t, token); len(left) > 0 {
		t.Fatalf("processes left after Run: %q", left)
	}
	// The user's data dir is kept, with the logs and the files to apply.
	for _, f := range []string{"logs/control.log", "logs/inventory-v2.log", "inventory-90-10.yaml", "shop.yaml"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
}

// syncBuffer is an io.Writer Run can write to while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestRunFailures(t *testing.T) {
	tests := []struct {
		fail string
		want []string
	}{
		{"control", []string{"control stopped unexpectedly", "disk on fire", "control.log"}},
		{"payments", []string{"payments stopped unexpectedly", "certify: permission denied", "exit status 1"}},
	}
	for _, tt := range tests {
		t.Run(tt.fail, func(t *testing.T) {
			token := strconv.FormatInt(time.Now().UnixNano(), 36)
			t.Setenv(fakeEnv, token)
			t.Setenv(fakeFailEnv, tt.fail)
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			_, err := Run(ctx, Options{Binary: os.Args[0], Duration: time.Minute})
			if err == nil {
				t.Fatal("Run succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
			if left := fakeProcesses(t, token); len(left) > 0 {
				t.Fatalf("processes left after a failed Run: %q", left)
			}
		})
	}
	if _, err := Run(t.Context(), Options{Binary: filepath.Join(t.TempDir(), "missing")}); err == nil || !strings.Contains(err.Error(), "start control") {
		t.Fatalf("missing binary: %v", err)
	}
	if _, err := Run(t.Context(), Options{RPS: -1}); err == nil || !strings.Contains(err.Error(), "rps") {
		t.Fatalf("negative rps: %v", err)
	}
}

func TestProcStopKillsGroup(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child.pid")
	// A parent that ignores SIGTERM and leaves a child behind.
	p, err := startProc("stubborn", filepath.Join(dir, "log"), "/bin/sh", "-c",
		"trap '' TERM; sleep 60 & echo $! > "+pidFile+"; wait")
	if err != nil {
		t.Fatal(err)
	}
	var child int
	for deadline := time.Now().Add(5 * time.Second); child == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		b, _ := os.ReadFile(pidFile)
		child, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	if child == 0 {
		t.Fatal("child did not start")
	}
	start := time.Now()
	p.stop(200 * time.Millisecond)
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("stop took %v", d)
	}
	if !p.exited() {
		t.Fatal("process still running")
	}
	for deadline := time.Now().Add(3 * time.Second); alive(child); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("child %d of the stopped process survived", child)
		}
	}
}

func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	stat, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	f := strings.Fields(string(stat))
	return len(f) > 2 && f[2] != "Z"
}

func TestProcFailure(t *testing.T) {
	dir := t.TempDir()
	p, err := startProc("crasher", filepath.Join(dir, "crasher.log"), "/bin/sh", "-c", "echo line1; echo boom >&2; exit 3")
	if err != nil {
		t.Fatal(err)
	}
	<-p.done
	msg := p.failure().Error()
	for _, w := range []string{"crasher stopped unexpectedly", "exit status 3", "boom", "crasher.log"} {
		if !strings.Contains(msg, w) {
			t.Errorf("failure lacks %q: %s", w, msg)
		}
	}
	p.stop(time.Second) // stopping an exited process returns at once
}

func TestSuccessRateAndOrder(t *testing.T) {
	tests := []struct {
		rows []telemetry.Row
		want float64
	}{
		{nil, 0},
		{[]telemetry.Row{{Service: "frontend"}}, 0},
		{[]telemetry.Row{{Service: "a", Requests: 100, Success: 1}, {Service: "b", Requests: 100, Success: 0.5}}, 0.75},
		{[]telemetry.Row{{Service: "a", Requests: 300, Success: 1}, {Service: "b", Requests: 100, Success: 0.96}}, 0.99},
	}
	all := []telemetry.Row{{Service: "a", Requests: 100, Success: 1}}
	for i, tt := range []struct {
		load LoadStats
		want float64
	}{
		{LoadStats{}, 1},                        // no report: the rows decide
		{LoadStats{Sent: 100}, 1},               // nothing lost
		{LoadStats{Sent: 100, Failed: 5}, 0.95}, // lost before the frontend
	} {
		if got := (Result{Rows: all, Load: tt.load}).SuccessRate(); got != tt.want {
			t.Errorf("load case %d: %v, want %v", i, got, tt.want)
		}
	}
	for i, tt := range tests {
		if got := (Result{Rows: tt.rows}).SuccessRate(); got < tt.want-1e-12 || got > tt.want+1e-12 {
			t.Errorf("case %d: %v, want %v", i, got, tt.want)
		}
	}
	got := ordered([]telemetry.Row{{Service: "inventory-v2", Requests: 3}, {Service: "frontend", Requests: 1}})
	var names []string
	for _, r := range got {
		names = append(names, r.Service)
	}
	if strings.Join(names, ",") != strings.Join(rowOrder, ",") || got[0].Requests != 1 || got[4].Requests != 3 || got[1].Requests != 0 {
		t.Fatalf("ordered: %+v", got)
	}
}

// pipeWriter is stdout under 'make demo | tee log': it takes writes until
// broken (tee stopped by the Ctrl-C), then fails them as a pipe does.
type pipeWriter struct {
	syncBuffer
	mu     sync.Mutex
	broken bool
}

func (p *pipeWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	broken := p.broken
	p.mu.Unlock()
	if broken {
		return 0, syscall.EPIPE
	}
	return p.syncBuffer.Write(b)
}

func (p *pipeWriter) breakPipe() {
	p.mu.Lock()
	p.broken = true
	p.mu.Unlock()
}

type nopCloser struct{ *syncBuffer }

func (nopCloser) Close() error { return nil }

// TestRunPlainUnderBrokenPipe: output that is not a terminal gets the
// table as plain lines every refresh; a Ctrl-C that also broke the pipe
// still shows the final table (on the terminal) and removes the temporary
// data dir; the apply hint names absolute paths into the data dir.
func TestRunPlainUnderBrokenPipe(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a dozen processes")
	}
	token := strconv.FormatInt(time.Now().UnixNano(), 36)
	t.Setenv(fakeEnv, token)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	out, tty := &pipeWriter{}, &syncBuffer{}
	type ret struct {
		res Result
		err error
	}
	done := make(chan ret, 1)
	go func() {
		res, err := Run(ctx, Options{Binary: os.Args[0], Plain: true, RPS: 40, Out: out,
			Terminal: func() (io.WriteCloser, error) { return nopCloser{tty}, nil }})
		done <- ret{res, err}
	}()
	deadline := time.Now().Add(25 * time.Second)
	for strings.Count(out.String(), "SERVICE") < 2 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	out.breakPipe()
	cancel()
	r := <-done
	shown := out.String()
	if r.err != nil {
		t.Fatalf("Run: %v\n%s", r.err, shown)
	}
	if n := strings.Count(shown, "SERVICE"); n < 2 || strings.Contains(shown, "\x1b[") {
		t.Errorf("want ≥ 2 plain tables and no escape codes, got %d tables:\n%q", n, shown)
	}
	dir := r.res.DataDir
	hint := " apply -f " + filepath.Join(dir, "inventory-90-10.yaml") + " --data-dir " + dir
	if !strings.Contains(shown, hint) || !filepath.IsAbs(dir) {
		t.Errorf("header lacks the absolute apply hint %q:\n%s", hint, shown)
	}
	if !strings.Contains(tty.String(), "Whole run") || strings.Contains(shown, "Whole run") {
		t.Errorf("final table: on the terminal %q; in the broken pipe %q", tty.String(), shown)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("temporary data dir %s left behind: %v", dir, err)
	}
	if left := fakeProcesses(t, token); len(left) > 0 {
		t.Fatalf("processes left after Run: %q", left)
	}
}

// TestHeadlessHint: a headless run in a temporary data dir prints no apply
// hint (the dir is gone at exit); with a data dir that is kept, it does.
func TestHeadlessHint(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a dozen processes")
	}
	t.Setenv(fakeEnv, strconv.FormatInt(time.Now().UnixNano(), 36))
	for _, keep := range []bool{false, true} {
		o := Options{Binary: os.Args[0], Duration: 500 * time.Millisecond, RPS: 20, Out: &syncBuffer{}}
		if keep {
			o.DataDir = t.TempDir()
		}
		if _, err := Run(t.Context(), o); err != nil {
			t.Fatalf("keep=%v: %v", keep, err)
		}
		shown := o.Out.(*syncBuffer).String()
		if got := strings.Contains(shown, "apply -f "); got != keep {
			t.Errorf("keep data dir %v: hint shown %v:\n%s", keep, got, shown)
		}
		if !strings.Contains(shown, "Whole run") {
			t.Errorf("keep=%v: no final table:\n%s", keep, shown)
		}
	}
}
