package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of utime/stime in /proc/PID/stat: 100 on
// every mainstream Linux build (Go cannot ask sysconf without cgo).
const clockTicks = 100

// procUsage is a process's CPU time so far and its memory now.
type procUsage struct {
	CPU     time.Duration // user + system
	RSS     uint64        // VmRSS, bytes
	PeakRSS uint64        // VmHWM, bytes
}

func readUsage(pid int) (procUsage, error) {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procUsage{}, err
	}
	cpu, err := parseCPU(st)
	if err != nil {
		return procUsage{}, err
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procUsage{}, err
	}
	rss, err := parseStatusKB(status, "VmRSS:")
	if err != nil {
		return procUsage{}, err
	}
	hwm, err := parseStatusKB(status, "VmHWM:")
	if err != nil {
		return procUsage{}, err
	}
	return procUsage{CPU: cpu, RSS: rss, PeakRSS: hwm}, nil
}

// parseCPU returns utime+stime from the contents of /proc/PID/stat. The
// command name (field 2) is in parentheses and may hold spaces and
// parentheses, so fields are counted from the last ')'.
func parseCPU(data []byte) (time.Duration, error) {
	end := bytes.LastIndexByte(data, ')')
	if end < 0 {
		return 0, errors.New("proc stat: no command name")
	}
	f := strings.Fields(string(data[end+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("proc stat: %d fields after the name, want at least 13", len(f))
	}
	var ticks uint64
	for _, s := range f[11:13] {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("proc stat: cpu time %q: %w", s, err)
		}
		if ticks+n < ticks || n > 1<<40 {
			return 0, fmt.Errorf("proc stat: cpu time %q: out of range", s)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// parseStatusKB returns the value of a "Key:   123 kB" line of
// /proc/PID/status, in bytes.
func parseStatusKB(data []byte, key string) (uint64, error) {
	for line := range strings.Lines(string(data)) {
		rest, ok := strings.CutPrefix(line, key)
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("proc status: %s %q: want \"N kB\"", key, strings.TrimSpace(rest))
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil || n > 1<<44 {
			return 0, fmt.Errorf("proc status: %s %q: bad number", key, f[0])
		}
		return n * 1024, nil
	}
	return 0, fmt.Errorf("proc status: no %s line", key)
}
