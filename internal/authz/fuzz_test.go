package authz

import (
	"net/http"
	"path"
	"strings"
	"testing"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// FuzzCleanPath: the path authorization matches is clean (path.Clean's
// idea of it, bar a kept trailing slash), and cleaning a clean path changes
// nothing, so no spelling of a path reaches the app unmatched.
func FuzzCleanPath(f *testing.F) {
	for _, s := range []string{"/", "/a/../b", "//x", "/./", "/a/.", "/..", "/a/.../b", "", "a/b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		c := cleanPath(p)
		if !isClean(c) {
			t.Fatalf("cleanPath(%q) = %q is not clean", p, c)
		}
		if cleanPath(c) != c {
			t.Fatalf("cleanPath not idempotent: %q → %q → %q", p, c, cleanPath(c))
		}
		if strings.HasPrefix(p, "/") && path.Clean(c) != path.Clean(p) {
			t.Fatalf("cleanPath(%q) = %q, path.Clean says %q", p, c, path.Clean(p))
		}
	})
}

// FuzzDecide: for any request, a DENY policy on /admin denies every path
// that cleans to /admin or below, and the namespace source matches exactly
// the IDs whose path is /ns/shop/sa/<one segment>.
func FuzzDecide(f *testing.F) {
	f.Add("spiffe://td/ns/shop/sa/web", "/admin/x", "GET")
	f.Add("spiffe://td/ns/shop/sa/a/b", "/public/../admin", "POST")
	f.Add("spiffe://td/ns/shop/sa/a/b", "/x", "GET")
	f.Add("", "//admin", "GET")
	f.Add("spiffe://td/ns/shopx/sa/web", "/x", "PUT")
	e, err := Compile(&meshv1.Authorization{Policies: []*meshv1.AuthzPolicy{
		pol("a/deny-admin", true, &meshv1.AuthzRule{Paths: []*meshv1.AuthzPath{prefix("/admin")}}),
		pol("a/allow-shop", false, &meshv1.AuthzRule{From: []*meshv1.AuthzSource{ns("shop")}}),
	}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, peer, p, method string) {
		d := e.Decide(&Facts{PeerID: peer, Port: 80, Method: method, Path: p, Header: http.Header{}})
		c := path.Clean("/" + p)
		admin := c == "/admin" || strings.HasPrefix(c, "/admin/")
		if admin && strings.HasPrefix(p, "/") && d.Allow {
			t.Fatalf("%q (clean %q) allowed past the /admin deny: %+v", p, c, d)
		}
		if admin || !strings.HasPrefix(p, "/") {
			return
		}
		rest, ok := strings.CutPrefix(peer, "spiffe://")
		inShop := false
		if i := strings.IndexByte(rest, '/'); ok && i >= 0 {
			sa, found := strings.CutPrefix(rest[i:], "/ns/shop/sa/")
			inShop = found && sa != "" && !strings.Contains(sa, "/")
		}
		if d.Allow != inShop {
			t.Fatalf("peer %q: allow = %v, want %v", peer, d.Allow, inShop)
		}
	})
}
