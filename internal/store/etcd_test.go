package store_test

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"trellis.dev/trellis/internal/store"
	"trellis.dev/trellis/internal/store/etcdtest"
	"trellis.dev/trellis/internal/store/storetest"
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
