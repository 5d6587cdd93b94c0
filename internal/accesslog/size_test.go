package accesslog

import (
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		err  string
	}{
		{"100MiB", 100 << 20, ""},
		{"64KiB", 64 << 10, ""},
		{"1G", 1 << 30, ""},
		{"2mb", 2 << 20, ""},
		{"4096", 4096, ""},
		{"512", 0, "at least 1KiB"},
		{"10TiB", 0, "unknown unit"},
		{"MiB", 0, "whole number"},
		{"-1MiB", 0, "whole number"},
		{"1.5MiB", 0, "whole number"},
		{"99999999999999GiB", 0, "too large"},
		{"", 0, "whole number"},
	} {
		got, err := ParseSize(tc.in)
		if tc.err == "" && (err != nil || got != tc.want) {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
		if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("ParseSize(%q) = %d, %v; want an error with %q", tc.in, got, err, tc.err)
		}
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"100MiB", "1k", "4096", "", "G", "9223372036854775807"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err == nil && (n < 1<<10 || n > 1<<62) {
			t.Fatalf("ParseSize(%q) = %d", s, n)
		}
	})
}
