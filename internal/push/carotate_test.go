package push

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// TestWatchReportsCAFingerprints: the root a proxy's certificate chains to
// and the bundle it trusts reach its status with the first message and,
// when they change (a re-certification), in a status-only message.
func TestWatchReportsCAFingerprints(t *testing.T) {
	ca := newTestCA(t)
	e := startEnv(t, ca, "127.0.0.1:0", nil)
	c := e.dial(t, e.ca.workloadCert(t, spiffe("default", "orders"), time.Time{}))
	p := &proxySim{applied: make(chan string, 1000)}
	var root, bundle atomic.Pointer[[]byte]
	set := func(r, b string) {
		rb, bb := []byte(r), []byte(b)
		root.Store(&rb)
		bundle.Store(&bb)
	}
	set("old-root", "old-bundle")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- c.RunSession(ctx, SessionOptions{Endpoint: endpoint("orders-1", "orders"), Heartbeat: time.Second,
			Subscriptions: p.subscriptions, Apply: p.apply, StatusInterval: time.Hour, // only Resubscribe sends
			Status: func(r *meshv1.WatchRequest) {
				r.CertIssuerFingerprint, r.TrustBundleFingerprint = *root.Load(), *bundle.Load()
			}})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("RunSession: %v", err)
		}
	})
	p.expect(t, "v0|orders.default")
	st := waitState(t, e.srv, "orders-1", StateSynced, "v0|orders.default")
	if st.CertIssuer != hex.EncodeToString([]byte("old-root")) || st.TrustBundle != hex.EncodeToString([]byte("old-bundle")) {
		t.Fatalf("status after the first messages: issuer %q bundle %q", st.CertIssuer, st.TrustBundle)
	}
	acks := e.srv.Counters().Acks
	set("new-root", "new-bundle")
	c.Resubscribe() // what the sidecar does after a renewal
	eventually(t, "the new fingerprints", func() bool {
		st, _ := statusOf(e.srv, "orders-1")
		return st.CertIssuer == hex.EncodeToString([]byte("new-root")) && st.TrustBundle == hex.EncodeToString([]byte("new-bundle"))
	})
	if e.srv.Counters().Acks != acks {
		t.Fatal("the status-only message counted as an ACK")
	}
}

// TestClientVerifiesAgainstCurrentRoots: with Roots set, the control plane
// is verified against what it returns at each handshake (the proxy's
// current bundle), falling back to RootCAs while it returns nil, and its
// address is still checked.
func TestClientVerifiesAgainstCurrentRoots(t *testing.T) {
	ca, other := newTestCA(t), newTestCA(t)
	e := startEnv(t, ca, "127.0.0.1:0", nil)
	var roots atomic.Pointer[x509.CertPool]
	dial := func(addr string, static *x509.CertPool) *Client {
		c, err := Dial(ClientOptions{Addr: addr, RootCAs: static, Roots: roots.Load, Logger: testLogger(t),
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &tls.Certificate{}, nil }})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	certify := func(c *Client) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := c.Certify(ctx, "s3cret", newCSR(t), "default", "orders")
		return err
	}
	// No current bundle yet: RootCAs decides.
	if err := certify(dial(e.addr, ca.pool)); err != nil {
		t.Fatalf("Roots nil, RootCAs right: %v", err)
	}
	if err := certify(dial(e.addr, other.pool)); err == nil {
		t.Fatal("Roots nil, RootCAs wrong: the control plane was trusted")
	}
	// A current bundle replaces RootCAs, both ways.
	roots.Store(ca.pool)
	if err := certify(dial(e.addr, other.pool)); err != nil {
		t.Fatalf("Roots right, RootCAs wrong: %v", err)
	}
	roots.Store(other.pool)
	if err := certify(dial(e.addr, ca.pool)); err == nil {
		t.Fatal("Roots wrong, RootCAs right: the control plane was trusted")
	}
	// The name is checked: the server certificate is for 127.0.0.1 only.
	roots.Store(ca.pool)
	port := e.addr[strings.LastIndex(e.addr, ":"):]
	err := certify(dial("localhost"+port, ca.pool))
	if err == nil || !errors.Is(err, ErrUnavailable) && !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("dialled as localhost, certificate for 127.0.0.1: %v; want a certificate error", err)
	}
}
