package control

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/telemetry"
)

// scrape fetches the control plane's /metrics over its real listener.
func scrape(t *testing.T, c *Control) []byte {
	t.Helper()
	resp, err := http.Get("http://" + c.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("GET /metrics: %d %q\n%s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	return body
}

type families map[string]*dto.MetricFamily

func parseMetrics(t *testing.T, body []byte) families {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	return fams
}

// value is the sample of name whose labels include want (name=value
// pairs): a counter's or gauge's value, a histogram's count. ok is false
// when there is no such sample.
func (f families) value(name string, want ...string) (v float64, ok bool) {
	fam := f[name]
	if fam == nil {
		return 0, false
	}
	for _, m := range fam.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		match := true
		for i := 0; i+1 < len(want); i += 2 {
			match = match && labels[want[i]] == want[i+1]
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

func (f families) must(t *testing.T, name string, want ...string) float64 {
	t.Helper()
	v, ok := f.value(name, want...)
	if !ok {
		t.Fatalf("/metrics has no %s%v", name, want)
	}
	return v
}

// TestMetricsFollowProxySession scrapes the real endpoint around a real
// proxy session (Certify, Register, Watch over mTLS) and an ACK and a NACK.
func TestMetricsFollowProxySession(t *testing.T) {
	c := startControl(t, t.TempDir())
	cl := newClient(t, c)
	if status, a := cl.apply(false, file{"svc.yaml", serviceYAML}, file{"route.yaml", routeYAML("split", 1)}); status != http.StatusOK {
		t.Fatalf("seed: %d %+v", status, a)
	}

	// waitMetric scrapes until name reaches want (an ACK is counted after
	// Apply returns; the view, which the resource gauge reads, follows the
	// store a little behind).
	waitMetric := func(name string, want float64, labels ...string) families {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			m := parseMetrics(t, scrape(t, c))
			if v, _ := m.value(name, labels...); v == want {
				return m
			}
			if time.Now().After(deadline) {
				v, _ := m.value(name, labels...)
				t.Fatalf("%s%v = %v, want %v", name, labels, v, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitMetric(telemetry.ControlResourcesName, 1, "kind", "HTTPRoute")
	m := parseMetrics(t, scrape(t, c))
	for _, tt := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{telemetry.ControlConnectedProxiesName, nil, 0},
		{telemetry.ControlResourcesName, []string{"kind", "Service"}, 1},
		{telemetry.ControlResourcesName, []string{"kind", "HTTPRoute"}, 1},
		{telemetry.ControlCertsIssuedName, []string{"reason", "bootstrap"}, 0},
		{telemetry.ControlSnapshotsPushedName, nil, 0},
	} {
		if got := m.must(t, tt.name, tt.labels...); got != tt.want {
			t.Errorf("before any proxy: %s%v = %v, want %v", tt.name, tt.labels, got, tt.want)
		}
	}
	if _, ok := m.value(telemetry.ControlCertSoonestExpiryName); ok {
		t.Error("soonest cert expiry reported with no proxy connected")
	}
	// The apply wrote one transaction (at least); the CA read its root.
	if n := m.must(t, telemetry.ControlStoreOpDurationName, "operation", "txn"); n < 1 {
		t.Errorf("store txn observations = %v, want >= 1", n)
	}
	if n := m.must(t, telemetry.ControlStoreOpDurationName, "operation", "get"); n < 1 {
		t.Errorf("store get observations = %v, want >= 1", n)
	}

	// A proxy that refuses weight 7.
	snaps, notAfter := startProxySessionWith(t, c, "frontend", func(s *meshv1.Snapshot) error {
		if weightOf(s, "inventory") == 7 {
			return errors.New("route split: weight 7 refused by test")
		}
		return nil
	}, "inventory.default")
	waitSnap := func(weight uint32) {
		t.Helper()
		for timeout := time.After(5 * time.Second); ; {
			select {
			case r := <-snaps:
				if weightOf(r.snap, "inventory") == weight {
					return
				}
			case <-timeout:
				t.Fatalf("no snapshot with weight %d", weight)
			}
		}
	}
	waitSnap(1)
	m = waitMetric(telemetry.ControlAcksName, 1)
	if got := m.must(t, telemetry.ControlConnectedProxiesName); got != 1 {
		t.Errorf("connected proxies = %v, want 1", got)
	}
	if got := m.must(t, telemetry.ControlSnapshotsPushedName); got != 1 {
		t.Errorf("pushes = %v, want 1", got)
	}
	if got := m.must(t, telemetry.ControlPushAckDurationName); got != 1 {
		t.Errorf("ack latency observations = %v, want 1 (one per ACK)", got)
	}
	if got := m.must(t, telemetry.ControlCertsIssuedName, "reason", "bootstrap"); got != 1 {
		t.Errorf("certificates issued = %v, want 1", got)
	}
	if got := m.must(t, telemetry.ControlCertSoonestExpiryName); got != float64(notAfter.Unix()) {
		t.Errorf("soonest cert expiry = %v, want the proxy's %d", got, notAfter.Unix())
	}

	// A NACK counts as a NACK, not an ACK ...
	if status, _ := cl.apply(false, file{"route.yaml", routeYAML("split", 7)}); status != http.StatusOK {
		t.Fatal("apply weight 7")
	}
	waitSnap(7)
	m = waitMetric(telemetry.ControlNacksName, 1)
	if got := m.must(t, telemetry.ControlAcksName); got != 1 {
		t.Errorf("acks after a NACK = %v, want still 1", got)
	}
	// ... and the next good config is ACKed.
	if status, _ := cl.apply(false, file{"route.yaml", routeYAML("split", 8)}); status != http.StatusOK {
		t.Fatal("apply weight 8")
	}
	waitSnap(8)
	m = waitMetric(telemetry.ControlAcksName, 2)
	if got := m.must(t, telemetry.ControlSnapshotsPushedName); got != 3 {
		t.Errorf("pushes = %v, want 3", got)
	}
	if got := m.must(t, telemetry.ControlNacksName); got != 1 {
		t.Errorf("nacks = %v, want 1", got)
	}
}

// TestMetricsPromtool checks the exposition with promtool's linter.
func TestMetricsPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (apt-get install prometheus)")
	}
	c := startControl(t, t.TempDir())
	cl := newClient(t, c)
	if status, _ := cl.apply(false, file{"svc.yaml", serviceYAML}); status != http.StatusOK {
		t.Fatal("apply")
	}
	startProxySession(t, c, "frontend", "inventory.default")
	body := scrape(t, c)
	for !bytes.Contains(body, []byte(telemetry.ControlCertSoonestExpiryName+" ")) {
		time.Sleep(10 * time.Millisecond)
		body = scrape(t, c)
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}

func TestMetricsEndpointOnlyServesMetrics(t *testing.T) {
	c := startControl(t, t.TempDir())
	resp, err := http.Get("http://" + c.MetricsAddr() + "/v1/proxies")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET /v1/proxies on the metrics listener: %d, want 404", resp.StatusCode)
	}
	addrs, err := ReadAddrs(c.o.DataDir)
	if err != nil || addrs.Metrics != c.MetricsAddr() {
		t.Fatalf("control.json metrics_addr = %q (%v), want %s", addrs.Metrics, err, c.MetricsAddr())
	}
}
