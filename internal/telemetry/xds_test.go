package telemetry

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// xdsSeries gathers reg into "name{value}" → value (one label at most).
func xdsSeries(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			key := f.GetName()
			for _, l := range m.GetLabel() {
				key += "{" + l.GetValue() + "}"
			}
			switch {
			case m.GetCounter() != nil:
				out[key] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				out[key] = m.GetGauge().GetValue()
			}
		}
	}
	return out
}

// TestXDSMetrics: every series exists at 0 from the start; NACKs count by
// the type URL's last element, unknown types as other; streams go up and
// down by mode.
func TestXDSMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewXDSMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	if got := xdsSeries(t, reg); len(got) != 9 {
		t.Fatalf("series = %v; want 9 (2 modes, refused, 5 nack types, published)", got)
	}
	m.StreamOpened("delta")
	m.StreamOpened("delta")
	m.StreamClosed("delta")
	m.StreamOpened("bogus") // not a mode: no series
	m.Nacked("type.googleapis.com/envoy.config.cluster.v3.Cluster")
	m.Nacked("type.googleapis.com/made.up.Thing")
	m.Refused()
	m.Published()
	got := xdsSeries(t, reg)
	want := map[string]float64{
		ControlXDSStreamsName + "{delta}": 1, ControlXDSStreamsName + "{sotw}": 0,
		ControlXDSNacksName + "{Cluster}": 1, ControlXDSNacksName + "{other}": 1, ControlXDSNacksName + "{Listener}": 0,
		ControlXDSNacksName + "{RouteConfiguration}": 0, ControlXDSNacksName + "{ClusterLoadAssignment}": 0,
		ControlXDSRefusedName: 1, ControlXDSPublishedName: 1,
	}
	if len(got) != len(want) {
		t.Errorf("series = %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
}
