package main

import (
	"strings"
	"testing"
	"time"
)

func TestParseProc(t *testing.T) {
	stat := "4242 (trellis (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 12 0 100 0 0"
	if cpu, err := parseCPU([]byte(stat)); err != nil || cpu != 3*time.Second {
		t.Fatalf("parseCPU = %v, %v; want 3s", cpu, err)
	}
	status := "Name:\ttrellis\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n"
	if rss, err := parseStatusKB([]byte(status), "VmRSS:"); err != nil || rss != 1<<20 {
		t.Fatalf("VmRSS = %d, %v", rss, err)
	}
	for _, bad := range []string{"4242 trellis S", "1 (x) S 1 2 3", "1 (x) S 1 2 3 4 5 6 7 8 9 10 x 1"} {
		if _, err := parseCPU([]byte(bad)); err == nil {
			t.Errorf("parseCPU(%q) accepted", bad)
		}
	}
	for _, bad := range []string{"VmRSS: 12\n", "VmRSS: x kB\n", "Name: t\n"} {
		if _, err := parseStatusKB([]byte(bad), "VmRSS:"); err == nil || !strings.Contains(err.Error(), "VmRSS") {
			t.Errorf("parseStatusKB(%q) = %v", bad, err)
		}
	}
}

func FuzzParseProc(f *testing.F) {
	f.Add([]byte("1 (a) S 1 1 1 0 -1 0 0 0 0 0 5 5 0 0"), []byte("VmRSS:\t 12 kB\n"))
	f.Add([]byte("1 (a)) R"), []byte("VmRSS: kB"))
	f.Fuzz(func(t *testing.T, stat, status []byte) {
		if cpu, err := parseCPU(stat); err == nil && cpu < 0 {
			t.Fatalf("negative cpu %v", cpu)
		}
		_, _ = parseStatusKB(status, "VmRSS:")
	})
}
