package control

import "testing"

// TestResolveKindPlurals: the admin API takes a kind by name or by the
// plural the CLI sends, "-y" kinds' "-ies" included.
func TestResolveKindPlurals(t *testing.T) {
	for in, want := range map[string]string{
		"HTTPRoute": "HTTPRoute", "httproutes": "HTTPRoute", "service": "Service", "services": "Service",
		"backendpolicies": "BackendPolicy", "concurrencypolicies": "ConcurrencyPolicy", "ConcurrencyPolicy": "ConcurrencyPolicy",
	} {
		if got, ok := resolveKind(in); !ok || got != want {
			t.Errorf("resolveKind(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
	if _, ok := resolveKind("policies"); ok {
		t.Error("resolveKind(policies) accepted")
	}
}
