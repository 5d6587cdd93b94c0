package stats

import (
	"math"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"google.golang.org/protobuf/proto"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// windowWith is one window at start holding one entry with n requests of
// latency d, failed of them 5xx.
func windowWith(start int64, kind meshv1.StatsKind, service string, n, failed uint64, d time.Duration) *meshv1.StatsWindow {
	var s Sketch
	s.Counts[bucketOf(d)] = n
	return &meshv1.StatsWindow{StartUnix: start, WidthSeconds: 10, Entries: []*meshv1.StatsEntry{{
		Kind: kind, Service: service, Requests: n, Failures: failed, Latency: s.Proto(),
	}}}
}

// lastClosed is the start of the newest window a query at now sums.
func lastClosed(now time.Time) int64 { return windowStart(windowOf(now.Add(-ReportLag)) - 1) }

func TestQueryMergesSketchesAcrossReplicas(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st := NewStore(nil)
		time.Sleep(time.Minute)
		w := lastClosed(time.Now())
		fast := windowWith(w, meshv1.StatsKind_STATS_SERVICE, "orders.default", 100, 0, time.Millisecond)
		slow := windowWith(w, meshv1.StatsKind_STATS_SERVICE, "orders.default", 100, 10, 100*time.Millisecond)
		for node, win := range map[string]*meshv1.StatsWindow{"a": fast, "b": slow} {
			if _, err := st.Put(node, "orders.default", 15*time.Second, &meshv1.StatsReport{Windows: []*meshv1.StatsWindow{win}}); err != nil {
				t.Fatal(err)
			}
		}
		res := st.Query(Query{Kind: KindService, Window: time.Minute}, time.Now())
		if res.Proxies != 2 || len(res.Rows) != 1 {
			t.Fatalf("got %+v, want one row from 2 proxies", res)
		}
		r := res.Rows[0]
		if r.Requests != 200 || r.Failures != 10 || r.Success != 0.95 || math.Abs(r.RPS-200.0/60) > 1e-9 {
			t.Fatalf("row %+v: want 200 requests, 10 failures, success 0.95, rps 3.33", r)
		}
		// Merged, p95 is the slow replica's latency; the mean of the two
		// replicas' p95s would be ~50 ms.
		if math.Abs(r.P95-0.1) > RelativeError*0.1 {
			t.Errorf("p95 %.4fs, want ~0.100s (merged sketches, not averaged percentiles)", r.P95)
		}
		if math.Abs(r.P50-0.001) > RelativeError*0.001 {
			t.Errorf("p50 %.5fs, want ~0.001s", r.P50)
		}
	})
}

func TestQuerySumsOnlyTheWindowAskedFor(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st := NewStore(nil)
		time.Sleep(5 * time.Minute)
		w := lastClosed(time.Now())
		var ws []*meshv1.StatsWindow
		for i := range 12 { // two minutes, 1 request in the newest window, 2 in the one before...
			ws = append(ws, windowWith(w-int64(10*i), meshv1.StatsKind_STATS_SERVICE, "orders.default", uint64(i+1), 0, time.Millisecond))
		}
		// One window too new to be complete everywhere: left out.
		ws = append(ws, windowWith(w+10, meshv1.StatsKind_STATS_SERVICE, "orders.default", 1000, 0, time.Millisecond))
		if _, err := st.Put("a", "orders.default", time.Minute, &meshv1.StatsReport{Windows: ws}); err != nil {
			t.Fatal(err)
		}
		for window, want := range map[time.Duration]uint64{10 * time.Second: 1, 30 * time.Second: 6, time.Minute: 21, 2 * time.Minute: 78} {
			res := st.Query(Query{Kind: KindService, Window: window}, time.Now())
			if len(res.Rows) != 1 || res.Rows[0].Requests != want {
				t.Errorf("window %v: %+v, want %d requests", window, res.Rows, want)
			}
			if res.End.Sub(res.Start) != window || res.End.Unix() != w+10 {
				t.Errorf("window %v: [%v, %v), want %v long ending at %d", window, res.Start, res.End, window, w+10)
			}
		}
	})
}

func TestStoreForgetsProxiesWhoseLeaseLapsed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st := NewStore(nil)
		time.Sleep(time.Minute)
		w := lastClosed(time.Now())
		report := &meshv1.StatsReport{Windows: []*meshv1.StatsWindow{windowWith(w, meshv1.StatsKind_STATS_SERVICE, "orders.default", 5, 0, time.Millisecond)}}
		if _, err := st.Put("a", "orders.default", 15*time.Second, report); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Put("b", "b.default", time.Hour, &meshv1.StatsReport{}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(14 * time.Second)
		if st.Nodes() != 2 {
			t.Fatalf("%d nodes before a's lease lapsed, want 2", st.Nodes())
		}
		time.Sleep(2 * time.Second)
		if st.Nodes() != 1 {
			t.Fatalf("%d nodes after a's lease lapsed, want 1", st.Nodes())
		}
		// A report renews the node's time, as a heartbeat renews its lease.
		time.Sleep(time.Hour - 20*time.Second)
		if _, err := st.Put("b", "b.default", time.Hour, &meshv1.StatsReport{}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Hour - time.Second)
		if st.Nodes() != 1 {
			t.Fatalf("%d nodes, want b still held after its renewed hour", st.Nodes())
		}
	})
}

func TestPutAcksNewestAndDropsOld(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st := NewStore(nil)
		time.Sleep(10 * time.Minute)
		w := lastClosed(time.Now())
		old := windowStart(windowOf(time.Now()) - Keep - 1)
		through, err := st.Put("a", "x.default", time.Minute, &meshv1.StatsReport{Windows: []*meshv1.StatsWindow{
			windowWith(old, meshv1.StatsKind_STATS_SERVICE, "x.default", 1, 0, time.Millisecond),
			windowWith(w, meshv1.StatsKind_STATS_SERVICE, "x.default", 1, 0, time.Millisecond),
		}})
		if err != nil || through != w {
			t.Fatalf("through %d, %v; want %d", through, err, w)
		}
		// Sent again, a window replaces the one held (no double count).
		if _, err := st.Put("a", "x.default", time.Minute, &meshv1.StatsReport{Windows: []*meshv1.StatsWindow{
			windowWith(w, meshv1.StatsKind_STATS_SERVICE, "x.default", 3, 0, time.Millisecond),
		}}); err != nil {
			t.Fatal(err)
		}
		res := st.Query(Query{Kind: KindService, Window: 5 * time.Minute}, time.Now())
		if len(res.Rows) != 1 || res.Rows[0].Requests != 3 {
			t.Fatalf("rows %+v, want 3 requests (resent window replaced, too-old one dropped)", res.Rows)
		}
	})
}

func TestPutRefusesABadReportWhole(t *testing.T) {
	good := windowWith(1700000000, meshv1.StatsKind_STATS_SERVICE, "x.default", 1, 0, time.Millisecond)
	for _, tc := range []struct {
		name string
		bad  func(*meshv1.StatsWindow)
		want string
	}{
		{"width", func(w *meshv1.StatsWindow) { w.WidthSeconds = 7 }, "windows[1].width_seconds: 7, want 10"},
		{"start", func(w *meshv1.StatsWindow) { w.StartUnix = 1700000003 }, "windows[1].start_unix"},
		{"kind", func(w *meshv1.StatsWindow) { w.Entries[0].Kind = 99 }, "windows[1].entries[0].kind"},
		{"service", func(w *meshv1.StatsWindow) { w.Entries[0].Service = "" }, "entries[0].service: required"},
		{"failures", func(w *meshv1.StatsWindow) { w.Entries[0].Failures = 2 }, "failures: 2 of 1 requests"},
		{"path", func(w *meshv1.StatsWindow) { w.Entries[0].Path = strings.Repeat("p", MaxPathLen+1) }, "entries[0].path: 129 bytes"},
		{"sketch", func(w *meshv1.StatsWindow) { w.Entries[0].Latency.Index = []uint32{NumBuckets} }, "entries[0].latency.index[0]"},
		{"another's service", func(w *meshv1.StatsWindow) { w.Entries[0].Service = "payments.default" }, `service: "payments.default" is not this proxy's service x.default`},
		{"another's edge", func(w *meshv1.StatsWindow) {
			w.Entries[0].Kind, w.Entries[0].Source = meshv1.StatsKind_STATS_EDGE, "payments.default"
		}, `source: "payments.default" is not this proxy's service x.default`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := proto.Clone(good).(*meshv1.StatsWindow)
			bad.StartUnix += 10
			tc.bad(bad)
			st := NewStore(nil)
			_, err := st.Put("a", "x.default", time.Minute, &meshv1.StatsReport{Windows: []*meshv1.StatsWindow{good, bad}})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if st.Nodes() != 0 {
				t.Error("part of a refused report was kept")
			}
		})
	}
}

func TestQueryFilters(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st := NewStore(nil)
		time.Sleep(time.Minute)
		w := lastClosed(time.Now())
		entries := []*meshv1.StatsEntry{
			{Kind: meshv1.StatsKind_STATS_ROUTE, Service: "inventory-v1.default", Route: "default/inventory-split/rules[0]", Requests: 4},
			{Kind: meshv1.StatsKind_STATS_ROUTE, Service: "inventory-v2.default", Route: "default/inventory-split/rules[0]", Requests: 6},
			{Kind: meshv1.StatsKind_STATS_ROUTE, Service: "payments.default", Route: "default/payments-faults/rules[0]", Requests: 1},
			{Kind: meshv1.StatsKind_STATS_EDGE, Service: "orders.default", Source: "frontend.default", Requests: 7},
			{Kind: meshv1.StatsKind_STATS_PATH, Service: "orders.default", Path: "/a", Requests: 2},
			{Kind: meshv1.StatsKind_STATS_PATH, Service: "orders.default", Path: "/b", Requests: 9},
		}
		if _, err := st.Put("a", "frontend.default", time.Minute, &meshv1.StatsReport{Windows: []*meshv1.StatsWindow{{StartUnix: w, WidthSeconds: 10, Entries: entries}}}); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			q    Query
			want []uint64
		}{
			{Query{Kind: KindRoute, Route: "inventory-split"}, []uint64{4, 6}},
			{Query{Kind: KindRoute, Route: "default/inventory-split"}, []uint64{4, 6}},
			{Query{Kind: KindRoute, Route: "default/inventory-split/rules[0]", Service: "inventory-v2.default"}, []uint64{6}},
			{Query{Kind: KindRoute, Route: "inventory"}, nil},
			{Query{Kind: KindEdge, Source: "frontend.default"}, []uint64{7}},
			{Query{Kind: KindEdge, Source: "orders.default"}, nil},
			{Query{Kind: KindPath, Service: "orders.default"}, []uint64{9, 2}}, // busiest first
		} {
			tc.q.Window = time.Minute
			res := st.Query(tc.q, time.Now())
			var got []uint64
			for _, r := range res.Rows {
				got = append(got, r.Requests)
			}
			if len(got) != len(tc.want) || (len(got) > 0 && !equal(got, tc.want)) {
				t.Errorf("%+v: rows %v, want %v", tc.q, got, tc.want)
			}
		}
	})
}

func equal(a, b []uint64) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestQueryCheck(t *testing.T) {
	for _, tc := range []struct {
		q    Query
		want string
	}{
		{Query{Kind: "pods", Window: time.Minute}, "kind"},
		{Query{Kind: KindService, Window: 15 * time.Second}, "window"},
		{Query{Kind: KindService, Window: 10 * time.Minute}, "window"},
		{Query{Kind: KindPath, Window: 2 * time.Minute}, "paths are kept for 1m0s"},
		{Query{Kind: KindService, Window: 5 * time.Minute}, ""},
	} {
		err := tc.q.Check()
		if (tc.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err %v, want %q", tc.q, err, tc.want)
		}
	}
}

func FuzzCheckReport(f *testing.F) {
	seed, _ := proto.Marshal(&meshv1.StatsReport{NodeId: "n", Windows: []*meshv1.StatsWindow{
		windowWith(1700000000, meshv1.StatsKind_STATS_PATH, "x.default", 3, 1, time.Millisecond),
	}})
	f.Add(seed)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var r meshv1.StatsReport
		if proto.Unmarshal(b, &r) != nil {
			return
		}
		st := NewStore(nil)
		if _, err := st.Put("n", "x.default", time.Minute, &r); err != nil {
			if st.Nodes() != 0 {
				t.Fatal("a refused report was kept")
			}
			return
		}
		// Whatever was accepted answers any query without failing.
		for _, k := range []string{KindService, KindRoute, KindEdge, KindPath} {
			for _, row := range st.Query(Query{Kind: k, Window: time.Minute}, time.Now()).Rows {
				if row.Success < 0 || row.Success > 1 || row.P50 > row.P99 {
					t.Fatalf("row %+v", row)
				}
			}
		}
	})
}
