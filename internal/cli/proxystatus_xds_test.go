package cli

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"trellis.dev/trellis/internal/xds"
)

func xdsFixture(now time.Time) []xds.ClientStatus {
	return []xds.ClientStatus{
		{NodeID: "checkout-grpc-1", Kind: xds.KindXDS, Identity: "spiffe://trellis.local/ns/default/sa/checkout", Mode: xds.ModeSotW,
			Acked: map[string]string{resource.ListenerType: "41", resource.RouteType: "41", resource.ClusterType: "41", resource.EndpointType: "42"},
			Sent:  map[string]string{resource.EndpointType: "42"}, ConnectedAt: now.Add(-90 * time.Second)},
		{NodeID: "envoy-edge", Kind: xds.KindXDS, Identity: "spiffe://trellis.local/ns/edge/sa/envoy", Mode: xds.ModeDelta,
			Acked: map[string]string{resource.ListenerType: "40"}, Error: resource.RouteType + ": bad route", ConnectedAt: now.Add(-time.Hour)},
		{Kind: xds.KindXDS, Identity: "spiffe://trellis.local/ns/default/sa/new", Mode: xds.ModeSotW, Acked: map[string]string{}, ConnectedAt: now},
	}
}

// TestProxyStatusXDSGolden: xDS clients follow the proxies' table, with
// their ACKed version per type.
func TestProxyStatusXDSGolden(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	var buf bytes.Buffer
	if err := printProxyStatus(&buf, proxyFixture(now), nil, now); err != nil {
		t.Fatal(err)
	}
	if err := printXDSClients(&buf, xdsFixture(now), now); err != nil {
		t.Fatal(err)
	}
	golden(t, "proxy-status-xds", buf.Bytes())

	// No xDS clients: nothing added, the proxies' table as before.
	buf.Reset()
	if err := printXDSClients(&buf, nil, now); err != nil || buf.Len() != 0 {
		t.Errorf("no clients printed %q, %v", buf.String(), err)
	}
}

// TestProxyStatusXDSValue: -o json lists the proxies, then the clients
// with kind xds; without clients the list is the proxies' as before.
func TestProxyStatusXDSValue(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	b, err := json.Marshal(proxyStatusValue(proxyFixture(now), xdsFixture(now)))
	if err != nil {
		t.Fatal(err)
	}
	var got []map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	n := len(proxyFixture(now))
	if len(got) != n+3 || got[n]["kind"] != "xds" || got[n]["nodeId"] != "checkout-grpc-1" {
		t.Fatalf("json = %s", b)
	}
	if acked, _ := got[n]["acked"].(map[string]any); acked[resource.EndpointType] != "42" {
		t.Errorf("acked = %v", got[n]["acked"])
	}
	if _, ok := got[0]["kind"]; ok {
		t.Errorf("a proxy got a kind: %v", got[0])
	}
	b, _ = json.Marshal(proxyStatusValue(proxyFixture(now), nil))
	want, _ := json.Marshal(proxyFixture(now))
	if string(b) != string(want) {
		t.Errorf("without clients: %s\nwant the proxies' list as before: %s", b, want)
	}
}
