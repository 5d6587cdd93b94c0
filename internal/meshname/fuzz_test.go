package meshname

import (
	"strings"
	"testing"
)

// FuzzParseHost: host parsing never panics; whatever it accepts is a
// name and namespace that are both labels, that ParseService agrees with,
// and whose canonical form parses back to the same pair; whatever it
// refuses, ParseService refuses with an ErrInvalid saying why.
func FuzzParseHost(f *testing.F) {
	for _, s := range []string{
		"orders", "orders.shop", "orders.shop.svc", "orders.shop.svc.trellis.local",
		"orders.shop.svc.trellis.local.", "orders.svc.trellis.local", "Orders", "a_b.c",
		"", ".", "..", "a..b", "orders.shop.svc..", "-a.b", "1.2.3.4", "[::1]",
		strings.Repeat("a", 64) + ".b",
	} {
		f.Add(s, "default", "trellis.local")
	}
	f.Add("a.b.svc.x", "Shop", "x")
	f.Add("a.b.svc.", "", "")
	f.Fuzz(func(t *testing.T, host, ownNS, domain string) {
		name, ns, ok := ParseHost(host, ownNS, domain)
		n, err := ParseService(host, ownNS, domain)
		if !ok {
			if name != "" || ns != "" {
				t.Fatalf("ParseHost(%q) refused but returned %q, %q", host, name, ns)
			}
			if err == nil {
				t.Fatalf("ParseHost(%q) refused, ParseService accepted %v", host, n)
			}
			if !strings.Contains(err.Error(), "not a service name") {
				t.Fatalf("ParseService(%q): %v does not say what it refused", host, err)
			}
			return
		}
		if !IsLabel(name) || !IsLabel(ns) {
			t.Fatalf("ParseHost(%q) = %q, %q: not both labels", host, name, ns)
		}
		if err != nil || n.Name != name || n.Namespace != ns {
			t.Fatalf("ParseHost(%q) = %q, %q but ParseService = %v, %v", host, name, ns, n, err)
		}
		q := n.String()
		back, err := ParseQualified(q)
		if err != nil || back != n || !IsQualified(q) {
			t.Fatalf("%q → %q does not round-trip: %v, %v", host, q, back, err)
		}
		// The canonical form is itself a host that means the same service.
		if n2, ns2, ok := ParseHost(q, "elsewhere", domain); !ok || n2 != name || ns2 != ns {
			t.Fatalf("canonical %q reparsed as %q, %q, %v", q, n2, ns2, ok)
		}
		if !strings.HasPrefix(strings.TrimSuffix(host, "."), q) && !(host == name || host == name+".") {
			t.Fatalf("ParseHost(%q) = %q: not a prefix of the host", host, q)
		}
	})
}

// FuzzCheckSubdomain: the bool and the error checks agree, and an accepted
// value is a list of labels.
func FuzzCheckSubdomain(f *testing.F) {
	for _, s := range []string{"a", "a.b", "a..b", "A.b", ".a", "a.", strings.Repeat("a.", 127)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ok, err := IsSubdomain(s), CheckSubdomain(s)
		if ok != (err == nil) {
			t.Fatalf("IsSubdomain(%q) = %v but CheckSubdomain = %v", s, ok, err)
		}
		if IsLabel(s) != (CheckLabel(s) == nil) {
			t.Fatalf("IsLabel(%q) and CheckLabel disagree", s)
		}
		if !ok {
			return
		}
		for _, l := range strings.Split(s, ".") {
			if !IsLabel(l) {
				t.Fatalf("IsSubdomain(%q) with part %q", s, l)
			}
		}
	})
}
