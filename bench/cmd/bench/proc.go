package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime/stime in /proc/PID/stat. It is 100
// on every mainstream Linux build; Go cannot ask sysconf without cgo.
const clockTicks = 100

// procStat is what the harness needs from /proc/PID/stat.
type procStat struct {
	state        byte // R, S, D, Z, ...
	ppid         int
	utime, stime uint64 // clock ticks
}

// parseStat parses the contents of /proc/PID/stat. The command name (field
// 2) is in parentheses and may itself contain spaces and parentheses, so the
// remaining fields are counted from the last ')'.
func parseStat(data []byte) (procStat, error) {
	end := bytes.LastIndexByte(data, ')')
	if end < 0 || bytes.IndexByte(data, '(') < 0 {
		return procStat{}, errors.New("proc stat: no command name")
	}
	// Fields after the name start at field 3 (state).
	f := strings.Fields(string(data[end+1:]))
	const first = 3
	if len(f) < 15-first+1 {
		return procStat{}, fmt.Errorf("proc stat: %d fields after the name, want at least %d", len(f), 15-first+1)
	}
	ppid, err := strconv.Atoi(f[4-first])
	if err != nil || ppid < 0 {
		return procStat{}, fmt.Errorf("proc stat: ppid %q: bad number", f[4-first])
	}
	ut, err := strconv.ParseUint(f[14-first], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("proc stat: utime: %w", err)
	}
	st, err := strconv.ParseUint(f[15-first], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("proc stat: stime: %w", err)
	}
	return procStat{state: f[0][0], ppid: ppid, utime: ut, stime: st}, nil
}

// parseVmRSS returns VmRSS in bytes from the contents of /proc/PID/status.
func parseVmRSS(data []byte) (uint64, error) { return parseStatusKB(data, "VmRSS") }

// parseStatusKB returns the "<key>: <n> kB" line of /proc/PID/status in
// bytes (VmRSS; RssAnon, the part of it that is heap and stacks rather
// than the binary's and libraries' file pages).
func parseStatusKB(data []byte, key string) (uint64, error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), key+":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("proc status: %s %q: want \"<n> kB\"", key, strings.TrimSpace(rest))
		}
		kb, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil || kb > 1<<40 {
			return 0, fmt.Errorf("proc status: %s %q: bad number", key, f[0])
		}
		return kb * 1024, nil
	}
	return 0, fmt.Errorf("proc status: no %s line (kernel thread or zombie?)", key)
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	s, err := parseStat(b)
	if err != nil {
		return procStat{}, fmt.Errorf("pid %d: %w", pid, err)
	}
	return s, nil
}

// withDescendants returns roots and every process below them (nginx's and
// HAProxy's workers), found by walking ppid links in /proc.
func withDescendants(roots []int) ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	children := make(map[int][]int)
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		s, err := readStat(pid)
		if err != nil {
			continue // exited meanwhile
		}
		children[s.ppid] = append(children[s.ppid], pid)
	}
	var out []int
	queue := append([]int(nil), roots...)
	seen := make(map[int]bool)
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		if seen[pid] {
			continue
		}
		seen[pid] = true
		out = append(out, pid)
		queue = append(queue, children[pid]...)
	}
	return out, nil
}

// cpuSeconds sums utime+stime of pids.
func cpuSeconds(pids []int) (float64, error) {
	var ticks uint64
	for _, pid := range pids {
		s, err := readStat(pid)
		if err != nil {
			return 0, fmt.Errorf("cpu of pid %d: %w", pid, err)
		}
		ticks += s.utime + s.stime
	}
	return float64(ticks) / clockTicks, nil
}

// rssBytes sums VmRSS of pids.
func rssBytes(pids []int) (uint64, error) { return statusSum(pids, "VmRSS") }

// statusSum sums a kB field of /proc/PID/status over pids.
func statusSum(pids []int, key string) (uint64, error) { return procSum(pids, "status", key) }

// procSum sums a "<key>: <n> kB" field of /proc/PID/<file> over pids
// (status; smaps_rollup for Pss, which splits each shared page among the
// processes that map it).
func procSum(pids []int, file, key string) (uint64, error) {
	var sum uint64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, file))
		if err != nil {
			return 0, fmt.Errorf("rss of pid %d: %w", pid, err)
		}
		n, err := parseStatusKB(b, key)
		if err != nil {
			return 0, fmt.Errorf("rss of pid %d: %w", pid, err)
		}
		sum += n
	}
	return sum, nil
}

// proc is one child process the harness started.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has exited
	err     error         // Wait's result, valid after done
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process is gone, with its log's tail.
func (p *proc) exited() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s exited early (%v); last log lines:\n%s", p.name, p.err, tail(p.logPath, 20))
	default:
		return nil
	}
}

// supervisor starts processes and stops every one of them, whatever
// happened, when stopAll is called.
type supervisor struct {
	dir string
	mu  sync.Mutex
	all []*proc
}

// start runs bin with args in its own process group (so its workers can be
// signalled together), output to DIR/<name>.log.
func (s *supervisor) start(name, bin string, args []string, env []string) (*proc, error) {
	logPath := filepath.Join(s.dir, name+".log")
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), env...)
	// Setpgid: one signal reaches nginx's master and workers. Pdeathsig:
	// children die with the harness even if it is killed with SIGKILL.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	s.mu.Lock()
	s.all = append(s.all, p)
	s.mu.Unlock()
	return p, nil
}

// stopAll stops the processes in reverse start order: SIGTERM to the group,
// then SIGKILL after a grace period.
func (s *supervisor) stopAll() {
	s.mu.Lock()
	all := s.all
	s.all = nil
	s.mu.Unlock()
	for i := len(all) - 1; i >= 0; i-- {
		p := all[i]
		pgid := p.pid()
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-p.done
		}
		// Workers left in the group after the leader exited.
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}
}

// waitReady polls check every 50ms until it succeeds, the process exits,
// ctx ends or timeout passes.
func waitReady(ctx context.Context, p *proc, timeout time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		if err := p.exited(); err != nil {
			return err
		}
		err := check()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v: %w; last log lines:\n%s", p.name, timeout, err, tail(p.logPath, 20))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// tail returns the last n lines of a log file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  " + strings.Join(lines, "\n  ")
}

// last returns the most recently started process.
func (s *supervisor) last() *proc {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.all[len(s.all)-1]
}
