package telemetry

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func gather(t *testing.T, reg *prometheus.Registry) (map[string]*dto.MetricFamily, error) {
	t.Helper()
	fams, err := reg.Gather()
	m := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		m[f.GetName()] = f
	}
	return m, err
}

// TestControlStateGauges: the scrape-time gauges read the state, keep every
// known kind (0 when none is stored), and leave the expiry out when no proxy
// is connected rather than report 0 (which an alert would read as expired).
func TestControlStateGauges(t *testing.T) {
	var proxies int
	var expiry time.Time
	counts := map[string]int{"HTTPRoute": 2, "Future": 1}
	var countErr error
	reg := prometheus.NewRegistry()
	m, err := NewControlMetrics(reg, ControlState{
		ConnectedProxies:  func() int { return proxies },
		SoonestCertExpiry: func() (time.Time, bool) { return expiry, !expiry.IsZero() },
		Resources:         func(context.Context) (map[string]int, error) { return counts, countErr },
		Kinds:             []string{"Service", "HTTPRoute"},
		StoreOps:          []string{"get"},
	})
	if err != nil {
		t.Fatal(err)
	}
	fams, err := gather(t, reg)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := fams[ControlCertSoonestExpiryName]; ok {
		t.Error("expiry gauge present with no proxy connected")
	}
	got := map[string]float64{}
	for _, mm := range fams[ControlResourcesName].GetMetric() {
		got[mm.GetLabel()[0].GetValue()] = mm.GetGauge().GetValue()
	}
	if len(got) != 3 || got["Service"] != 0 || got["HTTPRoute"] != 2 || got["Future"] != 1 {
		t.Errorf("resources = %v; want Service 0, HTTPRoute 2, Future 1", got)
	}

	proxies, expiry = 3, time.Unix(1_900_000_000, 0)
	m.ObserveStoreOp("get", time.Millisecond)
	m.ObserveStoreOp("somethingnew", time.Millisecond)
	fams, _ = gather(t, reg)
	if v := fams[ControlConnectedProxiesName].GetMetric()[0].GetGauge().GetValue(); v != 3 {
		t.Errorf("connected = %v, want 3", v)
	}
	if v := fams[ControlCertSoonestExpiryName].GetMetric()[0].GetGauge().GetValue(); v != 1_900_000_000 {
		t.Errorf("expiry = %v, want 1900000000", v)
	}
	if n := len(fams[ControlStoreOpDurationName].GetMetric()); n != 2 {
		t.Errorf("store op series = %d, want 2 (get, somethingnew)", n)
	}

	// A failed count fails that gauge, not the others.
	countErr = errors.New("view not ready")
	fams, err = gather(t, reg)
	if err == nil {
		t.Error("gather hid the count error")
	}
	if _, ok := fams[ControlConnectedProxiesName]; !ok {
		t.Error("a failed resource count took the other gauges with it")
	}
}
