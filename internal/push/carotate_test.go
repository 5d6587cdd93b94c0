package push

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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

// countRefusals counts Refused calls by rpc/reason.
type countRefusals struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *countRefusals) Refused(rpc, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n[rpc+"/"+reason]++
}

// TestRefusalLogRateLimited: 100 Certify calls with no credentials are all
// refused and counted, but logged only up to the limiter's burst.
func TestRefusalLogRateLimited(t *testing.T) {
	ca := newTestCA(t)
	var logs bytes.Buffer
	var mu sync.Mutex
	refusals := &countRefusals{n: map[string]int{}}
	e := startEnv(t, ca, "127.0.0.1:0", func(o *ServerOptions) {
		o.Refusals = refusals
		o.Logger = slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))
	})
	mesh, _ := e.dial(t, &tls.Certificate{}).current()
	for i := range 100 {
		_, err := mesh.Certify(context.Background(), &meshv1.CertifyRequest{Csr: newCSR(t), Namespace: "default", ServiceAccount: "orders"})
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("call %d: %v, want UNAUTHENTICATED", i, err)
		}
	}
	refusals.mu.Lock()
	counted := refusals.n["certify/"+ReasonNoCredentials]
	refusals.mu.Unlock()
	mu.Lock()
	lines := strings.Count(logs.String(), "certify refused: no join token")
	mu.Unlock()
	if counted != 100 {
		t.Fatalf("counted %d refusals, want every one of 100", counted)
	}
	if lines < 1 || lines > 20 {
		t.Fatalf("%d log lines for 100 refusals, want between 1 and the burst (10, plus a few a second)", lines)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// TestWatchFirstMessageFingerprints: a reconnecting proxy whose config is
// current sends only its first message; the fingerprints in it are its
// status (a rotation would otherwise wait on it forever).
func TestWatchFirstMessageFingerprints(t *testing.T) {
	ca := newTestCA(t)
	e := startEnv(t, ca, "127.0.0.1:0", nil)
	om := rawWatch(t, e, ca.workloadCert(t, spiffe("default", "orders"), time.Time{}))
	if _, err := om.Register(context.Background(), &meshv1.RegisterRequest{Endpoint: endpoint("orders-1", "orders")}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := om.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&meshv1.WatchRequest{NodeId: "orders-1", CertIssuerFingerprint: []byte("root"), TrustBundleFingerprint: []byte("bundle")}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the first message's fingerprints", func() bool {
		st, _ := statusOf(e.srv, "orders-1")
		return st.CertIssuer == hex.EncodeToString([]byte("root")) && st.TrustBundle == hex.EncodeToString([]byte("bundle"))
	})
}
