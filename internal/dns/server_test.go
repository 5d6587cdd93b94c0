package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/registry"
	"trellis.dev/trellis/internal/store"
)

// startServer serves m's view on a free loopback port.
func startServer(t testing.TB, m *testMesh, o Options) *Server {
	t.Helper()
	if o.Addr == "" {
		o.Addr = "127.0.0.1:0"
	}
	s, err := Start(m.view, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// caughtUp waits until s answers from every write to m so far.
func (m *testMesh) caughtUp(s *Server) {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitFor(ctx, m.rev); err != nil {
		m.t.Fatal(err)
	}
}

// syncRev takes the store's revision after writes made around m.txn.
func (m *testMesh) syncRev() {
	m.t.Helper()
	rev, err := m.st.Revision(context.Background())
	if err != nil {
		m.t.Fatal(err)
	}
	m.rev = rev
}

func exchange(t testing.TB, net, addr string, req *mdns.Msg) *mdns.Msg {
	t.Helper()
	c := &mdns.Client{Net: net, Timeout: 5 * time.Second}
	resp, _, err := c.Exchange(req, addr)
	if err != nil {
		t.Fatalf("%s query %s: %v", net, req.Question[0].Name, err)
	}
	return resp
}

func TestServerUDPAndTCP(t *testing.T) {
	m := shopMesh(t)
	s := startServer(t, m, Options{})
	m.caughtUp(s)
	for _, network := range []string{"udp", "tcp"} {
		resp := exchange(t, network, s.Addr(), query("_http._tcp.orders.default.svc.trellis.local.", mdns.TypeSRV))
		if resp.Rcode != mdns.RcodeSuccess || len(resp.Answer) != 2 {
			t.Errorf("%s: rcode %s, %d answers; want 2 SRV", network, mdns.RcodeToString[resp.Rcode], len(resp.Answer))
		}
		// The apex NS has the server's own address as glue.
		resp = exchange(t, network, s.Addr(), query("trellis.local.", mdns.TypeNS))
		if got := rdata(resp.Extra); !slices.Equal(got, []string{"A 127.0.0.1"}) {
			t.Errorf("%s: NS glue %q, want the listen address", network, got)
		}
	}
}

// TestServerTCPFallback: a large answer over UDP is truncated; the same
// query over TCP has it all.
func TestServerTCPFallback(t *testing.T) {
	m := bigMesh(t, 200)
	s := startServer(t, m, Options{})
	m.caughtUp(s)
	q := query("big.default.svc.trellis.local.", mdns.TypeA)
	udp := exchange(t, "udp", s.Addr(), q)
	if !udp.Truncated || len(udp.Answer) >= 200 {
		t.Fatalf("udp: TC %v with %d answers, want TC and fewer than 200", udp.Truncated, len(udp.Answer))
	}
	tcp := exchange(t, "tcp", s.Addr(), q)
	if tcp.Truncated || len(tcp.Answer) != 200 {
		t.Fatalf("tcp: TC %v with %d answers, want all 200", tcp.Truncated, len(tcp.Answer))
	}
}

// TestServerFollowsRegistry: endpoints registered and removed through the
// registry, under leases, on a real store, show in answers once the view
// has the change — the same change the compiler pushes.
func TestServerFollowsRegistry(t *testing.T) {
	m := newMesh(t)
	s := startServer(t, m, Options{})
	reg := registry.New(m.st, nil)
	ctx := context.Background()
	name := "pay.default.svc.trellis.local."
	a := func() []string {
		resp := exchange(t, "udp", s.Addr(), query(name, mdns.TypeA))
		if resp.Rcode == mdns.RcodeNameError {
			return []string{"NXDOMAIN"}
		}
		got := rdata(resp.Answer)
		slices.Sort(got)
		return got
	}
	register := func(id, addr string) int64 {
		lease, _, err := reg.Register(ctx, &meshv1.Endpoint{Id: id, Service: "pay", Namespace: "default", Address: addr, Healthy: true}, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		m.syncRev()
		return lease
	}

	m.caughtUp(s)
	if got := a(); !slices.Equal(got, []string{"NXDOMAIN"}) {
		t.Fatalf("before registration: %q", got)
	}
	l1 := register("pay-1", "127.0.0.11:15001")
	register("pay-2", "127.0.0.12:15001")
	m.caughtUp(s)
	if got := a(); !slices.Equal(got, []string{"A 127.0.0.11", "A 127.0.0.12"}) {
		t.Fatalf("after two registrations: %q", got)
	}
	if err := reg.Deregister(ctx, l1); err != nil {
		t.Fatal(err)
	}
	m.syncRev()
	m.caughtUp(s)
	if got := a(); !slices.Equal(got, []string{"A 127.0.0.12"}) {
		t.Fatalf("after the lease of pay-1 ended: %q", got)
	}
}

// TestServerForwardsToUpstream: a second DNS server on loopback is the
// upstream; non-mesh names reach it over the client's transport, mesh names
// never do.
func TestServerForwardsToUpstream(t *testing.T) {
	asked := make(chan string, 16)
	up := startUpstream(t, func(w mdns.ResponseWriter, r *mdns.Msg) {
		asked <- r.Question[0].Name + " " + w.LocalAddr().Network()
		resp := new(mdns.Msg).SetReply(r)
		rr, _ := mdns.NewRR(r.Question[0].Name + " 60 IN A 192.0.2.7")
		resp.Answer = []mdns.RR{rr}
		w.WriteMsg(resp)
	})
	m := shopMesh(t)
	s := startServer(t, m, Options{Forward: up})
	m.caughtUp(s)
	for _, network := range []string{"udp", "tcp"} {
		resp := exchange(t, network, s.Addr(), query("example.org.", mdns.TypeA))
		if got := rdata(resp.Answer); resp.Rcode != mdns.RcodeSuccess || !slices.Equal(got, []string{"A 192.0.2.7"}) {
			t.Fatalf("%s: forwarded answer %s %q", network, mdns.RcodeToString[resp.Rcode], got)
		}
		if got := <-asked; got != "example.org. "+network {
			t.Fatalf("upstream asked %q, want example.org. over %s", got, network)
		}
	}
	resp := exchange(t, "udp", s.Addr(), query("orders.default.svc.trellis.local.", mdns.TypeA))
	if resp.Rcode != mdns.RcodeSuccess || len(resp.Answer) != 1 {
		t.Fatalf("mesh name with forwarding on: %v", resp)
	}
	select {
	case got := <-asked:
		t.Fatalf("mesh name forwarded: %s", got)
	default:
	}
}

func TestServerForwardFailure(t *testing.T) {
	// A UDP socket that never answers.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	m := newMesh(t)
	s := startServer(t, m, Options{Forward: pc.LocalAddr().String(), ForwardTimeout: 200 * time.Millisecond})
	resp := exchange(t, "udp", s.Addr(), query("example.org.", mdns.TypeA))
	if resp.Rcode != mdns.RcodeServerFailure {
		t.Fatalf("upstream silent: rcode %s, want SERVFAIL", mdns.RcodeToString[resp.Rcode])
	}
}

// startUpstream runs h on UDP and TCP on one loopback port.
func startUpstream(t *testing.T, h mdns.HandlerFunc) string {
	t.Helper()
	pcs, ln, err := listen("127.0.0.1:0", 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, srv := range []*mdns.Server{{PacketConn: pcs[0], Handler: h}, {Listener: ln, Handler: h}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		t.Cleanup(func() { srv.Shutdown() })
	}
	return ln.Addr().String()
}

func TestServerAddressInUse(t *testing.T) {
	m := newMesh(t)
	s := startServer(t, m, Options{})
	_, err := Start(m.view, Options{Addr: s.Addr()})
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("second server on %s: %v, want EADDRINUSE", s.Addr(), err)
	}
}

func TestStartRefusesBadOptions(t *testing.T) {
	m := newMesh(t)
	for _, o := range []Options{
		{Addr: "127.0.0.1:0", TTL: 1500 * time.Millisecond},
		{Addr: "127.0.0.1:0", TTL: -time.Second},
		{Addr: "127.0.0.1:0", Domain: "Not_A.Domain"},
		{Addr: "no-port"},
	} {
		if s, err := Start(m.view, o); err == nil {
			s.Stop()
			t.Errorf("Start(%+v) succeeded", o)
		}
	}
}

// TestServerConcurrentWithChurn: replies built from shared index records
// while endpoints come and go (run with -race).
func TestServerConcurrentWithChurn(t *testing.T) {
	m := bigMesh(t, 20)
	s := startServer(t, m, Options{})
	m.caughtUp(s)
	done := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			network := []string{"udp", "tcp"}[i%2]
			c := &mdns.Client{Net: network, Timeout: 5 * time.Second}
			for {
				select {
				case <-done:
					return
				default:
				}
				for _, q := range []*mdns.Msg{
					query("big.default.svc.trellis.local.", mdns.TypeA),
					query("_http._tcp.big.default.svc.trellis.local.", mdns.TypeSRV).SetEdns0(1232, false),
				} {
					resp, _, err := c.Exchange(q, s.Addr())
					if err != nil {
						t.Errorf("%s: %v", network, err)
						return
					}
					if resp.Rcode != mdns.RcodeSuccess {
						t.Errorf("%s: rcode %s", network, mdns.RcodeToString[resp.Rcode])
						return
					}
				}
			}
		})
	}
	for i := range 20 {
		m.endpoint("default", "big", fmt.Sprintf("churn-%d", i), fmt.Sprintf("127.4.0.%d:15001", i+1), true)
		m.txn(store.Delete(registry.Key("default", "big", fmt.Sprintf("big-%03d", i)), store.Any))
	}
	m.caughtUp(s)
	close(done)
	wg.Wait()
	resp := exchange(t, "tcp", s.Addr(), query("big.default.svc.trellis.local.", mdns.TypeA))
	if got := rdata(resp.Answer); len(got) != 20 || !slices.Contains(got, "A 127.4.0.1") {
		t.Fatalf("after churn: %q, want the 20 new endpoints", got)
	}
}

// TestServerUDPMalformed: what does not unpack gets FORMERR with its id;
// too short for a header, or a response, gets nothing.
func TestServerUDPMalformed(t *testing.T) {
	s := startServer(t, newMesh(t), Options{})
	conn, err := net.Dial("udp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	send := func(b []byte) []byte {
		t.Helper()
		if _, err := conn.Write(b); err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		buf := make([]byte, 512)
		n, err := conn.Read(buf)
		if err != nil {
			return nil
		}
		return buf[:n]
	}
	// A header announcing one question, then a truncated name.
	bad := []byte{0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 7, 'o', 'r'}
	got := send(bad)
	resp := new(mdns.Msg)
	if err := resp.Unpack(got); err != nil {
		t.Fatalf("reply to a malformed query %x: %v", got, err)
	}
	if resp.Id != 0xabcd || !resp.Response || resp.Rcode != mdns.RcodeFormatError {
		t.Fatalf("reply %v, want FORMERR with id 0xabcd", resp)
	}
	if got := send(bad[:5]); got != nil {
		t.Fatalf("reply to 5 bytes: %x", got)
	}
	response := append([]byte{}, bad...)
	response[2] |= 0x80 // QR
	if got := send(response); got != nil {
		t.Fatalf("reply to a malformed response: %x", got)
	}
	// The loop is still serving.
	if r := exchange(t, "udp", s.Addr(), query("trellis.local.", mdns.TypeSOA)); r.Rcode != mdns.RcodeSuccess {
		t.Fatalf("after garbage: %v", r)
	}
}
