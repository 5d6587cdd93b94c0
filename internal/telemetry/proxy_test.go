package telemetry

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
)

func TestProxyMetricsLabels(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewProxyMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	m.Request(Outbound, "orders.default", 200, 3*time.Millisecond)
	m.Request(Outbound, "orders.default", 200, 20*time.Millisecond)
	m.Dest(Inbound, "orders.default").Request(503, "LA", time.Millisecond)
	m.Dest(Inbound, "orders.default").Request(503, "LA", time.Millisecond)
	m.Dest(Inbound, "orders.default").Request(503, NoFlags, time.Millisecond)
	m.Dest(Inbound, "orders.default").Request(42, NoFlags, time.Millisecond) // out of the cached range
	m.TCPConnection(Outbound, "db.default")
	m.TCPConnection(Outbound, "db.default")

	got := map[string]float64{}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, met := range mf.GetMetric() {
			var b strings.Builder
			b.WriteString(mf.GetName())
			for _, lp := range met.GetLabel() {
				b.WriteString("," + lp.GetName() + "=" + lp.GetValue())
			}
			v := met.GetCounter().GetValue()
			if met.GetHistogram() != nil {
				v = float64(met.GetHistogram().GetSampleCount())
			}
			got[b.String()] = v
		}
	}
	for k, v := range map[string]float64{
		RequestsTotalName + ",destination_service=orders.default,direction=inbound,response_code=42,response_flags=-":     1,
		RequestsTotalName + ",destination_service=orders.default,direction=inbound,response_code=503,response_flags=-":    1,
		RequestsTotalName + ",destination_service=orders.default,direction=inbound,response_code=503,response_flags=LA":   2,
		RequestsTotalName + ",destination_service=orders.default,direction=outbound,response_code=200,response_flags=-":   2,
		RequestDurationName + ",destination_service=orders.default,direction=outbound,response_code=200,response_flags=-": 2,
		TCPConnectionsName + ",destination_service=db.default,direction=outbound":                                         2,
	} {
		if got[k] != v {
			t.Errorf("%s = %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
	var found bool
	for _, mf := range mfs {
		if mf.GetName() != RequestDurationName {
			continue
		}
		for _, met := range mf.GetMetric() {
			h := met.GetHistogram()
			if len(h.GetBucket()) != len(RequestDurationBuckets) {
				t.Fatalf("buckets = %d, want %d", len(h.GetBucket()), len(RequestDurationBuckets))
			}
			for _, lp := range met.GetLabel() {
				if lp.GetName() == "response_code" && lp.GetValue() == "200" && h.GetSampleCount() == 2 {
					found = true
					// 3ms lands in le=0.005, 20ms in le=0.025.
					if got := h.GetBucket()[3].GetCumulativeCount(); got != 1 {
						t.Errorf("le=0.005 count = %d, want 1", got)
					}
				}
			}
		}
	}
	if !found {
		t.Fatal("no duration series for outbound 200 with 2 samples")
	}
}

func TestProxyMetricsDoubleRegister(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := NewProxyMetrics(reg); err != nil {
		t.Fatal(err)
	}
	if _, err := NewProxyMetrics(reg); err == nil {
		t.Fatal("second registration on the same registry succeeded")
	}
}

func TestProxyMetricsHotPathAllocs(t *testing.T) {
	m, err := NewProxyMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	d := m.Dest(Outbound, "orders.default")
	d.Request(200, NoFlags, time.Millisecond)
	d.Request(503, "UH", time.Millisecond)
	d.TCPConnection()
	if n := testing.AllocsPerRun(100, func() {
		d.Request(200, NoFlags, time.Millisecond)
		d.Request(503, "UH", time.Millisecond)
		d.TCPConnection()
	}); n != 0 {
		t.Fatalf("allocs per cached request = %v, want 0", n)
	}
	if n := testing.AllocsPerRun(100, func() { m.Request(Outbound, "orders.default", 200, time.Millisecond) }); n != 0 {
		t.Fatalf("allocs per Request = %v, want 0", n)
	}
}

// TestStatSumsOverFlags: the stat table reads the proxy's metrics; series
// that differ only in response_flags add up to one row key.
func TestStatSumsOverFlags(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewProxyMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	d := m.Dest(Outbound, "orders.default")
	d.Request(503, NoFlags, time.Millisecond)
	d.Request(503, "UH", time.Millisecond)
	d.Request(503, "UH", time.Millisecond)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
			t.Fatal(err)
		}
	}
	s, err := ParseMetrics(strings.NewReader(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	k := SeriesKey{Direction: Outbound, Service: "orders.default", Code: "503"}
	if s.Requests[k] != 3 {
		t.Fatalf("requests %v = %v, want 3 (all: %v)", k, s.Requests[k], s.Requests)
	}
	if h := s.Durations[k]; len(h.Counts) == 0 || h.Counts[len(h.Counts)-1] != 3 {
		t.Fatalf("duration histogram %v, want 3 observations", h)
	}
}
