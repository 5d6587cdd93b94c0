package proxy

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/stats"
	"trellis.dev/trellis/internal/telemetry"
)

// statsTotals sums a recorder's windows so far (the open one read as if
// closed) by kind and key.
func statsTotals(rec *stats.Recorder) map[string][2]uint64 {
	out := map[string][2]uint64{}
	for _, w := range rec.Windows(time.Now().Add(stats.Width), 0) {
		for _, e := range w.GetEntries() {
			k := e.GetKind().String() + " " + e.GetService() + " " + e.GetRoute() + e.GetSource() + e.GetPath()
			t := out[k]
			out[k] = [2]uint64{t[0] + e.GetRequests(), t[1] + e.GetFailures()}
		}
	}
	return out
}

// TestStatsThroughProxies: requests through a real proxy pair land in the
// caller's route, edge and path summaries and the callee's service
// summary, 5xx counted as failures; a path a regular expression matched is
// counted as the expression.
func TestStatsThroughProxies(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/fail") {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	srv := startServer(t, ca, "orders", app, port(80, app, meshv1.Protocol_HTTP))
	client := startClient(t, ca, Options{Identity: spiffeFor("frontend")})
	svc := srv.svc
	svc.Routes = []*meshv1.Route{
		{Name: "default/orders/rules[0]", Matches: []*meshv1.Match{{Path: &meshv1.PathMatch{Type: meshv1.PathMatch_REGEX, Value: "/items/[0-9]+"}}},
			Backends: []*meshv1.Backend{{Service: "orders", Weight: 1}}},
		{Name: "default/orders/rules[1]", Backends: []*meshv1.Backend{{Service: "orders", Weight: 1}}},
	}
	if err := client.Update(snapshot("1", svc)); err != nil {
		t.Fatal(err)
	}
	c := proxyClient(client)
	send := func(path string, n int) {
		for range n {
			get(t, c, "http://orders"+path, nil)
		}
	}
	send("/fail", 4)
	send("/ok", 10)
	send("/items/1", 3)
	send("/items/22", 3)

	got := statsTotals(client.Stats())
	for k, want := range map[string][2]uint64{
		"STATS_ROUTE orders.default default/orders/rules[1]": {14, 4},
		"STATS_ROUTE orders.default default/orders/rules[0]": {6, 0},
		"STATS_EDGE orders.default frontend.default":         {20, 4},
		"STATS_PATH orders.default /fail":                    {4, 4},
		"STATS_PATH orders.default /ok":                      {10, 0},
		"STATS_PATH orders.default /items/[0-9]+":            {6, 0},
	} {
		if got[k] != want {
			t.Errorf("caller %s: %v, want %v (all: %v)", k, got[k], want, got)
		}
	}
	in := statsTotals(srv.proxy.Stats())
	if k := "STATS_SERVICE orders.default "; in[k] != [2]uint64{20, 4} || len(in) != 1 {
		t.Errorf("callee: %v, want only %q {20 4}", in, k)
	}
}

// TestStatsRecordAllocs: counting a finished exchange into a warm series
// and its summaries allocates nothing, on both sides.
func TestStatsRecordAllocs(t *testing.T) {
	pm, err := telemetry.NewProxyMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ps := newProxyStats()
	hdr := http.Header{headerSource: {"frontend"}}
	resp := &Response{Status: 200, Header: http.Header{}}
	out := &Exchange{series: pm.Series(telemetry.SeriesLabels{Reporter: telemetry.ReporterSource, Route: "r"}), Header: hdr,
		Service: &service{key: "orders.default"}, Path: "/api/orders", stats: ps}
	in := &Exchange{sources: pm.Sources(telemetry.Peer{Service: "orders", Namespace: "default"}), Header: hdr, PeerID: spiffeFor("frontend"), stats: ps}
	run := func() {
		for _, ex := range []*Exchange{out, in} {
			ex.Start = time.Now()
			ex.body = countedBody{ex: ex, resp: resp, status: 200}
			_ = ex.body.Close()
		}
	}
	run()
	if n := testing.AllocsPerRun(500, run); n != 0 {
		t.Fatalf("allocs per counted exchange with stats = %v, want 0", n)
	}
	got := statsTotals(ps.rec)
	if got["STATS_PATH orders.default /api/orders"][0] < 500 || got["STATS_SERVICE orders.default "][0] < 500 {
		t.Errorf("summaries %v: want the runs counted", got)
	}
}

// BenchmarkCountExchangeStats is BenchmarkCountExchange with the windowed
// summaries on: the difference is what recording them costs a request.
func BenchmarkCountExchangeStats(b *testing.B) {
	pm, err := telemetry.NewProxyMetrics(prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	hdr := http.Header{headerSource: {"frontend"}}
	resp := &Response{Status: 200, Header: http.Header{}}
	for _, tc := range []struct {
		name string
		ex   *Exchange
	}{
		{"source", &Exchange{series: pm.Series(telemetry.SeriesLabels{Reporter: telemetry.ReporterSource, Route: "r"}), Header: hdr,
			Service: &service{key: "orders.default"}, Path: "/api/orders", stats: newProxyStats()}},
		{"destination", &Exchange{sources: pm.Sources(telemetry.Peer{Service: "orders", Namespace: "default"}), Header: hdr, PeerID: spiffeFor("frontend"), stats: newProxyStats()}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			ex := tc.ex
			ex.Start = time.Now()
			b.ReportAllocs()
			for b.Loop() {
				ex.body = countedBody{ex: ex, resp: resp, status: 200}
				_ = ex.body.Close()
			}
		})
	}
}
