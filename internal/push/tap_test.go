package push

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/tap"
)

// TestTapStream: a registered proxy's Tap stream gets the taps of its
// service and its events reach them; a stream naming another node is
// refused, and one on a control plane without a hub is UNIMPLEMENTED.
func TestTapStream(t *testing.T) {
	ca := newTestCA(t)
	hub := tap.NewHub(testLogger(t))
	e := startEnv(t, ca, "127.0.0.1:0", func(o *ServerOptions) { o.Tap = hub })
	orders := e.dial(t, ca.workloadCert(t, spiffe("default", "orders"), time.Time{}))
	payments := e.dial(t, ca.workloadCert(t, spiffe("default", "payments"), time.Time{}))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	om, _ := orders.current()
	if _, err := om.Register(ctx, &meshv1.RegisterRequest{Endpoint: endpoint("orders-1", "orders"), TtlSeconds: 10}); err != nil {
		t.Fatal(err)
	}

	// payments cannot open orders-1's tap stream.
	forged, err := payments.OpenTap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := forged.Send(&meshv1.TapEvents{NodeId: "orders-1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := forged.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("another identity's tap stream: %v; want PermissionDenied", err)
	}

	st, err := orders.OpenTap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&meshv1.TapEvents{NodeId: "orders-1"}); err != nil {
		t.Fatal(err)
	}
	var s *tap.Session
	eventually(t, "the tap to reach orders-1's stream", func() bool {
		if s != nil {
			s.Stop()
		}
		s, err = hub.Start("orders.default", &meshv1.TapRequest{Method: "GET"})
		return err == nil && s.Proxies() == 1
	})
	r, err := st.Recv()
	for err == nil && r.GetTapId() != s.ID() { // stops of the tries before
		r, err = st.Recv()
	}
	if err != nil || r.GetMethod() != "GET" || r.GetMaxRps() != tap.DefaultMaxRPS {
		t.Fatalf("tap request %v, %v", r, err)
	}
	if err := st.Send(&meshv1.TapEvents{Events: []*meshv1.TapEvent{{TapId: s.ID(), Path: "/x"}}}); err != nil {
		t.Fatal(err)
	}
	select {
	case it := <-s.Items():
		if it.Node != "orders-1" || it.Event.GetPath() != "/x" {
			t.Fatalf("item %+v", it)
		}
	case <-ctx.Done():
		t.Fatal("the event did not reach the session")
	}
	s.Stop()
	if r, err := st.Recv(); err != nil || !r.GetStop() {
		t.Fatalf("after Stop: %v, %v; want a stop request", r, err)
	}

	none := startEnv(t, ca, "127.0.0.1:0", nil)
	nc := none.dial(t, ca.workloadCert(t, spiffe("default", "orders"), time.Time{}))
	st2, err := nc.OpenTap(ctx)
	if err == nil {
		_ = st2.Send(&meshv1.TapEvents{NodeId: "orders-1"})
		_, err = st2.Recv()
	}
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("no hub: %v; want Unimplemented", err)
	}
}
