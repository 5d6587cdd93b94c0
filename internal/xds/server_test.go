package xds

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	grpcstatus "google.golang.org/grpc/status"

	"trellis.dev/trellis/internal/testpki"
)

// countMetrics records what the adapter counts.
type countMetrics struct {
	mu                      sync.Mutex
	open                    map[string]int
	refused, nacked, pushed int
}

func (m *countMetrics) StreamOpened(mode string) { m.mu.Lock(); m.open[mode]++; m.mu.Unlock() }
func (m *countMetrics) StreamClosed(mode string) { m.mu.Lock(); m.open[mode]--; m.mu.Unlock() }
func (m *countMetrics) Refused()                 { m.mu.Lock(); m.refused++; m.mu.Unlock() }
func (m *countMetrics) Nacked(string)            { m.mu.Lock(); m.nacked++; m.mu.Unlock() }
func (m *countMetrics) Published()               { m.mu.Lock(); m.pushed++; m.mu.Unlock() }

func (m *countMetrics) get(f func(*countMetrics) int) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return f(m)
}

// xdsServer serves e's adapter over TLS on loopback as the control plane
// does (client certificate verified when given), runs it, and returns the
// address and the CA that signs both sides.
func xdsServer(t *testing.T, e *env) (string, *testpki.CA) {
	t.Helper()
	ca := testpki.NewCA(t)
	srvCert := ca.TLSCertificate(t, "spiffe://trellis.local/ns/trellis-system/sa/control", func(c *x509.Certificate) {
		c.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	})
	cfg := &tls.Config{Certificates: []tls.Certificate{srvCert}, ClientCAs: ca.Pool(), ClientAuth: tls.VerifyClientCertIfGiven, MinVersion: tls.VersionTLS13}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)))
	e.srv.Register(gs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { gs.Serve(ln) })
	wg.Go(func() { e.srv.Run(ctx) })
	t.Cleanup(func() { cancel(); gs.Stop(); wg.Wait() })
	return ln.Addr().String(), ca
}

// dial connects with a certificate for id from ca ("" for none).
func dial(t *testing.T, addr string, ca *testpki.CA, id string) discoveryv3.AggregatedDiscoveryServiceClient {
	t.Helper()
	cfg := &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS13}
	if id != "" {
		cfg.Certificates = []tls.Certificate{ca.TLSCertificate(t, id)}
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestDeltaADS: a raw incremental ADS stream gets the resources it
// subscribes to, its ACK shows in Clients, and a service deleted from
// the mesh arrives as a removal.
func TestDeltaADS(t *testing.T) {
	m := &countMetrics{open: map[string]int{}}
	e := greeterEnv(t)
	e.srv.opts.Metrics, e.srv.clients.metrics = m, m
	addr, ca := xdsServer(t, e)
	ads := dial(t, addr, ca, "spiffe://trellis.local/ns/default/sa/xds-client")
	stream, err := ads.DeltaAggregatedResources(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: "delta-client"}
	if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: resource.EndpointType,
		ResourceNamesSubscribe: []string{"greeter-v2.default:9090"}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResources()) != 1 || resp.GetResources()[0].GetName() != "greeter-v2.default:9090" {
		t.Fatalf("first delta response = %v", resp)
	}
	cla := &endpointv3.ClusterLoadAssignment{}
	if err := resp.GetResources()[0].GetResource().UnmarshalTo(cla); err != nil {
		t.Fatal(err)
	}
	if got := cla.GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetPortValue(); got != 24002 {
		t.Errorf("greeter-v2 endpoint port = %d, want 24002", got)
	}
	version := resp.GetSystemVersionInfo()
	if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResponseNonce: resp.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() bool {
		cs := e.srv.Clients()
		return len(cs) == 1 && cs[0].NodeID == "delta-client" && cs[0].Mode == ModeDelta &&
			cs[0].Acked[resource.EndpointType] == version && cs[0].Identity == "spiffe://trellis.local/ns/default/sa/xds-client"
	}, "delta ACK in Clients")
	if got := m.get(func(m *countMetrics) int { return m.open[ModeDelta] }); got != 1 {
		t.Errorf("open delta streams = %d, want 1", got)
	}

	e.delete("Service", "greeter-v2")
	resp, err = stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetRemovedResources()) != 1 || resp.GetRemovedResources()[0] != "greeter-v2.default:9090" {
		t.Fatalf("after deleting greeter-v2: removed = %v, resources = %v", resp.GetRemovedResources(), resp.GetResources())
	}
	if resp.GetSystemVersionInfo() == version {
		t.Errorf("version did not move: %s", version)
	}
}

// TestSotWNack: a NACK is shown with its message and counted, and a later
// ACK of the same type clears it.
func TestSotWNack(t *testing.T) {
	m := &countMetrics{open: map[string]int{}}
	e := greeterEnv(t)
	e.srv.opts.Metrics, e.srv.clients.metrics = m, m
	addr, ca := xdsServer(t, e)
	stream, err := dial(t, addr, ca, "spiffe://trellis.local/ns/default/sa/xds-client").StreamAggregatedResources(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	req := &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "sotw-client"}, TypeUrl: resource.ListenerType, ResourceNames: []string{"greeter.default"}}
	if err := stream.Send(req); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResources()) != 1 {
		t.Fatalf("listeners = %d, want 1", len(resp.GetResources()))
	}
	nack := &discoveryv3.DiscoveryRequest{TypeUrl: resource.ListenerType, ResourceNames: req.ResourceNames, ResponseNonce: resp.GetNonce(),
		ErrorDetail: &status.Status{Code: int32(codes.InvalidArgument), Message: "listener greeter.default: bad"}}
	if err := stream.Send(nack); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() bool {
		cs := e.srv.Clients()
		return len(cs) == 1 && cs[0].Error == resource.ListenerType+": listener greeter.default: bad" && cs[0].Acked[resource.ListenerType] == ""
	}, "NACK in Clients")
	if n := m.get(func(m *countMetrics) int { return m.nacked }); n != 1 {
		t.Errorf("nacks counted = %d, want 1", n)
	}
	ack := &discoveryv3.DiscoveryRequest{TypeUrl: resource.ListenerType, ResourceNames: req.ResourceNames, ResponseNonce: resp.GetNonce(), VersionInfo: resp.GetVersionInfo()}
	if err := stream.Send(ack); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() bool {
		cs := e.srv.Clients()
		return len(cs) == 1 && cs[0].Error == "" && cs[0].Acked[resource.ListenerType] == resp.GetVersionInfo()
	}, "ACK clears the NACK")
}

// TestRefusesWithoutCertificate: no client certificate, no xDS.
func TestRefusesWithoutCertificate(t *testing.T) {
	m := &countMetrics{open: map[string]int{}}
	e := greeterEnv(t)
	e.srv.opts.Metrics, e.srv.clients.metrics = m, m
	addr, ca := xdsServer(t, e)
	for _, mode := range []string{ModeSotW, ModeDelta} {
		ads := dial(t, addr, ca, "")
		var err error
		if mode == ModeSotW {
			var s discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
			if s, err = ads.StreamAggregatedResources(testCtx(t)); err == nil {
				_ = s.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resource.ListenerType})
				_, err = s.Recv()
			}
		} else {
			var s discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
			if s, err = ads.DeltaAggregatedResources(testCtx(t)); err == nil {
				_ = s.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.ListenerType})
				_, err = s.Recv()
			}
		}
		if grpcstatus.Code(err) != codes.Unauthenticated {
			t.Errorf("%s stream without a certificate: %v, want Unauthenticated", mode, err)
		}
	}
	if n := m.get(func(m *countMetrics) int { return m.refused }); n != 2 {
		t.Errorf("refusals counted = %d, want 2", n)
	}
	if cs := e.srv.Clients(); len(cs) != 0 {
		t.Errorf("refused streams listed: %v", cs)
	}
	// A certificate from another trust domain is refused too.
	s, err := dial(t, addr, ca, "spiffe://elsewhere.example/ns/default/sa/x").StreamAggregatedResources(testCtx(t))
	if err == nil {
		_ = s.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resource.ListenerType})
		_, err = s.Recv()
	}
	if grpcstatus.Code(err) != codes.Unauthenticated {
		t.Errorf("foreign trust domain: %v, want Unauthenticated", err)
	}
}

func eventually(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
