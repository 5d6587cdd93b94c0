package push

import (
	"context"
	"crypto/tls"
	"errors"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// proxySim is the proxy side of a session: it records what Apply saw.
type proxySim struct {
	applied chan string // versions passed to Apply, in order

	mu      sync.Mutex
	subs    []string
	refuse  string // Apply refuses versions with this prefix
	replica string // of the last snapshot applied
}

func (p *proxySim) apply(s *meshv1.Snapshot) error {
	p.applied <- s.GetVersion()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.replica = s.GetReplica()
	if p.refuse != "" && strings.HasPrefix(s.GetVersion(), p.refuse) {
		return errors.New("route orders/r/rules[0]: bad regex")
	}
	return nil
}

func (p *proxySim) subscriptions() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.subs)
}

func (p *proxySim) set(f func(p *proxySim)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f(p)
}

// runProxy runs a session for node id of service svc until the test ends.
func runProxy(t testing.TB, e *env, id, svc string, hb time.Duration) (*proxySim, *Client) {
	t.Helper()
	c := e.dial(t, e.ca.workloadCert(t, spiffe("default", svc), time.Time{}))
	p := &proxySim{applied: make(chan string, 1000)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- c.RunSession(ctx, SessionOptions{Endpoint: endpoint(id, svc), Heartbeat: hb, Subscriptions: p.subscriptions, Apply: p.apply})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("RunSession: %v", err)
		}
	})
	return p, c
}

// next returns the next applied version, failing after a while.
func (p *proxySim) next(t testing.TB) string {
	t.Helper()
	select {
	case v := <-p.applied:
		return v
	case <-time.After(10 * time.Second):
		t.Fatal("no snapshot applied")
		return ""
	}
}

func (p *proxySim) expect(t testing.TB, want string) {
	t.Helper()
	if got := p.next(t); got != want {
		t.Fatalf("applied %q, want %q", got, want)
	}
}

func statusOf(s *Server, node string) (ProxyStatus, bool) {
	for _, st := range s.Statuses() {
		if st.NodeID == node {
			return st, true
		}
	}
	return ProxyStatus{}, false
}

func waitState(t testing.TB, s *Server, node, state, acked string) ProxyStatus {
	t.Helper()
	var st ProxyStatus
	eventually(t, node+" "+state+" "+acked, func() bool {
		var ok bool
		st, ok = statusOf(s, node)
		return ok && st.State == state && st.AckedVersion == acked
	})
	return st
}

func TestWatch(t *testing.T) {
	ca := newTestCA(t)
	e := startEnv(t, ca, "127.0.0.1:0", nil)
	p, c := runProxy(t, e, "orders-1", "orders", time.Second)

	// First snapshot on start, then SYNCED once acknowledged.
	p.expect(t, "v0|orders.default")
	st := waitState(t, e.srv, "orders-1", StateSynced, "v0|orders.default")
	if st.Service != "orders" || st.Namespace != "default" || st.Identity != spiffe("default", "orders") ||
		st.SentVersion != "v0|orders.default" || st.CertExpiry.IsZero() || st.LastAck.IsZero() {
		t.Fatalf("status = %+v", st)
	}

	// A signal without a change sends nothing; the next real change is
	// the next thing applied, pushed once.
	e.snaps.bump(false)
	e.snaps.bump(true)
	p.expect(t, "v1|orders.default")
	waitState(t, e.srv, "orders-1", StateSynced, "v1|orders.default")
	if got := e.srv.Counters().Pushes; got != 2 {
		t.Fatalf("pushes = %d, want 2", got)
	}

	// NACK: the status says so, with the proxy's error; acked stays.
	p.set(func(p *proxySim) { p.refuse = "v2" })
	e.snaps.bump(true)
	p.expect(t, "v2|orders.default")
	st = waitState(t, e.srv, "orders-1", StateNacked, "v1|orders.default")
	if st.SentVersion != "v2|orders.default" || !strings.Contains(st.Error, "bad regex") {
		t.Fatalf("status after NACK = %+v", st)
	}

	// A subscription change compiles and sends a new snapshot; its ACK
	// clears the error.
	p.set(func(p *proxySim) {
		p.refuse = ""
		p.subs = []string{"payments.default", "payments.default", "bad name"}
	})
	c.Resubscribe()
	p.expect(t, "v2|orders.default,payments.default")
	st = waitState(t, e.srv, "orders-1", StateSynced, "v2|orders.default,payments.default")
	if st.Error != "" {
		t.Fatalf("error kept after ACK: %q", st.Error)
	}
	// Resubscribing with the same set sends nothing.
	c.Resubscribe()
	e.snaps.bump(true)
	p.expect(t, "v3|orders.default,payments.default")

	// Statuses are sorted by node id.
	runProxy(t, e, "a-payments", "payments", time.Second)
	eventually(t, "two proxies", func() bool { return len(e.srv.Statuses()) == 2 })
	if ids := []string{e.srv.Statuses()[0].NodeID, e.srv.Statuses()[1].NodeID}; ids[0] != "a-payments" || ids[1] != "orders-1" {
		t.Fatalf("order = %v", ids)
	}
	c0 := e.srv.Counters()
	if c0.Streams != 2 || c0.Nacks != 1 || c0.Acks < 4 {
		t.Fatalf("counters = %+v", c0)
	}
}

// rawWatch opens a Watch stream directly, as a misbehaving proxy would.
func rawWatch(t testing.TB, e *env, cert *tls.Certificate, opts ...grpc.DialOption) meshv1.MeshClient {
	t.Helper()
	tc := &tls.Config{RootCAs: e.ca.pool, Certificates: []tls.Certificate{*cert}}
	cc, err := grpc.NewClient(e.addr, append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tc))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return meshv1.NewMeshClient(cc)
}

func TestWatchRejects(t *testing.T) {
	ca := newTestCA(t)
	e := startEnv(t, ca, "127.0.0.1:0", nil)
	orders := ca.workloadCert(t, spiffe("default", "orders"), time.Time{})
	payments := ca.workloadCert(t, spiffe("default", "payments"), time.Time{})
	om := rawWatch(t, e, orders)
	if _, err := om.Register(context.Background(), &meshv1.RegisterRequest{Endpoint: endpoint("orders-1", "orders")}); err != nil {
		t.Fatal(err)
	}
	pm := rawWatch(t, e, payments)
	anon := e.dial(t, nil)
	am, _ := anon.current()

	tests := []struct {
		name string
		mesh meshv1.MeshClient
		req  *meshv1.WatchRequest
		want string
	}{
		{"no client cert", am, &meshv1.WatchRequest{NodeId: "orders-1"}, "Unauthenticated"},
		{"no node id", om, &meshv1.WatchRequest{}, "node_id: required"},
		{"unregistered node", om, &meshv1.WatchRequest{NodeId: "ghost"}, "not registered"},
		{"someone else's node", pm, &meshv1.WatchRequest{NodeId: "orders-1"}, "PermissionDenied"},
		{"bad subscription", om, &meshv1.WatchRequest{NodeId: "orders-1", Subscriptions: []string{"x"}}, "subscriptions[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			s, err := tt.mesh.Watch(ctx)
			if err != nil {
				t.Fatal(err)
			}
			_ = s.Send(tt.req)
			_, err = s.Recv()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v; want %q", err, tt.want)
			}
		})
	}
}

func TestSlowConsumerDoesNotBlockOthers(t *testing.T) {
	ca := newTestCA(t)
	e := startEnv(t, ca, "127.0.0.1:0", func(o *ServerOptions) { o.SendTimeout = time.Second })
	e.snaps.payload = make([]byte, 256<<10)

	// The slow proxy never reads; a fixed 64 KiB window (no BDP growth)
	// makes the server's second send block.
	big := ca.workloadCert(t, spiffe("default", "big"), time.Time{})
	slow := rawWatch(t, e, big, grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if _, err := slow.Register(context.Background(), &meshv1.RegisterRequest{Endpoint: endpoint("big-1", "big")}); err != nil {
		t.Fatal(err)
	}
	ss, err := slow.Watch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := ss.Send(&meshv1.WatchRequest{NodeId: "big-1"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "slow stream open", func() bool { _, ok := statusOf(e.srv, "big-1"); return ok })

	p, _ := runProxy(t, e, "orders-1", "orders", time.Second)
	p.expect(t, "v0|orders.default")
	for i := 1; i <= 5; i++ {
		start := time.Now()
		e.snaps.bump(true)
		want := "v" + string(rune('0'+i)) + "|orders.default"
		p.expect(t, want)
		if d := time.Since(start); d > 500*time.Millisecond {
			t.Fatalf("change %d took %s to reach the fast proxy", i, d)
		}
		time.Sleep(50 * time.Millisecond) // let the slow stream's sends pile up
	}
	eventually(t, "slow stream closed", func() bool { return e.srv.Counters().SlowConsumerClosed == 1 })
	// The stream is counted as it is closed and leaves the status list as
	// its handler returns, a moment later.
	eventually(t, "closed slow stream no longer listed", func() bool { _, ok := statusOf(e.srv, "big-1"); return !ok })
	if _, ok := statusOf(e.srv, "orders-1"); !ok {
		t.Fatal("fast proxy's stream was closed")
	}
}

func TestHeartbeatNotFoundReregisters(t *testing.T) {
	ca := newTestCA(t)
	e := startEnv(t, ca, "127.0.0.1:0", nil)
	p, _ := runProxy(t, e, "orders-1", "orders", 50*time.Millisecond)
	p.expect(t, "v0|orders.default")
	if n, eps, ttls := e.reg.stats(); n != 1 || len(eps) != 1 || ttls[0] != time.Second {
		t.Fatalf("registers=%d endpoints=%d ttls=%v; want 1, 1, [1s] (2.5×50ms rounded up to whole seconds)", n, len(eps), ttls)
	}
	e.reg.expireAll()
	eventually(t, "re-registration", func() bool { n, eps, _ := e.reg.stats(); return n == 2 && len(eps) == 1 })
}

func TestReconnectAfterServerRestart(t *testing.T) {
	ca := newTestCA(t)
	e1 := startEnv(t, ca, "127.0.0.1:0", nil)
	p, _ := runProxy(t, e1, "orders-1", "orders", 100*time.Millisecond)
	p.expect(t, "v0|orders.default")
	waitState(t, e1.srv, "orders-1", StateSynced, "v0|orders.default")

	// Shutdown ends the watch, so GracefulStop does not hang on it.
	start := time.Now()
	e1.stop()
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("graceful stop took %s", d)
	}
	time.Sleep(300 * time.Millisecond) // the proxy retries against nothing; Apply must not run
	select {
	case v := <-p.applied:
		t.Fatalf("applied %q while the control plane was down", v)
	default:
	}

	// A new control plane on the same port, with empty registry: the proxy
	// registers again, reconnects and says it runs v0, which is current, so
	// nothing is resent until something changes.
	e2 := startEnv(t, ca, e1.addr, nil)
	waitState(t, e2.srv, "orders-1", StateSynced, "v0|orders.default")
	if n, _, _ := e2.reg.stats(); n < 1 {
		t.Fatal("proxy did not register with the new control plane")
	}
	if got := e2.srv.Counters().Pushes; got != 0 {
		t.Fatalf("pushes after resync = %d, want 0", got)
	}
	e2.snaps.bump(true)
	p.expect(t, "v1|orders.default")
	waitState(t, e2.srv, "orders-1", StateSynced, "v1|orders.default")
}

// TestPushLatency measures Subscribe-signal → Apply over a real loopback
// TLS stream.
func TestPushLatency(t *testing.T) {
	ca := newTestCA(t)
	e := startEnv(t, ca, "127.0.0.1:0", nil)
	p, _ := runProxy(t, e, "orders-1", "orders", time.Second)
	p.next(t)
	const n = 100
	lat := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		e.snaps.bump(true)
		p.next(t)
		lat = append(lat, time.Since(start))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	p50, p99 := lat[n/2], lat[n*99/100]
	t.Logf("push latency over %d changes: p50 %s, p99 %s, max %s", n, p50, p99, lat[n-1])
	if p99 > time.Second {
		t.Fatalf("p99 push latency %s", p99)
	}
}

func BenchmarkPush(b *testing.B) {
	ca := newTestCA(b)
	e := startEnv(b, ca, "127.0.0.1:0", nil)
	p, _ := runProxy(b, e, "orders-1", "orders", time.Second)
	p.next(b)
	for b.Loop() {
		e.snaps.bump(true)
		p.next(b)
	}
}
