package meshname

import (
	"errors"
	"strings"
	"testing"
)

var (
	label63 = strings.Repeat("a", 63)
	label64 = strings.Repeat("a", 64)
)

// The cases where the copies this package replaced disagreed: registry
// took anything without '/' or spaces (upper case, '_', '.', 64+ bytes,
// leading '-'); the proxy lower-cased hosts first; config, identity, push,
// proxy and compiler agreed on the RFC 1123 label.
func TestLabel(t *testing.T) {
	tests := []struct {
		in      string
		wantErr string // "" for valid
	}{
		{"orders", ""},
		{"a", ""},
		{"0", ""},
		{"1orders", ""}, // leading digit: RFC 1123 allows it (RFC 952 did not)
		{"v2-api", ""},
		{"a--b", ""},
		{label63, ""},
		{"", "required"},
		{label64, "longer than 63 characters"},
		{"Orders", `"Orders" is not a valid name: upper case is not allowed (did you mean "orders"?)`},
		{"orders_v2", `"orders_v2" is not a valid name: '_' is not allowed`},
		{"orders.shop", `'.' is not allowed in a name`},
		{"-orders", "starts with '-'"},
		{"orders-", "ends with '-'"},
		{"-", "starts with '-'"},
		{"ordérs", "is not allowed"},
		{"a b", "' ' is not allowed"},
		{"a/b", "'/' is not allowed"},
	}
	for _, tt := range tests {
		err := CheckLabel(tt.in)
		if got := IsLabel(tt.in); got != (tt.wantErr == "") {
			t.Errorf("IsLabel(%q) = %v", tt.in, got)
		}
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("CheckLabel(%q) = %v; want nil", tt.in, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("CheckLabel(%q) = %v; want %q", tt.in, err, tt.wantErr)
		case err != nil && !errors.Is(err, ErrInvalid):
			t.Errorf("CheckLabel(%q) = %v; not ErrInvalid", tt.in, err)
		case err != nil && tt.in != "" && !strings.Contains(err.Error(), "RFC 1123 label") && len(tt.in) <= 63:
			t.Errorf("CheckLabel(%q) = %v; want the rule named", tt.in, err)
		}
	}
}

func TestSubdomain(t *testing.T) {
	long := strings.Repeat("a.", 126) + "ab" // 254
	tests := []struct{ in, wantErr string }{
		{"orders", ""},
		{"orders.v1", ""},
		{"trellis.local", ""},
		{label63 + "." + label63, ""},
		{strings.Repeat("a.", 126) + "a", ""}, // 253
		{"", "required"},
		{long, "longer than 253 characters"},
		{"orders..v1", `part 2 ("") : it is empty`},
		{"orders.", `part 2 ("") : it is empty`},
		{".orders", `part 1 ("") : it is empty`},
		{"orders." + label64, "part 2 (\"" + label64 + "\") : it is longer than 63"},
		{"orders.V1", `part 2 ("V1") : upper case`},
		{"my_sa", "'_' is not allowed"},
	}
	for _, tt := range tests {
		tt.wantErr = strings.ReplaceAll(tt.wantErr, ") :", "):")
		err := CheckSubdomain(tt.in)
		if got := IsSubdomain(tt.in); got != (tt.wantErr == "") {
			t.Errorf("IsSubdomain(%q) = %v", tt.in, got)
		}
		if tt.wantErr == "" {
			if err != nil {
				t.Errorf("CheckSubdomain(%q) = %v; want nil", tt.in, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrInvalid) {
			t.Errorf("CheckSubdomain(%q) = %v; want %q", tt.in, err, tt.wantErr)
		}
	}
}

func TestParseDomain(t *testing.T) {
	tests := []struct{ in, want, wantErr string }{
		{"trellis.local", "trellis.local", ""},
		{"cluster.local.", "cluster.local", ""}, // absolute form
		{"Trellis.Local", "trellis.local", ""},  // DNS is case-insensitive
		{"local", "local", ""},
		{"", "", "required"},
		{".", "", "required"},
		{"trellis..local", "", `domain "trellis..local" is not a valid name: part 2`},
		{"trellis_local", "", "'_' is not allowed"},
		{"trellis.local..", "", "part 3"},
	}
	for _, tt := range tests {
		got, err := ParseDomain(tt.in)
		if tt.wantErr == "" {
			if err != nil || got != tt.want {
				t.Errorf("ParseDomain(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseDomain(%q) = %q, %v; want error %q", tt.in, got, err, tt.wantErr)
		}
	}
}

func TestParseQualified(t *testing.T) {
	tests := []struct{ in, wantErr string }{
		{"orders.shop", ""},
		{"1a.b2", ""},
		{"orders", "has no '.'"},
		{"orders.shop.svc", `namespace: "shop.svc" is not a valid name`},
		{"orders.shop.", `namespace: "shop." is not a valid name`}, // the wire form has no trailing dot
		{"Orders.shop", `name: "Orders" is not a valid name`},
		{".shop", "name: required"},
		{"orders.", "namespace: required"},
		{"orders." + label64, "namespace: \"" + label64 + "\" is longer than 63"},
	}
	for _, tt := range tests {
		n, err := ParseQualified(tt.in)
		if got := IsQualified(tt.in); got != (tt.wantErr == "") {
			t.Errorf("IsQualified(%q) = %v", tt.in, got)
		}
		if tt.wantErr == "" {
			if err != nil || n.String() != tt.in {
				t.Errorf("ParseQualified(%q) = %v, %v", tt.in, n, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseQualified(%q) = %v; want %q", tt.in, err, tt.wantErr)
		}
	}
}

// Host forms, including where the proxy (meshName) and the compiler
// (parseSubscription) disagreed: the compiler refused "name.ns.svc" and read
// "orders.svc.trellis.local" as orders in the default namespace; the proxy
// took the first and refused the second. Both now follow the proxy.
func TestParseHost(t *testing.T) {
	const own, dom = "default", "trellis.local"
	tests := []struct {
		host, name, ns string // name "" means refused
		wantErr        string // ParseService's reason
	}{
		{"orders", "orders", "default", ""},
		{"orders.", "orders", "default", ""},
		{"orders.shop", "orders", "shop", ""},
		{"orders.shop.", "orders", "shop", ""},
		{"orders.shop.svc", "orders", "shop", ""},
		{"orders.shop.svc.", "orders", "shop", ""},
		{"orders.shop.svc.trellis.local", "orders", "shop", ""},
		{"orders.shop.svc.trellis.local.", "orders", "shop", ""},
		{"1orders.2shop", "1orders", "2shop", ""},
		{"orders.svc.trellis.local", "", "", `the part after the namespace must be "svc"`},
		{"orders.shop.cluster", "", "", `must be "svc"`},
		{"orders.shop.svc.cluster.local", "", "", `its domain is not "trellis.local"`},
		{"orders.shop.svc.trellis", "", "", "its domain is not"},
		{"orders.shop.svc.trellis.local.x", "", "", "its domain is not"},
		{"orders.shop.svc..", "", "", "empty domain"},
		{"orders.shop..", "", "", `an empty part ("..")`},
		{"orders..", "", "", "namespace: required"},
		{"", "", "", "name: required"},
		{".", "", "", "name: required"},
		{"..", "", "", "name: required"},
		{".shop", "", "", "name: required"},
		{"Orders.shop", "", "", `name: "Orders" is not a valid name: upper case`},
		{"orders.Shop", "", "", `namespace: "Shop" is not a valid name: upper case`},
		{"orders_v2.shop", "", "", `name: "orders_v2" is not a valid name`},
		{"orders." + label64, "", "", "longer than 63"},
		{label64, "", "", "name: \"" + label64 + "\" is longer than 63"},
		{"orders:80", "", "", `':' is not allowed`}, // ports are the caller's to strip
		{"127.0.0.1", "", "", `must be "svc"`},
		{"10.0.0.1.2", "", "", `must be "svc"`},
	}
	for _, tt := range tests {
		name, ns, ok := ParseHost(tt.host, own, dom)
		if ok != (tt.name != "") || name != tt.name || ns != tt.ns {
			t.Errorf("ParseHost(%q) = %q, %q, %v; want %q, %q", tt.host, name, ns, ok, tt.name, tt.ns)
		}
		n, err := ParseService(tt.host, own, dom)
		if tt.name != "" {
			if err != nil || n != (Name{tt.name, tt.ns}) {
				t.Errorf("ParseService(%q) = %v, %v; want %s.%s", tt.host, n, err, tt.name, tt.ns)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseService(%q) = %v; want %q", tt.host, err, tt.wantErr)
		}
	}
}

func TestParseHostOwnNamespace(t *testing.T) {
	if _, _, ok := ParseHost("orders", "", DefaultDomain); ok {
		t.Error("a bare name with an empty own namespace was accepted")
	}
	if _, _, ok := ParseHost("orders", "Shop", DefaultDomain); ok {
		t.Error("a bare name with an invalid own namespace was accepted")
	}
	if _, err := ParseService("orders", "", DefaultDomain); err == nil || !strings.Contains(err.Error(), "namespace: required") {
		t.Errorf("ParseService with no default namespace: %v", err)
	}
	// An empty domain leaves only the forms without one.
	if _, _, ok := ParseHost("orders.shop.svc.", "default", ""); !ok {
		t.Error("name.ns.svc. refused with an empty domain")
	}
	if _, _, ok := ParseHost("orders.shop.svc.x", "default", ""); ok {
		t.Error("a domain accepted where none is configured")
	}
}

// The proxy calls these per request; they must not allocate.
func TestNoAllocations(t *testing.T) {
	hosts := []string{"orders", "orders.shop.svc.trellis.local", "Orders.shop", "orders.shop.svc.cluster.local", "x_y"}
	n := 0 // results are used so that no call can be optimised away
	allocs := testing.AllocsPerRun(100, func() {
		for _, h := range hosts {
			if _, _, ok := ParseHost(h, "default", DefaultDomain); ok {
				n++
			}
			if IsLabel(h) || IsSubdomain(h) || IsQualified(h) {
				n++
			}
		}
	})
	if n == 0 {
		t.Fatal("no host accepted")
	}
	if allocs != 0 {
		t.Errorf("%v allocations per run; want 0", allocs)
	}
}

func BenchmarkParseHost(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		ParseHost("orders.shop.svc.trellis.local", "default", DefaultDomain)
	}
}
