package control

import (
	"encoding/json"
	"net/http"
	"reflect"
	"testing"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/telemetry"
)

func getSD(t *testing.T, c *Control) []sdGroup {
	t.Helper()
	resp, err := http.Get("http://" + c.MetricsAddr() + PrometheusSDPath) // no token
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET %s: %d %q", PrometheusSDPath, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var gs []sdGroup
	if err := json.NewDecoder(resp.Body).Decode(&gs); err != nil {
		t.Fatal(err)
	}
	return gs
}

// TestPrometheusSD: the metrics listener lists itself and, once a proxy
// registers, the proxy's admin address with its service and namespace;
// no token is needed.
func TestPrometheusSD(t *testing.T) {
	c := startControl(t, t.TempDir())
	gs := getSD(t, c)
	if len(gs) != 1 || gs[0].Targets[0] != c.MetricsAddr() || gs[0].Labels["trellis_role"] != "control" {
		t.Fatalf("before any proxy: %+v, want only the control plane at %s", gs, c.MetricsAddr())
	}
	startProxySession(t, c, "frontend")
	deadline := time.Now().Add(5 * time.Second)
	for len(gs) < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		gs = getSD(t, c)
	}
	if len(gs) != 2 {
		t.Fatalf("after a proxy registered: %+v", gs)
	}
	p := gs[1]
	if !reflect.DeepEqual(p.Targets, []string{"127.0.0.1:15000"}) || p.Labels["trellis_role"] != "proxy" ||
		p.Labels["service"] != "frontend" || p.Labels["namespace"] != "default" || p.Labels["__meta_trellis_endpoint_id"] != "frontend-1" {
		t.Fatalf("proxy group %+v", p)
	}
	// The same proxy, in sync, in the push state gauge the out-of-sync
	// alert reads; every state is shown, 0 included.
	for time.Now().Before(deadline) {
		if v, _ := parseMetrics(t, scrape(t, c)).value(telemetry.ControlProxiesByStateName, "state", "SYNCED"); v == 1 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	m := parseMetrics(t, scrape(t, c))
	for st, want := range map[string]float64{"SYNCED": 1, "STALE": 0, "NACKED": 0, "PENDING": 0} {
		if v, ok := m.value(telemetry.ControlProxiesByStateName, "state", st); !ok || v != want {
			t.Errorf("%s{state=%s} = %v (%v), want %v", telemetry.ControlProxiesByStateName, st, v, ok, want)
		}
	}
}

func TestPrometheusTargets(t *testing.T) {
	eps := []*meshv1.Endpoint{
		{Id: "b-1", Service: "b", Namespace: "ns", Address: "127.0.0.1:2", AdminAddress: "127.0.0.1:20", Identity: "spiffe://td/ns/ns/sa/b",
			Labels: map[string]string{"version": "v2", "app.kubernetes.io/name": "b"}, Healthy: true},
		{Id: "a-1", Service: "a", Namespace: "ns", Address: "127.0.0.1:1", AdminAddress: "127.0.0.1:10"},
		{Id: "x-1", Service: "x", Namespace: "ns", Address: "127.0.0.1:3"}, // no admin: nothing to scrape
	}
	got := prometheusTargets("127.0.0.1:15012", eps)
	want := []sdGroup{
		{Targets: []string{"127.0.0.1:15012"}, Labels: map[string]string{"trellis_role": "control"}},
		{Targets: []string{"127.0.0.1:10"}, Labels: map[string]string{"trellis_role": "proxy", "service": "a", "namespace": "ns",
			"__meta_trellis_endpoint_id": "a-1", "__meta_trellis_identity": "", "__meta_trellis_inbound": "127.0.0.1:1", "__meta_trellis_healthy": "false"}},
		{Targets: []string{"127.0.0.1:20"}, Labels: map[string]string{"trellis_role": "proxy", "service": "b", "namespace": "ns",
			"__meta_trellis_endpoint_id": "b-1", "__meta_trellis_identity": "spiffe://td/ns/ns/sa/b", "__meta_trellis_inbound": "127.0.0.1:2",
			"__meta_trellis_healthy": "true", "__meta_trellis_label_version": "v2", "__meta_trellis_label_app_kubernetes_io_name": "b"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
}
