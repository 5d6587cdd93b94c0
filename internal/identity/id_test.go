package identity

import (
	"errors"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestWorkloadID(t *testing.T) {
	long := strings.Repeat("a", 64)
	tests := []struct {
		td, ns, sa string
		want       string
		err        string
	}{
		{td: "trellis.local", ns: "default", sa: "orders", want: "spiffe://trellis.local/ns/default/sa/orders"},
		{td: "example.org", ns: "shop-1", sa: "web.frontend", want: "spiffe://example.org/ns/shop-1/sa/web.frontend"},
		{td: "trellis.local", ns: strings.Repeat("a", 63), sa: "x", want: "spiffe://trellis.local/ns/" + strings.Repeat("a", 63) + "/sa/x"},
		{td: "", ns: "default", sa: "orders", err: "trust domain is empty"},
		{td: "spiffe://trellis.local", ns: "default", sa: "orders", err: "bare name"},
		{td: "Trellis.local", ns: "default", sa: "orders", err: "trust domain"},
		{td: "trellis.local", ns: "", sa: "orders", err: "namespace"},
		{td: "trellis.local", ns: "Default", sa: "orders", err: "namespace"},
		{td: "trellis.local", ns: "a/b", sa: "orders", err: "namespace"},
		{td: "trellis.local", ns: "-a", sa: "orders", err: "namespace"},
		{td: "trellis.local", ns: "a.b", sa: "orders", err: "namespace"},
		{td: "trellis.local", ns: long, sa: "orders", err: "longer than 63"},
		{td: "trellis.local", ns: "default", sa: "", err: "service account"},
		{td: "trellis.local", ns: "default", sa: "a..b", err: "service account"},
		{td: "trellis.local", ns: "default", sa: "my_sa", err: "service account"},
		{td: "trellis.local", ns: "default", sa: "..", err: "service account"},
		{td: "trellis.local", ns: "default", sa: strings.Repeat("a.", 127) + "a", err: "longer than 253"},
	}
	for _, tt := range tests {
		t.Run(tt.td+"|"+tt.ns+"|"+tt.sa, func(t *testing.T) {
			id, err := WorkloadID(tt.td, tt.ns, tt.sa)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if id.String() != tt.want {
				t.Fatalf("id = %s, want %s", id, tt.want)
			}
			ns, sa, err := ParseWorkloadID(id)
			if err != nil || ns != tt.ns || sa != tt.sa {
				t.Fatalf("ParseWorkloadID = %q, %q, %v; want %q, %q", ns, sa, err, tt.ns, tt.sa)
			}
		})
	}
}

func TestParseWorkloadID(t *testing.T) {
	tests := []struct {
		id     string
		ns, sa string
		err    bool
	}{
		{id: "spiffe://trellis.local/ns/default/sa/orders", ns: "default", sa: "orders"},
		{id: "spiffe://other.org/ns/prod/sa/api.v2", ns: "prod", sa: "api.v2"},
		{id: "spiffe://trellis.local", err: true},
		{id: "spiffe://trellis.local/ns/default", err: true},
		{id: "spiffe://trellis.local/ns/default/sa", err: true},
		{id: "spiffe://trellis.local/ns/default/sa/orders/extra", err: true},
		{id: "spiffe://trellis.local/sa/orders/ns/default", err: true},
		{id: "spiffe://trellis.local/ns/Default/sa/orders", err: true},
		{id: "spiffe://trellis.local/ns/default/sa/Orders", err: true},
		{id: "spiffe://trellis.local/x/default/sa/orders", err: true},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			id := spiffeid.RequireFromString(tt.id)
			ns, sa, err := ParseWorkloadID(id)
			if tt.err {
				if !errors.Is(err, ErrNotWorkloadID) {
					t.Fatalf("err = %v, want ErrNotWorkloadID", err)
				}
				return
			}
			if err != nil || ns != tt.ns || sa != tt.sa {
				t.Fatalf("got %q, %q, %v; want %q, %q", ns, sa, err, tt.ns, tt.sa)
			}
		})
	}
	if _, _, err := ParseWorkloadID(spiffeid.ID{}); !errors.Is(err, ErrNotWorkloadID) {
		t.Fatalf("zero ID: err = %v", err)
	}
}

// FuzzParseWorkloadID: whatever parses must round-trip through WorkloadID.
func FuzzParseWorkloadID(f *testing.F) {
	for _, s := range []string{
		"spiffe://trellis.local/ns/default/sa/orders",
		"spiffe://trellis.local/ns/a/sa/b.c",
		"spiffe://trellis.local/ns//sa/x",
		"spiffe://td/ns/a/sa/b/c",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := spiffeid.FromString(s)
		if err != nil {
			return
		}
		ns, sa, err := ParseWorkloadID(id)
		if err != nil {
			return
		}
		back, err := WorkloadID(id.TrustDomain().Name(), ns, sa)
		if err != nil {
			t.Fatalf("parsed %s as ns=%q sa=%q but WorkloadID refuses them: %v", id, ns, sa, err)
		}
		if back != id {
			t.Fatalf("round trip %s -> %s", id, back)
		}
	})
}
