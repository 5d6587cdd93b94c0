package push

import (
	"net"
	"slices"
	"strings"
	"testing"
)

func FuzzNormalizeSubscriptions(f *testing.F) {
	f.Add("orders.default\npayments.prod\norders.default")
	f.Add("a.b")
	f.Add(".\nx.\n.y\nA.b\na-.b\na.b.c")
	f.Fuzz(func(t *testing.T, in string) {
		subs := strings.Split(in, "\n")
		out, err := normalizeSubscriptions(subs)
		if err != nil {
			return
		}
		if !slices.IsSorted(out) || len(slices.Compact(slices.Clone(out))) != len(out) {
			t.Fatalf("not sorted and deduped: %q", out)
		}
		for _, s := range out {
			name, ns, ok := strings.Cut(s, ".")
			if !ok || !validLabel(name) || !validLabel(ns) || !slices.Contains(subs, s) {
				t.Fatalf("accepted %q", s)
			}
		}
	})
}

func FuzzValidLabel(f *testing.F) {
	for _, s := range []string{"orders", "a-b", "-a", "a-", "A", "", strings.Repeat("a", 64)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !validLabel(s) {
			return
		}
		if len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' || strings.ToLower(s) != s || strings.ContainsAny(s, "./_ ") {
			t.Fatalf("accepted %q", s)
		}
	})
}

// FuzzParseAddrs: any --control value is refused with an error or split
// into distinct host:port addresses that Dial can use.
func FuzzParseAddrs(f *testing.F) {
	for _, s := range []string{"127.0.0.1:15010", "a:1,b:2,c:3", "[::1]:1, [::1]:2", "a:1,a:1", ",", "a:0", "a", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		addrs, err := ParseAddrs(s)
		if err != nil {
			return
		}
		if len(addrs) == 0 || len(addrs) > maxAddrs {
			t.Fatalf("%q: %d addresses", s, len(addrs))
		}
		seen := map[string]bool{}
		for _, a := range addrs {
			host, port, err := net.SplitHostPort(a)
			if err != nil || host == "" || port == "" || seen[a] {
				t.Fatalf("%q: bad or repeated address %q (%v)", s, a, err)
			}
			seen[a] = true
		}
	})
}
