package control

import "testing"

// TestResolveKindPlurals: the CLI sends plurals; a kind ending in -y
// (BackendPolicy, RateLimitPolicy) is -ies.
func TestResolveKindPlurals(t *testing.T) {
	for in, want := range map[string]string{
		"ratelimitpolicies":   "RateLimitPolicy",
		"backendpolicies":     "BackendPolicy",
		"RateLimitPolicy":     "RateLimitPolicy",
		"httproutes":          "HTTPRoute",
		"services":            "Service",
		"concurrencypolicies": "ConcurrencyPolicy",
		"ConcurrencyPolicy":   "ConcurrencyPolicy",
	} {
		if got, ok := resolveKind(in); !ok || got != want {
			t.Errorf("resolveKind(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
	if _, ok := resolveKind("ratelimits"); ok {
		t.Error("a name of no kind resolved")
	}
}
