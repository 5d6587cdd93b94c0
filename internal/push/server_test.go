package push

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

func TestCertify(t *testing.T) {
	ca := newTestCA(t)
	e := startEnv(t, ca, "127.0.0.1:0", nil)
	orders := ca.workloadCert(t, spiffe("default", "orders"), time.Time{})
	expired := ca.workloadCert(t, spiffe("default", "orders"), time.Now().Add(-time.Minute))
	otherTD := ca.workloadCert(t, "spiffe://evil.example/ns/default/sa/orders", time.Time{})

	tests := []struct {
		name     string
		cert     *tls.Certificate
		token    string
		csr      []byte
		ns, sa   string
		wantCode codes.Code
		wantMsg  string
	}{
		{name: "token ok", token: "s3cret", ns: "default", sa: "orders"},
		{name: "bad token", token: "guess", ns: "default", sa: "orders", wantCode: codes.Unauthenticated, wantMsg: "join token rejected: pass --token-file"},
		{name: "no token no cert", ns: "default", sa: "orders", wantCode: codes.Unauthenticated, wantMsg: "--token-file"},
		{name: "renewal same id", cert: orders, ns: "default", sa: "orders"},
		{name: "renewal other id", cert: orders, ns: "default", sa: "payments", wantCode: codes.PermissionDenied, wantMsg: "may not renew"},
		{name: "renewal other namespace", cert: orders, ns: "prod", sa: "orders", wantCode: codes.PermissionDenied, wantMsg: "may not renew"},
		{name: "cert plus valid token for other id", cert: orders, token: "s3cret", ns: "default", sa: "payments"},
		{name: "other trust domain cert", cert: otherTD, ns: "default", sa: "orders", wantCode: codes.Unauthenticated, wantMsg: "trust domain"},
		{name: "missing namespace", token: "s3cret", sa: "orders", wantCode: codes.InvalidArgument, wantMsg: "namespace: required"},
		{name: "bad namespace", token: "s3cret", ns: "Default", sa: "orders", wantCode: codes.InvalidArgument, wantMsg: "namespace"},
		{name: "missing sa", token: "s3cret", ns: "default", wantCode: codes.InvalidArgument, wantMsg: "service_account: required"},
		{name: "bad sa", token: "s3cret", ns: "default", sa: "a/b", wantCode: codes.InvalidArgument, wantMsg: "service_account"},
		{name: "bad csr", token: "s3cret", ns: "default", sa: "orders", csr: []byte("nope"), wantCode: codes.InvalidArgument, wantMsg: "csr"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := e.dial(t, tt.cert)
			mesh, _ := c.current()
			csr := tt.csr
			if csr == nil {
				csr = newCSR(t)
			}
			resp, err := mesh.Certify(context.Background(), &meshv1.CertifyRequest{Token: tt.token, Csr: csr, Namespace: tt.ns, ServiceAccount: tt.sa})
			if tt.wantCode != codes.OK {
				if status.Code(err) != tt.wantCode || !strings.Contains(status.Convert(err).Message(), tt.wantMsg) {
					t.Fatalf("err = %v; want %v containing %q", err, tt.wantCode, tt.wantMsg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			leaf, err := x509.ParseCertificate(resp.GetCertChain()[0])
			if err != nil {
				t.Fatal(err)
			}
			if got, want := leaf.URIs[0].String(), spiffe(tt.ns, tt.sa); got != want {
				t.Fatalf("issued for %s, want %s", got, want)
			}
			if len(resp.GetTrustBundle()) != 1 || resp.GetNotAfter() != leaf.NotAfter.Unix() {
				t.Fatalf("bundle %d roots, not_after %d vs %d", len(resp.GetTrustBundle()), resp.GetNotAfter(), leaf.NotAfter.Unix())
			}
		})
	}

	// The expired certificate fails the handshake's chain verification
	// before reaching Certify, so the RPC fails at the transport.
	t.Run("expired cert", func(t *testing.T) {
		c := e.dial(t, expired)
		mesh, _ := c.current()
		_, err := mesh.Certify(context.Background(), &meshv1.CertifyRequest{Csr: newCSR(t), Namespace: "default", ServiceAccount: "orders"})
		if err == nil {
			t.Fatal("renewal with an expired certificate succeeded")
		}
	})
}

// The client-facing error says whether retrying helps and what to do.
func TestClientCertifyErrors(t *testing.T) {
	ca := newTestCA(t)
	e := startEnv(t, ca, "127.0.0.1:0", nil)
	c := e.dial(t, nil)
	_, err := c.Certify(context.Background(), "wrong", newCSR(t), "default", "orders")
	if !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), "--token-file") {
		t.Fatalf("err = %v; want ErrRejected mentioning --token-file", err)
	}
	resp, err := c.Certify(context.Background(), "s3cret", newCSR(t), "default", "orders")
	if err != nil || len(resp.GetCertChain()) != 1 {
		t.Fatalf("certify: %v", err)
	}

	e.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := c.Certify(ctx, "s3cret", newCSR(t), "default", "orders"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("err with control plane down = %v; want ErrUnavailable", err)
	}

	// A client that does not trust the control plane's CA fails the handshake.
	other := newTestCA(t)
	e2 := startEnv(t, ca, "127.0.0.1:0", nil)
	c2, err := Dial(ClientOptions{Addr: e2.addr, RootCAs: other.pool})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, err := c2.Certify(ctx, "s3cret", newCSR(t), "default", "orders"); err == nil {
		t.Fatal("certify succeeded against an untrusted control plane")
	}
}

func TestDialValidation(t *testing.T) {
	if _, err := Dial(ClientOptions{RootCAs: newTestCA(t).pool}); err == nil || !strings.Contains(err.Error(), "address") {
		t.Fatalf("err = %v", err)
	}
	if _, err := Dial(ClientOptions{Addr: "127.0.0.1:1"}); err == nil || !strings.Contains(err.Error(), "--ca-file") {
		t.Fatalf("err = %v", err)
	}
}

func TestRegister(t *testing.T) {
	ca := newTestCA(t)
	e := startEnv(t, ca, "127.0.0.1:0", func(o *ServerOptions) { o.MaxTTL = 20 * time.Second })
	orders := ca.workloadCert(t, spiffe("default", "orders"), time.Time{})

	tests := []struct {
		name     string
		cert     *tls.Certificate
		ep       *meshv1.Endpoint
		ttl      int64
		wantCode codes.Code
		wantMsg  string
		wantTTL  time.Duration
	}{
		{name: "no client cert", ep: endpoint("orders-1", "orders"), wantCode: codes.Unauthenticated, wantMsg: "no client certificate"},
		{name: "ok, ttl clamped", cert: orders, ep: endpoint("orders-1", "orders"), ttl: 3600, wantTTL: 20 * time.Second},
		{name: "ok, ttl kept", cert: orders, ep: endpoint("orders-2", "orders"), ttl: 13, wantTTL: 13 * time.Second},
		{name: "identity mismatch", cert: orders, ep: func() *meshv1.Endpoint {
			ep := endpoint("orders-1", "orders")
			ep.Identity = spiffe("default", "payments")
			return ep
		}(), wantCode: codes.PermissionDenied, wantMsg: "endpoint.identity"},
		{name: "namespace mismatch", cert: orders, ep: func() *meshv1.Endpoint {
			ep := endpoint("orders-1", "orders")
			ep.Namespace = "prod"
			return ep
		}(), wantCode: codes.PermissionDenied, wantMsg: "endpoint.namespace"},
		{name: "no endpoint", cert: orders, wantCode: codes.InvalidArgument, wantMsg: "endpoint: required"},
		{name: "no id", cert: orders, ep: endpoint("", "orders"), wantCode: codes.InvalidArgument, wantMsg: "endpoint.id"},
		{name: "bad service", cert: orders, ep: endpoint("x", "Orders!"), wantCode: codes.InvalidArgument, wantMsg: "endpoint.service"},
		{name: "bad label value", cert: orders, ep: func() *meshv1.Endpoint {
			ep := endpoint("orders-1", "orders")
			ep.Labels = map[string]string{"version": "not a label!"}
			return ep
		}(), wantCode: codes.InvalidArgument, wantMsg: "endpoint.labels[version]"},
		{name: "bad label key", cert: orders, ep: func() *meshv1.Endpoint {
			ep := endpoint("orders-1", "orders")
			ep.Labels = map[string]string{"-zone": "a"}
			return ep
		}(), wantCode: codes.InvalidArgument, wantMsg: "endpoint.labels[-zone]"},
		{name: "bad address", cert: orders, ep: func() *meshv1.Endpoint {
			ep := endpoint("orders-1", "orders")
			ep.Address = "15006"
			return ep
		}(), wantCode: codes.InvalidArgument, wantMsg: "endpoint.address"},
		{name: "bad admin port", cert: orders, ep: func() *meshv1.Endpoint {
			ep := endpoint("orders-1", "orders")
			ep.AdminAddress = "127.0.0.1:99999"
			return ep
		}(), wantCode: codes.InvalidArgument, wantMsg: "endpoint.admin_address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, _, _ := e.reg.stats()
			mesh, _ := e.dial(t, tt.cert).current()
			resp, err := mesh.Register(context.Background(), &meshv1.RegisterRequest{Endpoint: tt.ep, TtlSeconds: tt.ttl})
			after, eps, _ := e.reg.stats()
			if tt.wantCode != codes.OK {
				if status.Code(err) != tt.wantCode || !strings.Contains(status.Convert(err).Message(), tt.wantMsg) {
					t.Fatalf("err = %v; want %v containing %q", err, tt.wantCode, tt.wantMsg)
				}
				if after != before {
					t.Fatal("refused endpoint reached the registry")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if time.Duration(resp.GetTtlSeconds())*time.Second != tt.wantTTL {
				t.Fatalf("ttl = %ds, want %s", resp.GetTtlSeconds(), tt.wantTTL)
			}
			var got *meshv1.Endpoint
			for _, ep := range eps {
				if ep.GetId() == tt.ep.GetId() {
					got = ep
				}
			}
			if got == nil || got.GetIdentity() != spiffe("default", "orders") || got.GetLabels()["app"] != "orders" {
				t.Fatalf("registered %v; want identity from the certificate and app label", got)
			}
		})
	}
}

func TestHeartbeat(t *testing.T) {
	ca := newTestCA(t)
	e := startEnv(t, ca, "127.0.0.1:0", nil)
	orders := e.dial(t, ca.workloadCert(t, spiffe("default", "orders"), time.Time{}))
	payments := e.dial(t, ca.workloadCert(t, spiffe("default", "payments"), time.Time{}))
	ctx := context.Background()
	om, _ := orders.current()
	pm, _ := payments.current()
	resp, err := om.Register(ctx, &meshv1.RegisterRequest{Endpoint: endpoint("orders-1", "orders"), TtlSeconds: 10})
	if err != nil {
		t.Fatal(err)
	}
	lease := resp.GetLeaseId()

	if hb, err := om.Heartbeat(ctx, &meshv1.HeartbeatRequest{LeaseId: lease}); err != nil || hb.GetTtlSeconds() != 10 {
		t.Fatalf("heartbeat = %v, %v; want ttl 10", hb, err)
	}
	if _, err := pm.Heartbeat(ctx, &meshv1.HeartbeatRequest{LeaseId: lease}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("another identity's heartbeat: %v; want PermissionDenied", err)
	}
	anon, _ := e.dial(t, nil).current()
	if _, err := anon.Heartbeat(ctx, &meshv1.HeartbeatRequest{LeaseId: lease}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("anonymous heartbeat: %v; want Unauthenticated", err)
	}
	e.reg.expireAll()
	if _, err := om.Heartbeat(ctx, &meshv1.HeartbeatRequest{LeaseId: lease}); status.Code(err) != codes.NotFound {
		t.Fatalf("expired lease: %v; want NotFound", err)
	}
}

func TestTokenValidator(t *testing.T) {
	v := TokenValidator("a-token", "", "b-token")
	for tok, want := range map[string]bool{"a-token": true, "b-token": true, "": false, "a-toke": false, "a-tokenx": false, "A-TOKEN": false} {
		if got := v(tok); got != want {
			t.Errorf("valid(%q) = %v, want %v", tok, got, want)
		}
	}
	if TokenValidator()("") {
		t.Error("empty token accepted with no tokens configured")
	}
}

func TestShallowCopyCopiesEveryField(t *testing.T) {
	src := &meshv1.Snapshot{
		Version: "v1", TrustDomain: "td", Domain: "d", TrustBundle: [][]byte{{1}},
		Inbound: &meshv1.Service{Name: "a"}, Services: []*meshv1.Service{{Name: "b"}},
	}
	got := shallowCopy(src)
	got.Nonce, got.Replica = "n1", "r1"
	if got.GetNonce() != "n1" || src.GetNonce() != "" {
		t.Fatalf("nonce: copy %q, source %q", got.GetNonce(), src.GetNonce())
	}
	if got.GetReplica() != "r1" || src.GetReplica() != "" {
		t.Fatalf("replica: copy %q, source %q", got.GetReplica(), src.GetReplica())
	}
	got.Nonce, got.Replica = "", ""
	if !protoEqual(got, src) {
		t.Fatalf("copy %v differs from %v", got, src)
	}
}

// TestHeartbeatRecordsHealth: the verdict a heartbeat carries reaches the
// registry once per change, not once per heartbeat.
func TestHeartbeatRecordsHealth(t *testing.T) {
	ca := newTestCA(t)
	e := startEnv(t, ca, "127.0.0.1:0", nil)
	om, _ := e.dial(t, ca.workloadCert(t, spiffe("default", "orders"), time.Time{})).current()
	ctx := context.Background()
	ep := endpoint("orders-1", "orders")
	ep.Healthy, ep.HealthReason = false, "no check passed yet"
	resp, err := om.Register(ctx, &meshv1.RegisterRequest{Endpoint: ep, TtlSeconds: 10})
	if err != nil {
		t.Fatal(err)
	}
	lease := resp.GetLeaseId()
	state := func() (bool, string, int) {
		e.reg.mu.Lock()
		defer e.reg.mu.Unlock()
		ep := e.reg.leases[lease]
		return ep.GetHealthy(), ep.GetHealthReason(), e.reg.healthWrites
	}
	if h, r, _ := state(); h || r != "no check passed yet" {
		t.Fatalf("registered healthy=%v reason %q", h, r)
	}
	beat := func(healthy bool, reason string) {
		t.Helper()
		if _, err := om.Heartbeat(ctx, &meshv1.HeartbeatRequest{LeaseId: lease, Healthy: healthy, HealthReason: reason}); err != nil {
			t.Fatal(err)
		}
	}
	beat(false, "no check passed yet")
	if _, _, n := state(); n != 0 {
		t.Fatalf("unchanged verdict: %d registry writes, want 0", n)
	}
	beat(true, "")
	beat(true, "")
	if h, r, n := state(); !h || r != "" || n != 1 {
		t.Fatalf("after healthy heartbeats: healthy=%v reason %q writes %d, want healthy, 1 write", h, r, n)
	}
	beat(false, "HTTP 503")
	if h, r, n := state(); h || r != "HTTP 503" || n != 2 {
		t.Fatalf("after failing heartbeat: healthy=%v reason %q writes %d", h, r, n)
	}
}
