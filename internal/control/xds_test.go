package control

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"trellis.dev/trellis/internal/identity"
)

// adsStream opens an ADS stream on c's gRPC port with TLS, presenting
// cert if it is not nil, and sends a first request.
func adsStream(t *testing.T, c *Control, cert *tls.Certificate) discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
	t.Helper()
	pem, err := os.ReadFile(filepath.Join(c.o.DataDir, CAFile))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	grpcAddr, _ := c.Addrs()
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "t"}, TypeUrl: "type.googleapis.com/envoy.config.listener.v3.Listener",
		ResourceNames: []string{"greeter.default"}}); err != nil && !errors.Is(err, io.EOF) {
		// io.EOF means the server already ended the stream (it refuses a
		// peer without a certificate at once); Recv gives its status.
		t.Fatal(err)
	}
	return s
}

// adsCall is the status of an ADS stream's first answer, without a
// client certificate.
func adsCall(t *testing.T, c *Control) codes.Code {
	t.Helper()
	_, err := adsStream(t, c, nil).Recv()
	return status.Code(err)
}

// workloadCert is a certificate c's CA issued for default/xds-client.
func workloadCert(t *testing.T, c *Control) *tls.Certificate {
	t.Helper()
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	id, err := identity.WorkloadID(c.o.TrustDomain, "default", "xds-client")
	if err != nil {
		t.Fatal(err)
	}
	csr, err := identity.NewCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	chain, _, err := c.ca.Sign(csr, id)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: chain, PrivateKey: key}
}

// TestXDSStopEndsStreams: an open xDS stream does not hold up Stop (the
// gRPC server's graceful stop waits for streams), and is listed while open.
func TestXDSStopEndsStreams(t *testing.T) {
	c := startControl(t, t.TempDir())
	code, a := newClient(t, c).apply(false, file{Name: "svc.yaml", Content: "apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata: {name: greeter}\nspec:\n  ports: [{name: grpc, port: 9090, protocol: grpc}]\n"})
	if code != 200 {
		t.Fatalf("apply: %d %+v", code, a)
	}
	s := adsStream(t, c, workloadCert(t, c))
	if _, err := s.Recv(); err != nil {
		t.Fatalf("ADS with a workload certificate: %v", err)
	}
	code, body := newClient(t, c).do("GET", "/v1/xds-clients", nil)
	if code != 200 || !strings.Contains(string(body), `"identity":"spiffe://trellis.local/ns/default/sa/xds-client"`) {
		t.Errorf("GET /v1/xds-clients = %d %s", code, body)
	}
	start := time.Now()
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Stop took %s with an xDS stream open", d)
	}
	if _, err := s.Recv(); err == nil {
		t.Error("the stream outlived the control plane")
	}
}

// TestXDSOnGRPCPort: ADS is served on the gRPC port, refuses a client
// without a mesh certificate, and the admin API lists xDS clients.
func TestXDSOnGRPCPort(t *testing.T) {
	c := startControl(t, t.TempDir())
	if got := adsCall(t, c); got != codes.Unauthenticated {
		t.Errorf("ADS without a client certificate: %v, want Unauthenticated", got)
	}
	code, body := newClient(t, c).do("GET", "/v1/xds-clients", nil)
	if code != 200 || strings.TrimSpace(string(body)) != "[]" {
		t.Errorf("GET /v1/xds-clients = %d %s, want 200 []", code, body)
	}
}

// TestXDSOff: --no-xds serves no ADS.
func TestXDSOff(t *testing.T) {
	c, err := Start(context.Background(), Options{DataDir: t.TempDir(), GRPCAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		MetricsAddr: "127.0.0.1:0", DNSAddr: DNSOff, XDSOff: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop() })
	if got := adsCall(t, c); got != codes.Unimplemented {
		t.Errorf("ADS with xDS off: %v, want Unimplemented", got)
	}
}
