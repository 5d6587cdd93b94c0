package telemetry

import (
	"bytes"
	"flag"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

var update = flag.Bool("update", false, "rewrite golden files")

var inf = math.Inf(1)

func TestHistogramQuantile(t *testing.T) {
	b := []float64{0.001, 0.005, 0.01, inf}
	tests := []struct {
		name   string
		q      float64
		bounds []float64
		counts []float64
		want   float64 // NaN: no estimate
	}{
		// rank 20 falls in (0.001, 0.005] holding 20, 10 into it: 0.001 + 0.004*10/20.
		{"p50 interpolates", 0.5, b, []float64{10, 30, 40, 40}, 0.003},
		// rank 39.6 in (0.005, 0.01] holding 10, 9.6 into it: 0.005 + 0.005*0.96.
		{"p99 interpolates", 0.99, b, []float64{10, 30, 40, 40}, 0.0098},
		// rank 10 is exactly the first bucket's count: its upper bound.
		{"first bucket from zero", 0.25, b, []float64{10, 30, 40, 40}, 0.001},
		// rank 19.8 is past the last finite bucket: its bound, not +Inf.
		{"rank in +Inf bucket", 0.99, b, []float64{10, 10, 10, 20}, 0.01},
		// counts 10, 8 are repaired to 10, 10; rank 10 lands in the first bucket.
		{"non-monotonic repaired", 0.5, b, []float64{10, 8, 20, 20}, 0.001},
		{"negative first bound", 0.2, []float64{-1, 0, inf}, []float64{5, 10, 10}, -1},
		{"empty histogram", 0.5, b, []float64{0, 0, 0, 0}, math.NaN()},
		{"no +Inf bucket", 0.5, []float64{0.1, 0.2}, []float64{1, 2}, math.NaN()},
		{"single bucket", 0.5, []float64{inf}, []float64{3}, math.NaN()},
		{"q above 1", 1.5, b, []float64{10, 30, 40, 40}, math.NaN()},
		{"q below 0", -0.1, b, []float64{10, 30, 40, 40}, math.NaN()},
		{"mismatched lengths", 0.5, b, []float64{1, 2}, math.NaN()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := histogramQuantile(tt.q, Histogram{Bounds: tt.bounds, Counts: tt.counts})
			if math.IsNaN(tt.want) {
				if !math.IsNaN(got) {
					t.Fatalf("got %v, want NaN", got)
				}
				return
			}
			if math.Abs(got-tt.want) > 1e-12 {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func hist(counts ...float64) Histogram {
	return Histogram{Bounds: []float64{0.001, 0.005, 0.01, inf}, Counts: counts}
}

func TestRows(t *testing.T) {
	in200 := SeriesKey{ReporterDestination, "frontend.default", "200"}
	in503 := SeriesKey{ReporterDestination, "frontend.default", "503"}
	out200 := SeriesKey{ReporterSource, "orders.default", "200"}
	ord := SeriesKey{ReporterDestination, "orders.default", "200"}

	prev := NewSample()
	prev.Requests[in200] = 50
	prev.Requests[out200] = 50
	prev.Requests[ord] = 1000 // the orders proxy restarted: cur < prev
	prev.Durations[in200] = hist(10, 40, 50, 50)
	prev.Durations[ord] = hist(900, 1000, 1000, 1000)

	cur := NewSample()
	cur.Requests[in200] = 150
	cur.Requests[in503] = 4
	cur.Requests[out200] = 500
	cur.Requests[ord] = 20
	cur.Durations[in200] = hist(30, 90, 150, 150) // +20 +50 +100 +100
	cur.Durations[in503] = hist(0, 0, 0, 4)       // 4 slow failures
	cur.Durations[ord] = hist(0, 20, 20, 20)
	// Rate-limited answers: counted apart, and not as failures.
	in429 := SeriesKey{ReporterDestination, "frontend.default", "429"}
	prev.Requests[in429] = 10
	cur.Requests[in429] = 17

	rows := Rows(prev, cur, 2*time.Second)
	if len(rows) != 2 {
		t.Fatalf("got %d rows, want 2 (outbound must be ignored): %+v", len(rows), rows)
	}
	fe, o := rows[0], rows[1]
	if fe.Service != "frontend.default" || o.Service != "orders.default" {
		t.Fatalf("rows not sorted by service: %+v", rows)
	}
	if fe.Requests != 111 || fe.RPS != 55.5 || fe.Limited != 7 {
		t.Errorf("frontend requests=%d rps=%v limited=%d, want 111, 55.5, 7", fe.Requests, fe.RPS, fe.Limited)
	}
	if want := 107.0 / 111; math.Abs(fe.Success-want) > 1e-12 {
		t.Errorf("frontend success=%v, want %v", fe.Success, want)
	}
	// Deltas merged: cumulative 20, 50, 100, 104. p50 rank 52 in (0.005, 0.01]
	// holding 50: 0.005 + 0.005*2/50 = 5.2ms. p99 rank 102.96 is in +Inf: 10ms.
	if fe.P50 != 5200*time.Microsecond || fe.P99 != 10*time.Millisecond {
		t.Errorf("frontend p50=%v p99=%v, want 5.2ms, 10ms", fe.P50, fe.P99)
	}
	// Reset: the whole current value is the increase.
	if o.Requests != 20 || o.Success != 1 {
		t.Errorf("orders after reset requests=%d success=%v, want 20, 1", o.Requests, o.Success)
	}
	// 20 in (0.001, 0.005]: p50 rank 10 → 0.001 + 0.004*10/20 = 3ms.
	if o.P50 != 3*time.Millisecond {
		t.Errorf("orders p50=%v, want 3ms", o.P50)
	}

	idle := Rows(cur, cur, time.Second)
	for _, r := range idle {
		if r.Requests != 0 || r.RPS != 0 || r.Success != 0 || r.P50 != 0 || r.P99 != 0 {
			t.Errorf("idle window must give an empty row, got %+v", r)
		}
	}
	if r := Rows(NewSample(), cur, 0); r[0].RPS != 0 {
		t.Errorf("zero window must not divide by zero: %+v", r[0])
	}
}

func TestRelabelAdd(t *testing.T) {
	// Two inventory versions report the same destination_service; the caller
	// names each proxy's rows.
	k := SeriesKey{ReporterDestination, "inventory.default", "200"}
	v1, v2 := NewSample(), NewSample()
	v1.Requests[k], v2.Requests[k] = 90, 10
	v1.Durations[k], v2.Durations[k] = hist(90, 90, 90, 90), hist(0, 10, 10, 10)

	all := NewSample()
	all.Add(v1.Relabel("inventory-v1"))
	all.Add(v2.Relabel("inventory-v2"))
	rows := Rows(NewSample(), all, 10*time.Second)
	if len(rows) != 2 || rows[0].Service != "inventory-v1" || rows[0].Requests != 90 || rows[1].Requests != 10 {
		t.Fatalf("got %+v", rows)
	}
	if rows[0].RPS != 9 || rows[1].RPS != 1 {
		t.Fatalf("rps %v %v, want 9 1", rows[0].RPS, rows[1].RPS)
	}

	// Adding a sample to itself doubles it, buckets included.
	both := NewSample()
	both.Add(v1)
	both.Add(v1)
	if both.Requests[k] != 180 || both.Durations[k].Counts[0] != 180 {
		t.Fatalf("add: %+v", both)
	}
	// Histograms with different bounds merge on the union of bounds.
	m := addHistograms(Histogram{[]float64{1, inf}, []float64{1, 2}}, Histogram{[]float64{2, inf}, []float64{3, 3}})
	if want := (Histogram{[]float64{1, 2, inf}, []float64{1, 4, 5}}); !equalHist(m, want) {
		t.Fatalf("union merge %+v, want %+v", m, want)
	}
}

func equalHist(a, b Histogram) bool {
	if len(a.Bounds) != len(b.Bounds) || len(a.Counts) != len(b.Counts) {
		return false
	}
	for i := range a.Bounds {
		if a.Bounds[i] != b.Bounds[i] || a.Counts[i] != b.Counts[i] {
			return false
		}
	}
	return true
}

// promText produces real promhttp output with the proxy's metric names.
func promText(t testing.TB, observe func(c *prometheus.CounterVec, h *prometheus.HistogramVec)) string {
	t.Helper()
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: RequestsTotalName, Help: "Requests."},
		[]string{"reporter", "destination_service", "response_code"})
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: RequestDurationName, Help: "Durations.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}},
		[]string{"reporter", "destination_service", "response_code"})
	tcp := prometheus.NewCounterVec(prometheus.CounterOpts{Name: TCPOpenedName, Help: "Conns."},
		[]string{"reporter", "destination_service"})
	reg.MustRegister(c, h, tcp, collectors.NewGoCollector())
	tcp.WithLabelValues(ReporterDestination, "orders.default").Add(3)
	observe(c, h)

	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

func TestParseMetricsPromhttp(t *testing.T) {
	text := promText(t, func(c *prometheus.CounterVec, h *prometheus.HistogramVec) {
		for i := range 100 {
			code := "200"
			if i%10 == 0 {
				code = "502"
			}
			c.WithLabelValues(ReporterDestination, "orders.default", code).Inc()
			// 1ms..100ms in 1ms steps.
			h.WithLabelValues(ReporterDestination, "orders.default", code).Observe(float64(i+1) / 1000)
		}
		c.WithLabelValues(ReporterSource, "payments.default", "200").Add(7)
	})
	s, err := ParseMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Requests[SeriesKey{ReporterDestination, "orders.default", "200"}]; got != 90 {
		t.Errorf("inbound 200 = %v, want 90", got)
	}
	if got := s.Requests[SeriesKey{ReporterSource, "payments.default", "200"}]; got != 7 {
		t.Errorf("outbound 200 = %v, want 7", got)
	}
	hh := s.Durations[SeriesKey{ReporterDestination, "orders.default", "502"}]
	if len(hh.Bounds) != 15 || !math.IsInf(hh.Bounds[14], 1) || hh.Counts[14] != 10 {
		t.Fatalf("502 histogram %+v, want 15 buckets ending +Inf with 10", hh)
	}
	rows := Rows(NewSample(), s, 10*time.Second)
	if len(rows) != 1 {
		t.Fatalf("rows %+v", rows)
	}
	r := rows[0]
	if r.Requests != 100 || r.RPS != 10 || r.Success != 0.9 {
		t.Errorf("row %+v", r)
	}
	// Cumulative at 25ms: 25, at 50ms: 50. p50 rank 50 → exactly 50ms.
	// p99 rank 99: (50ms,100ms] holds 50, 49 into it → 50 + 50*49/50 = 99ms.
	if r.P50 != 50*time.Millisecond || r.P99 != 99*time.Millisecond {
		t.Errorf("p50=%v p99=%v, want 50ms 99ms", r.P50, r.P99)
	}
}

func TestParseMetricsErrors(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"garbage", "this is not { metrics", "parse metrics"},
		{"requests as histogram", "# TYPE trellis_requests_total histogram\ntrellis_requests_total_count 1\n", "not a counter"},
		{"duration as counter", "# TYPE trellis_request_duration_seconds counter\ntrellis_request_duration_seconds 1\n", "not a histogram"},
		{"negative counter", "trellis_requests_total{reporter=\"destination\"} -3\n", "invalid value"},
		{"NaN bucket", "# TYPE trellis_request_duration_seconds histogram\ntrellis_request_duration_seconds_bucket{le=\"0.1\"} NaN\n", "invalid bucket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseMetrics(strings.NewReader(tt.in))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want containing %q", err, tt.want)
			}
		})
	}
	// Unrelated families are ignored, not errors.
	s, err := ParseMetrics(strings.NewReader("# TYPE go_goroutines gauge\ngo_goroutines 12\n"))
	if err != nil || len(s.Requests) != 0 || len(s.Durations) != 0 {
		t.Fatalf("unrelated: %v %+v", err, s)
	}
}

func FuzzParseMetrics(f *testing.F) {
	f.Add(promText(f, func(c *prometheus.CounterVec, h *prometheus.HistogramVec) {
		c.WithLabelValues(ReporterDestination, "orders.default", "200").Add(5)
		h.WithLabelValues(ReporterDestination, "orders.default", "200").Observe(0.003)
	}))
	f.Add("trellis_requests_total{reporter=\"destination\",destination_service=\"a\",response_code=\"500\"} 3\n")
	f.Add("# TYPE trellis_request_duration_seconds histogram\ntrellis_request_duration_seconds_bucket{reporter=\"destination\",le=\"0.1\"} 2\ntrellis_request_duration_seconds_bucket{reporter=\"destination\",le=\"0.05\"} 5\ntrellis_request_duration_seconds_count{reporter=\"destination\"} 4\n")
	f.Fuzz(func(t *testing.T, in string) {
		s, err := ParseMetrics(strings.NewReader(in))
		if err != nil {
			return
		}
		for k, v := range s.Requests {
			if v < 0 || math.IsNaN(v) {
				t.Fatalf("%v: invalid count %v", k, v)
			}
		}
		for k, h := range s.Durations {
			n := len(h.Bounds)
			if n == 0 || n != len(h.Counts) || !math.IsInf(h.Bounds[n-1], 1) {
				t.Fatalf("%v: malformed histogram %+v", k, h)
			}
			for i := 1; i < n; i++ {
				if h.Bounds[i] <= h.Bounds[i-1] {
					t.Fatalf("%v: bounds not ascending %+v", k, h.Bounds)
				}
			}
		}
		for _, r := range Rows(NewSample(), s.Relabel("x"), time.Second) {
			if math.IsNaN(r.RPS) || math.IsNaN(r.Success) || r.Success < 0 || r.Success > 1 || r.P50 < 0 || r.P99 < 0 {
				t.Fatalf("bad row %+v", r)
			}
		}
	})
}

func TestFormatTableGolden(t *testing.T) {
	rows := []Row{
		{Service: "frontend", RPS: 49.96, Success: 0.9975, P50: 4213 * time.Microsecond, P99: 23500 * time.Microsecond, Requests: 2998},
		{Service: "inventory-v1", RPS: 45.04, Success: 1, P50: 2 * time.Millisecond, P99: 250 * time.Millisecond, Requests: 2702, Limited: 340},
		{Service: "inventory-v2", RPS: 0, Success: 0, Requests: 0},
		{Service: "payments", RPS: 0.5, Success: 0, P50: 12 * time.Second, P99: 12 * time.Second, Requests: 30},
	}
	var buf bytes.Buffer
	if err := FormatTable(&buf, rows); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "stat_table.golden")
	if *update {
		if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Fatalf("table differs from %s (run with -update after checking):\n got:\n%s\nwant:\n%s", golden, buf.Bytes(), want)
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, io.ErrClosedPipe }

func TestFormatTableWriteError(t *testing.T) {
	if err := FormatTable(failWriter{}, nil); err == nil || !strings.Contains(err.Error(), "write table") {
		t.Fatalf("err = %v", err)
	}
}
