package imagetrim

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

const sample = `00400000-0130b000 r-xp 00000000 fe:00 10871059                           /opt/trellis/bin/trellis
Size:              15404 kB
Rss:               13420 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
Swap:                  0 kB
0130b000-02650000 r--p 00f0b000 fe:00 10871059                           /opt/trellis/bin/trellis
Rss:               13844 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
02650000-02660000 r--p 02250000 fe:00 10871059                           /opt/trellis/bin/trellis
Rss:                  64 kB
Private_Dirty:         8 kB
Anonymous:             8 kB
02660000-026f6000 rw-p 02260000 fe:00 10871059                           /opt/trellis/bin/trellis
Rss:                 664 kB
Private_Dirty:       236 kB
Anonymous:           236 kB
7fec070de000-7fec07234000 r-xp 00028000 fe:00 131                        /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                 904 kB
Private_Dirty:         0 kB
7ffd1000-7ffd2000 r-xp 00000000 00:00 0                                  [vdso]
Rss:                   4 kB
`

func TestTrimmable(t *testing.T) {
	got := trimmable(strings.NewReader(sample), "/opt/trellis/bin/trellis")
	want := []span{{0x400000, 0x130b000, 13420 << 10}, {0x130b000, 0x2650000, 13844 << 10}}
	if len(got) != len(want) {
		t.Fatalf("got %d spans %+v, want the clean code and rodata only", len(got), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("span %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	// A relocated table (dirty), the data segment, another library, an
	// executable path that only starts the same: none is dropped.
	if got := trimmable(strings.NewReader(sample), "/opt/trellis/bin/trell"); len(got) != 0 {
		t.Errorf("another path's mappings: %+v", got)
	}
}

func TestTrimmableSwapped(t *testing.T) {
	in := "00400000-00500000 r--p 00000000 fe:00 1 /bin/x\nRss: 4 kB\nSwap: 8 kB\n"
	if got := trimmable(strings.NewReader(in), "/bin/x"); len(got) != 0 {
		t.Errorf("a mapping with swapped pages was private: %+v", got)
	}
}

func rssFile(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip("no /proc")
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "RssFile:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Skip("no RssFile")
	return 0
}

// TestTrimDropsPages: in this very process, the executable's clean pages
// leave the resident set and the program runs on (its code faults back).
func TestTrimDropsPages(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("linux only")
	}
	before := rssFile(t)
	dropped, err := Trim()
	if err != nil {
		t.Fatal(err)
	}
	after := rssFile(t)
	if dropped <= 0 || after >= before {
		t.Fatalf("dropped %d bytes; RssFile %d -> %d", dropped, before, after)
	}
	// Code and tables are still there: format, grow stacks, collect.
	var deep func(n int) string
	deep = func(n int) string {
		if n == 0 {
			return strconv.Itoa(42)
		}
		return deep(n - 1)
	}
	if deep(2000) != "42" {
		t.Fatal("wrong result after the trim")
	}
	runtime.GC()
	t.Logf("dropped %d KiB; RssFile %d -> %d KiB", dropped>>10, before>>10, after>>10)
}

func FuzzTrimmable(f *testing.F) {
	f.Add(sample, "/opt/trellis/bin/trellis")
	f.Add("0-1 r-xp 0 0 0 x\nRss: -1 kB\n", "x")
	f.Add("ffffffffffffffff-0 r--p 0 0 0 x\n", "x")
	f.Fuzz(func(t *testing.T, in, exe string) {
		for _, s := range trimmable(strings.NewReader(in), exe) {
			if s.end <= s.start {
				t.Fatalf("empty or inverted span %+v", s)
			}
		}
	})
}
