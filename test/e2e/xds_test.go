package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/xds"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/identity"
)

// xdsServices: greeter (one gRPC port) whose endpoints are two versions,
// each a Service of its own for the split.
const xdsServices = `
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: greeter}
spec:
  ports: [{name: grpc, port: 9090, protocol: grpc}]
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: greeter-v1}
spec:
  selector: {app: greeter, version: v1}
  ports: [{name: grpc, port: 9090, protocol: grpc}]
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: greeter-v2}
spec:
  selector: {app: greeter, version: v2}
  ports: [{name: grpc, port: 9090, protocol: grpc}]
`

const xdsSplit = `
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: greeter-split}
spec:
  parentRefs:
  - {group: "", kind: Service, name: greeter, port: 9090}
  rules:
  - backendRefs:
    - {name: greeter-v1, port: 9090, weight: 80}
    - {name: greeter-v2, port: 9090, weight: 20}
`

// greeterApp serves the gRPC health service on loopback and names itself
// in the x-replica response header, so a client can count who answered.
func greeterApp(t *testing.T, replica string) string {
	t.Helper()
	l := listen(t)
	srv := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		_ = grpc.SetHeader(ctx, metadata.Pairs("x-replica", replica))
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return l.Addr().String()
}

// xdsClientFiles gets a workload certificate for default/xds-client the
// way a proxy does (a join token from the CLI, then Certify with a CSR)
// and writes it, its key and the trust bundle to a directory, with a gRPC
// xDS bootstrap that uses them for the control plane and for the mesh's
// mTLS. It returns the bootstrap's contents.
func xdsClientFiles(t *testing.T, cp *controlPlane, nodeID string) []byte {
	t.Helper()
	dir := t.TempDir()
	tokenFile := cp.joinToken(t, proxyConfig{service: "xds-client"})
	token, err := os.ReadFile(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(filepath.Join(cp.dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.crt holds no certificate")
	}
	conn, err := grpc.NewClient(cp.grpc, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS13})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	id, err := identity.WorkloadID("trellis.local", "default", "xds-client")
	if err != nil {
		t.Fatal(err)
	}
	csr, err := identity.NewCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := meshv1.NewMeshClient(conn).Certify(ctx, &meshv1.CertifyRequest{Token: strings.TrimSpace(string(token)), Csr: csr,
		Namespace: "default", ServiceAccount: "xds-client"})
	if err != nil {
		t.Fatalf("certify xds-client: %v", err)
	}
	var chain []byte
	for _, der := range resp.CertChain {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	var bundle []byte
	for _, der := range resp.TrustBundle {
		bundle = append(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	files := map[string][]byte{"cert.pem": chain, "key.pem": keyPEM(t, key), "ca.pem": bundle}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	certs := map[string]string{
		"certificate_file":    filepath.Join(dir, "cert.pem"),
		"private_key_file":    filepath.Join(dir, "key.pem"),
		"ca_certificate_file": filepath.Join(dir, "ca.pem"),
	}
	bootstrap := map[string]any{
		"xds_servers": []any{map[string]any{
			"server_uri":      cp.grpc,
			"channel_creds":   []any{map[string]any{"type": "tls", "config": certs}},
			"server_features": []string{"xds_v3"},
		}},
		"node": map[string]any{"id": nodeID},
		"certificate_providers": map[string]any{"trellis": map[string]any{
			"plugin_name": "file_watcher",
			"config":      map[string]any{"certificate_file": certs["certificate_file"], "private_key_file": certs["private_key_file"], "ca_certificate_file": certs["ca_certificate_file"], "refresh_interval": "60s"},
		}},
	}
	b, err := json.MarshalIndent(bootstrap, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func keyPEM(t *testing.T, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// xdsConn dials target with grpc-go's xDS resolver on bootstrap and xDS
// credentials (mTLS as the Clusters say; plaintext only as the fallback
// for a cluster without security, which the adapter never sends).
func xdsConn(t *testing.T, bootstrap []byte, target string) *grpc.ClientConn {
	t.Helper()
	rb, err := xds.NewXDSResolverWithConfigForTesting(bootstrap)
	if err != nil {
		t.Fatalf("xds resolver: %v", err)
	}
	creds, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(target, grpc.WithResolvers(rb), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// tally sends n health checks and counts replies by replica ("error:
// <code>" for failures).
func tally(t *testing.T, conn *grpc.ClientConn, n int) map[string]int {
	t.Helper()
	hc := healthpb.NewHealthClient(conn)
	out := map[string]int{}
	failed := 0
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var md metadata.MD
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Header(&md), grpc.WaitForReady(true))
		cancel()
		if err != nil {
			out["error: "+err.Error()]++
			if failed++; failed == 3 {
				// Broken, not flaky: the caller reports what failed.
				return out
			}
			continue
		}
		out[strings.Join(md.Get("x-replica"), ",")]++
	}
	return out
}

// TestXDSProxylessGRPC: a grpc-go client in this process dials
// xds:///greeter.default with a bootstrap pointing at the control plane.
// It talks mTLS (its workload certificate, the server's SPIFFE ID checked)
// straight to the greeter proxies' inbound ports, follows a weighted split
// applied with trellis apply, stops using an endpoint whose proxy died,
// and is listed by proxy-status with its ACKed versions.
func TestXDSProxylessGRPC(t *testing.T) {
	cp := startControl(t, "")
	cp.apply(t, xdsServices)
	v1a := cp.proxy(t, proxyConfig{service: "greeter", app: greeterApp(t, "v1-a"), labels: "version=v1"})
	v1b := cp.proxy(t, proxyConfig{service: "greeter", app: greeterApp(t, "v1-b"), labels: "version=v1"})
	cp.proxy(t, proxyConfig{service: "greeter", app: greeterApp(t, "v2"), labels: "version=v2"})
	conn := xdsConn(t, xdsClientFiles(t, cp, "xds-e2e-client"), "xds:///greeter.default")

	// No route: the service's own three endpoints share the calls.
	got := tally(t, conn, 60)
	if got["v1-a"] == 0 || got["v1-b"] == 0 || got["v2"] == 0 || got["v1-a"]+got["v1-b"]+got["v2"] != 60 {
		t.Fatalf("before the split: replies by replica = %v; want all three, no errors", got)
	}

	t.Logf("before the split: %v", got)
	// The calls came over mTLS with the client's workload certificate:
	// the inbound proxy counted them by its SPIFFE ID.
	if _, body, err := get(http.DefaultClient, "http://"+v1a.admin+"/metrics"); err != nil ||
		!strings.Contains(body, `source_identity="spiffe://trellis.local/ns/default/sa/xds-client"`) {
		t.Errorf("v1-a's proxy did not count requests from the xDS client's identity (%v):\n%s", err, grepLines(body, "source_identity"))
	}

	// proxy-status lists the xDS client beside the proxies.
	out, err := cp.cli(t, "proxy-status")
	if err != nil {
		t.Fatalf("proxy-status: %v\n%s", err, out)
	}
	if !strings.Contains(out, "xds-e2e-client") || !strings.Contains(out, "LDS=") {
		t.Errorf("proxy-status does not list the xDS client with its ACKed versions:\n%s", out)
	}

	// The split: 80% to v1 (two endpoints), 20% to v2. The client has it
	// once it ACKed a new route configuration.
	before := xdsAcked(t, cp, "xds-e2e-client")
	cp.apply(t, xdsSplit)
	eventually(t, 15*time.Second, "the client to ACK the split", func() bool {
		return xdsAcked(t, cp, "xds-e2e-client")[routeType] != before[routeType]
	})
	// grpc-go subscribes to the clusters a new route names only once it
	// has the route: until their CDS arrives it may fail an RPC picked
	// for one ("unknown cluster selected for RPC", Unavailable). Wait for
	// both to answer before counting.
	eventually(t, 5*time.Second, "the split's clusters to answer", func() bool {
		w := tally(t, conn, 20)
		return w["v1-a"]+w["v1-b"]+w["v2"] == 20
	})
	got = tally(t, conn, 400)
	t.Logf("after the 80/20 split: %v", got)
	v1, v2 := got["v1-a"]+got["v1-b"], got["v2"]
	if v1+v2 != 400 {
		t.Fatalf("after the split: %v; want no errors", got)
	}
	// 400 draws at p=0.2: mean 80, sd 8; ±4 sd.
	if v2 < 48 || v2 > 112 {
		t.Errorf("after the split: v2 answered %d of 400 (%v); want about 80 (20%%)", v2, got)
	}

	// v1-b's proxy dies (no deregistration): its lease expires, the
	// endpoint leaves EDS, and the client stops using it.
	before = xdsAcked(t, cp, "xds-e2e-client")
	if err := syscall.Kill(-v1b.proc.cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-v1b.proc.done
	killed := time.Now()
	eventually(t, 30*time.Second, "the client to ACK endpoints without v1-b", func() bool {
		return xdsAcked(t, cp, "xds-e2e-client")[endpointType] != before[endpointType]
	})
	t.Logf("new endpoints ACKed %s after the kill", time.Since(killed).Round(100*time.Millisecond))
	got = tally(t, conn, 100)
	t.Logf("after v1-b died: %v", got)
	if got["v1-b"] != 0 || got["v1-a"]+got["v2"] != 100 {
		t.Errorf("after v1-b died: %v; want every call answered by v1-a or v2", got)
	}

	// A fault on the route: grpc-go itself aborts the calls with the
	// route's gRPC status (the xDS fault filter).
	before = xdsAcked(t, cp, "xds-e2e-client")
	cp.apply(t, xdsFault)
	eventually(t, 15*time.Second, "the client to ACK the fault", func() bool {
		return xdsAcked(t, cp, "xds-e2e-client")[routeType] != before[routeType]
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("with the fault: %v; want ResourceExhausted from the fault", err)
	}
}

const xdsFault = `
apiVersion: trellis.dev/v1alpha1
kind: FaultInjection
metadata: {name: greeter-exhausted}
spec:
  abort: {grpcStatus: 8, percentage: 100}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: greeter-split}
spec:
  parentRefs:
  - {group: "", kind: Service, name: greeter, port: 9090}
  rules:
  - filters:
    - type: ExtensionRef
      extensionRef: {group: trellis.dev, kind: FaultInjection, name: greeter-exhausted}
    backendRefs:
    - {name: greeter-v1, port: 9090}
`

const (
	routeType    = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	endpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
)

// xdsAcked is the ACKed version per type URL of xDS client node, from
// proxy-status -o json.
func xdsAcked(t *testing.T, cp *controlPlane, node string) map[string]string {
	t.Helper()
	out, err := cp.cli(t, "proxy-status", "-o", "json")
	if err != nil {
		t.Fatalf("proxy-status -o json: %v\n%s", err, out)
	}
	var list []struct {
		NodeID string            `json:"nodeId"`
		Kind   string            `json:"kind"`
		Acked  map[string]string `json:"acked"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("proxy-status -o json: %v\n%s", err, out)
	}
	for _, e := range list {
		if e.Kind == "xds" && e.NodeID == node {
			return e.Acked
		}
	}
	t.Fatalf("proxy-status -o json does not list xDS client %s:\n%s", node, out)
	return nil
}

// TestXDSRefusesClientWithoutCertificate: a client whose bootstrap has no
// certificate (TLS to the control plane only) gets no resources, and the
// control plane counts the refusal.
func TestXDSRefusesClientWithoutCertificate(t *testing.T) {
	cp := startControl(t, "")
	cp.apply(t, xdsServices)
	var bs map[string]any
	if err := json.Unmarshal(xdsClientFiles(t, cp, "no-cert"), &bs); err != nil {
		t.Fatal(err)
	}
	srv := bs["xds_servers"].([]any)[0].(map[string]any)
	cfg := srv["channel_creds"].([]any)[0].(map[string]any)["config"].(map[string]any)
	delete(cfg, "certificate_file")
	delete(cfg, "private_key_file")
	b, _ := json.Marshal(bs)
	conn := xdsConn(t, b, "xds:///greeter.default")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err == nil {
		t.Fatal("a client without a certificate was served")
	}
	var once sync.Once
	eventually(t, 10*time.Second, "the refusal to be counted", func() bool {
		body := fetchMetrics(t, cp)
		ok := strings.Contains(body, "trellis_control_xds_refused_streams_total ") && !strings.Contains(body, "trellis_control_xds_refused_streams_total 0")
		if !ok {
			once.Do(func() { t.Logf("metrics so far:\n%s", grepLines(body, "xds")) })
		}
		return ok
	})
}

func fetchMetrics(t *testing.T, cp *controlPlane) string {
	t.Helper()
	_, body, err := get(http.DefaultClient, "http://"+cp.metrics+"/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	return body
}
