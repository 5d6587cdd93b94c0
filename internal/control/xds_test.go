package control

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// adsCall opens an ADS stream on c's gRPC port with TLS but no client
// certificate and returns the status of its first answer.
func adsCall(t *testing.T, c *Control) codes.Code {
	t.Helper()
	pem, err := os.ReadFile(filepath.Join(c.o.DataDir, CAFile))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	grpcAddr, _ := c.Addrs()
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err == nil {
		_ = s.Send(&discoveryv3.DiscoveryRequest{TypeUrl: "type.googleapis.com/envoy.config.listener.v3.Listener"})
		_, err = s.Recv()
	}
	return status.Code(err)
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
