package echo

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestClip(t *testing.T) {
	for _, tc := range []struct {
		s    string
		max  int
		want string
	}{
		{"short", 10, "short"},
		{"exactly10!", 10, "exactly10!"},
		{"0123456789abc", 10, "0123456789…[3 more bytes]"},
		{"ééééé", 3, "é…[8 more bytes]"}, // no cut inside a rune
		{"", 0, ""},
		{"x", 0, "…[1 more bytes]"},
	} {
		if got := Clip(tc.s, tc.max); got != tc.want {
			t.Errorf("Clip(%q, %d) = %q, want %q", tc.s, tc.max, got, tc.want)
		}
	}
}

func TestQuoteBounds(t *testing.T) {
	big := strings.Repeat("\x00", 1<<20) // each byte quotes as 4
	if q := Quote(big); len(q) > 4*Max+64 || !strings.Contains(q, "more bytes]") {
		t.Fatalf("Quote of 1 MiB: %d bytes", len(q))
	}
	if Quote("a") != `"a"` {
		t.Fatal(Quote("a"))
	}
}

func FuzzClip(f *testing.F) {
	f.Add("héllo wörld", 4)
	f.Fuzz(func(t *testing.T, s string, max int) {
		if max < 0 || max > 1<<16 {
			return
		}
		got := Clip(s, max)
		if len(s) <= max {
			if got != s {
				t.Fatalf("short input changed: %q", got)
			}
			return
		}
		kept, _, ok := strings.Cut(got, "…[")
		if !ok || len(kept) > max || !strings.HasPrefix(s, kept) {
			t.Fatalf("Clip(%q, %d) = %q", s, max, got)
		}
		if utf8.ValidString(s) && !utf8.ValidString(kept) {
			t.Fatalf("cut inside a rune: %q", kept)
		}
	})
}
