package push

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/stats"
)

func statsWindow(start int64, n uint64) *meshv1.StatsWindow {
	return &meshv1.StatsWindow{StartUnix: start, WidthSeconds: 10, Entries: []*meshv1.StatsEntry{{
		Kind: meshv1.StatsKind_STATS_SERVICE, Service: "orders.default", Requests: n,
	}}}
}

// TestReportKeepsARegisteredCallersWindows: a registered proxy's reports
// are kept and acknowledged with the newest window held; an unregistered
// node, another identity's node and a bad report are refused.
func TestReportKeepsARegisteredCallersWindows(t *testing.T) {
	ca := newTestCA(t)
	st := stats.NewStore(nil)
	e := startEnv(t, ca, "127.0.0.1:0", func(o *ServerOptions) { o.Stats = st })
	orders := e.dial(t, ca.workloadCert(t, spiffe("default", "orders"), time.Time{}))
	payments := e.dial(t, ca.workloadCert(t, spiffe("default", "payments"), time.Time{}))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	om, _ := orders.current()
	if _, err := om.Register(ctx, &meshv1.RegisterRequest{Endpoint: endpoint("orders-1", "orders"), TtlSeconds: 10}); err != nil {
		t.Fatal(err)
	}
	now := time.Now().Unix() / 10 * 10

	rs, err := orders.OpenReport(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := rs.Send(&meshv1.StatsReport{NodeId: "orders-1", Windows: []*meshv1.StatsWindow{statsWindow(now-30, 5), statsWindow(now-20, 7)}}); err != nil {
		t.Fatal(err)
	}
	ack, err := rs.Recv()
	if err != nil || ack.GetThroughUnix() != now-20 {
		t.Fatalf("ack %v, %v; want through %d", ack, err, now-20)
	}
	// A bad report ends the stream, naming the field; what was kept stays.
	if err := rs.Send(&meshv1.StatsReport{Windows: []*meshv1.StatsWindow{{StartUnix: now - 10, WidthSeconds: 3}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := rs.Recv(); status.Code(err) != codes.InvalidArgument || !contains(err.Error(), "width_seconds") {
		t.Fatalf("bad report: %v; want InvalidArgument naming width_seconds", err)
	}
	if st.Nodes() != 1 {
		t.Fatalf("store holds %d nodes, want 1", st.Nodes())
	}

	for _, tc := range []struct {
		name   string
		client *Client
		node   string
		code   codes.Code
	}{
		{"no node id", orders, "", codes.InvalidArgument},
		{"unregistered", orders, "orders-9", codes.FailedPrecondition},
		{"another's node", payments, "orders-1", codes.PermissionDenied},
	} {
		rs, err := tc.client.OpenReport(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_ = rs.Send(&meshv1.StatsReport{NodeId: tc.node, Windows: []*meshv1.StatsWindow{statsWindow(now-10, 1000)}})
		if _, err := rs.Recv(); status.Code(err) != tc.code {
			t.Errorf("%s: %v; want %v", tc.name, err, tc.code)
		}
	}
	res := st.Query(stats.Query{Kind: stats.KindService, Window: 5 * time.Minute}, time.Now().Add(time.Minute))
	if len(res.Rows) != 1 || res.Rows[0].Requests != 12 {
		t.Fatalf("rows %+v; want orders with 12 requests (refused reports not kept)", res.Rows)
	}
}

// TestReporterOverRealStream: stats.Report sends a proxy's closed windows
// over the Report stream until the control plane holds them.
func TestReporterOverRealStream(t *testing.T) {
	ca := newTestCA(t)
	st := stats.NewStore(nil)
	e := startEnv(t, ca, "127.0.0.1:0", func(o *ServerOptions) { o.Stats = st })
	orders := e.dial(t, ca.workloadCert(t, spiffe("default", "orders"), time.Time{}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	om, _ := orders.current()
	if _, err := om.Register(ctx, &meshv1.RegisterRequest{Endpoint: endpoint("orders-1", "orders"), TtlSeconds: 10}); err != nil {
		t.Fatal(err)
	}
	rec := stats.NewRecorder()
	// A request recorded a window ago is in a closed window at once.
	rec.Cell(stats.Key{Inbound: true, Destination: "orders.default"}).Record(time.Now().Add(-stats.Width), 500, time.Millisecond)
	done := make(chan error, 1)
	go func() {
		done <- stats.Report(ctx, stats.ReporterOptions{
			NodeID:   "orders-1",
			Open:     func(ctx context.Context) (stats.Stream, error) { return orders.OpenReport(ctx) },
			Recorder: rec, Interval: 50 * time.Millisecond, Logger: testLogger(t),
		})
	}()
	eventually(t, "the control plane holds the proxy's window", func() bool {
		res := st.Query(stats.Query{Kind: stats.KindService, Window: time.Minute}, time.Now().Add(stats.Width+stats.ReportLag))
		return len(res.Rows) == 1 && res.Rows[0].Requests == 1 && res.Rows[0].Failures == 1
	})
	cancel()
	if err := <-done; err != context.Canceled {
		t.Fatalf("Report returned %v, want context.Canceled", err)
	}
}
