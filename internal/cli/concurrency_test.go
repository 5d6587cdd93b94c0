package cli

import (
	"bytes"
	"strings"
	"testing"

	"trellis.dev/trellis/internal/push"
)

// TestConcurrencyStatusGolden: the proxies of the targeted Services, and
// only those, with their reported limit ("-" before they applied the
// policy) and shed count.
func TestConcurrencyStatusGolden(t *testing.T) {
	policy := map[string]any{
		"kind":     "ConcurrencyPolicy",
		"metadata": map[string]any{"name": "orders", "namespace": "default"},
		"spec": map[string]any{
			"targetRefs": []any{map[string]any{"kind": "Service", "name": "orders"}},
			"adaptive":   map[string]any{"minLimit": 3, "maxLimit": 500},
		},
	}
	list := []push.ProxyStatus{
		{NodeID: "orders-default-0a1b2c3d", Service: "orders", Namespace: "default", ConcurrencyLimit: 24, ConcurrencyShed: 1203},
		{NodeID: "orders-default-9f8e7d6c", Service: "orders", Namespace: "default"},
		{NodeID: "orders-shop-11111111", Service: "orders", Namespace: "shop", ConcurrencyLimit: 7},
		{NodeID: "web-default-22222222", Service: "web", Namespace: "default", ConcurrencyLimit: 9},
	}
	var buf bytes.Buffer
	if err := printConcurrencyStatus(&buf, policy, list); err != nil {
		t.Fatal(err)
	}
	golden(t, "get-concurrencypolicy-status", buf.Bytes())
	if got := summarize(policy); got != "targets orders: limit 3..500" {
		t.Errorf("summary %q", got)
	}
	buf.Reset()
	if err := printConcurrencyStatus(&buf, policy, list[3:]); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "No proxy of orders is connected.") {
		t.Errorf("no proxies: %q", buf.String())
	}
}

// TestGetConcurrencyPolicyLive: against a real control plane, get by name
// prints the policy and then its proxies.
func TestGetConcurrencyPolicyLive(t *testing.T) {
	lc := startLiveControl(t)
	lc.must("", "apply", "-f", repoFile("examples", "traffic", "concurrency-limit.yaml"))
	out := lc.must("", "get", "cp", "orders")
	if !strings.Contains(out, "targets orders: limit 3..500") || !strings.Contains(out, "No proxy of orders is connected.") {
		t.Fatalf("get cp orders:\n%s", out)
	}
}
