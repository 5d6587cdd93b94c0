package store_test

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"trellis.dev/trellis/internal/store"
	"trellis.dev/trellis/internal/store/etcdtest"
	"trellis.dev/trellis/internal/store/storetest"
	"trellis.dev/trellis/internal/testpki"
)

// openEtcd connects to srv under prefix and closes the store at cleanup.
func openEtcd(t testing.TB, o store.EtcdOptions) *store.Etcd {
	t.Helper()
	s, err := store.NewEtcd(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestEtcdConformance runs the store suite, unchanged, on a real etcd: one
// server, each test's store under a prefix of its own (which the suite's
// List("") and Watch("") checks also prove isolates them).
func TestEtcdConformance(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd; real-time lease tests take seconds")
	}
	srv := etcdtest.Start(t, etcdtest.Options{})
	var n atomic.Int64
	storetest.Run(t, func(t *testing.T) store.Store {
		return openEtcd(t, store.EtcdOptions{
			Endpoints: []string{srv.Endpoint},
			Prefix:    fmt.Sprintf("/conformance/%d/", n.Add(1)),
		})
	}, storetest.Options{RealTime: true})
}

func TestEtcdOptions(t *testing.T) {
	cases := []struct {
		name string
		o    store.EtcdOptions
		want string
	}{
		{"no endpoints", store.EtcdOptions{}, "at least one etcd URL"},
		{"cert without key", store.EtcdOptions{Endpoints: []string{"https://127.0.0.1:1"}, CertFile: "c.pem"}, "both the certificate and its key"},
		{"mixed schemes", store.EtcdOptions{Endpoints: []string{"http://127.0.0.1:1", "https://127.0.0.1:2"}}, "mix http:// and https://"},
		{"no scheme", store.EtcdOptions{Endpoints: []string{"127.0.0.1:2379"}}, "want http://host:port"},
		{"tls files on http", store.EtcdOptions{Endpoints: []string{"http://127.0.0.1:1"}, CAFile: "ca.pem"}, "use https:// URLs"},
		{"missing CA file", store.EtcdOptions{Endpoints: []string{"https://127.0.0.1:1"}, CAFile: "/nonexistent/ca.pem"}, "CA file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := store.NewEtcd(tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewEtcd: err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestEtcdUnreachable: with nothing listening, NewEtcd fails within its
// dial timeout and says what to check, instead of hanging.
func TestEtcdUnreachable(t *testing.T) {
	start := time.Now()
	_, err := store.NewEtcd(store.EtcdOptions{Endpoints: []string{"http://127.0.0.1:1"}, DialTimeout: 500 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "did not answer") {
		t.Fatalf("NewEtcd to a closed port: err = %v, want 'did not answer'", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("NewEtcd took %v to fail, want about its 500ms dial timeout", d)
	}
}

// TestEtcdTLS: against an etcd that serves TLS and requires client
// certificates, the store connects with the CA, certificate and key, and
// fails fast without the certificate or with another CA.
func TestEtcdTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	dir := t.TempDir()
	ca := testpki.NewCA(t)
	ipSAN := func(c *x509.Certificate) {
		c.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
		c.DNSNames = []string{"localhost"}
	}
	files := map[string]string{
		"ca":       writePEM(t, dir, "ca.pem", ca.Cert.Raw, nil),
		"other-ca": writePEM(t, dir, "other-ca.pem", testpki.NewCA(t).Cert.Raw, nil),
	}
	srvCert, srvKey := ca.Leaf(t, "", ipSAN)
	files["server"] = writePEM(t, dir, "server.pem", srvCert.Raw, nil)
	files["server-key"] = writePEM(t, dir, "server-key.pem", nil, srvKey)
	cliCert, cliKey := ca.Leaf(t, "")
	files["client"] = writePEM(t, dir, "client.pem", cliCert.Raw, nil)
	files["client-key"] = writePEM(t, dir, "client-key.pem", nil, cliKey)

	srv := etcdtest.Start(t, etcdtest.Options{CertFile: files["server"], KeyFile: files["server-key"], ClientCAFile: files["ca"]})
	if !strings.HasPrefix(srv.Endpoint, "https://") {
		t.Fatalf("endpoint %s: want https", srv.Endpoint)
	}
	s := openEtcd(t, store.EtcdOptions{Endpoints: []string{srv.Endpoint}, CAFile: files["ca"], CertFile: files["client"], KeyFile: files["client-key"]})
	if _, err := s.Txn(t.Context(), store.Put("/tls/k", []byte("v"), store.Absent)); err != nil {
		t.Fatalf("Txn over TLS: %v", err)
	}
	if kv, err := s.Get(t.Context(), "/tls/k"); err != nil || string(kv.Value) != "v" {
		t.Fatalf("Get over TLS: %+v, %v", kv, err)
	}
	bad := []struct {
		name string
		o    store.EtcdOptions
	}{
		{"no client certificate", store.EtcdOptions{CAFile: files["ca"]}},
		{"another CA", store.EtcdOptions{CAFile: files["other-ca"], CertFile: files["client"], KeyFile: files["client-key"]}},
		{"plain http", store.EtcdOptions{Endpoints: []string{strings.Replace(srv.Endpoint, "https", "http", 1)}}},
	}
	for _, b := range bad {
		if b.o.Endpoints == nil {
			b.o.Endpoints = []string{srv.Endpoint}
		}
		b.o.DialTimeout = time.Second
		if s, err := store.NewEtcd(b.o); err == nil {
			s.Close()
			t.Errorf("%s: NewEtcd succeeded, want a refused connection", b.name)
		}
	}
}

// writePEM writes a certificate or a key as PEM and returns its path.
func writePEM(t *testing.T, dir, name string, cert []byte, key *ecdsa.PrivateKey) string {
	t.Helper()
	block := &pem.Block{Type: "CERTIFICATE", Bytes: cert}
	if key != nil {
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		block = &pem.Block{Type: "PRIVATE KEY", Bytes: der}
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestEtcdWatchSurvivesRestart: etcd killed and started again (same data)
// under a live store: writes work again once it is back, and a watch opened
// before the crash goes on from where it was, without a gap or a close.
func TestEtcdWatchSurvivesRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	srv := etcdtest.Start(t, etcdtest.Options{})
	s := openEtcd(t, store.EtcdOptions{Endpoints: []string{srv.Endpoint}, Prefix: "/restart"})
	ch, err := s.Watch(t.Context(), "/w/", 0)
	if err != nil {
		t.Fatal(err)
	}
	recv := func(want int64) {
		t.Helper()
		select {
		case b, ok := <-ch:
			if !ok {
				t.Fatal("watch closed across an etcd restart")
			}
			if b[0].KV.ModRevision != want {
				t.Fatalf("batch at revision %d, want %d", b[0].KV.ModRevision, want)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("no batch for revision %d within 15s", want)
		}
	}
	r1, err := s.Txn(t.Context(), store.Put("/w/a", []byte("1"), store.Absent))
	if err != nil {
		t.Fatal(err)
	}
	recv(r1)
	srv.Kill()
	srv.Restart(t)
	r2, err := s.Txn(t.Context(), store.Put("/w/a", []byte("2"), r1))
	if err != nil {
		t.Fatalf("Txn after etcd came back: %v", err)
	}
	if r2 != r1+1 {
		t.Fatalf("revision after restart = %d, want %d", r2, r1+1)
	}
	recv(r2)
}

// TestEtcdTxnLimits: etcd refuses a Txn of more ops than its --max-txn-ops
// (default 128); the error says which server flag to raise, and is no
// conflict (a retry would not help).
func TestEtcdTxnLimits(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	srv := etcdtest.Start(t, etcdtest.Options{})
	s := openEtcd(t, store.EtcdOptions{Endpoints: []string{srv.Endpoint}})
	ops := make([]store.Op, 200)
	for i := range ops {
		ops[i] = store.Put(fmt.Sprintf("/big/%03d", i), nil, store.Absent)
	}
	_, err := s.Txn(t.Context(), ops...)
	if err == nil || errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), "--max-txn-ops") {
		t.Fatalf("Txn of 200 ops: err = %v, want a refusal naming --max-txn-ops", err)
	}
	// The same on an etcd allowed more goes through, in one revision.
	big := etcdtest.Start(t, etcdtest.Options{Args: []string{"--max-txn-ops", "1024"}})
	s2 := openEtcd(t, store.EtcdOptions{Endpoints: []string{big.Endpoint}})
	rev, err := s2.Txn(t.Context(), ops...)
	if err != nil {
		t.Fatal(err)
	}
	if kvs, _, _ := s2.List(t.Context(), "/big/"); len(kvs) != 200 || kvs[199].ModRevision != rev {
		t.Fatalf("after the big Txn: %d keys", len(kvs))
	}
}
