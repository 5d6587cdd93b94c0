package control

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/identity"
	"trellis.dev/trellis/internal/push"
)

type received struct {
	at   time.Time
	snap *meshv1.Snapshot
}

// startProxySession runs a real proxy-side push session against c over
// gRPC + mTLS: bootstrap token → Certify → Register → Watch. Every snapshot
// it receives (and ACKs) goes to the returned channel.
func startProxySession(t *testing.T, c *Control, service string, subs ...string) <-chan received {
	t.Helper()
	ch, _ := startProxySessionWith(t, c, service, nil, subs...)
	return ch
}

// startProxySessionWith is startProxySession whose Apply is refuse (nil:
// ACK everything; an error: NACK with it). It also returns the issued
// certificate's expiry.
func startProxySessionWith(t *testing.T, c *Control, service string, refuse func(*meshv1.Snapshot) error, subs ...string) (<-chan received, time.Time) {
	t.Helper()
	dir := c.o.DataDir
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(readFile(t, dir, CAFile)))
	_, token, err := c.tokens.Create(context.Background(), TokenSpec{ServiceAccount: service, TTL: time.Hour}, "test")
	if err != nil {
		t.Fatal(err)
	}
	grpcAddr, _ := c.Addrs()

	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	id, err := identity.WorkloadID("trellis.local", "default", service)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := identity.NewCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	var cert atomic.Pointer[tls.Certificate]
	cl, err := push.Dial(push.ClientOptions{
		Addr:    grpcAddr,
		RootCAs: pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if c := cert.Load(); c != nil {
				return c, nil
			}
			return &tls.Certificate{}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	resp, err := cl.Certify(context.Background(), token, csr, "default", service)
	if err != nil {
		t.Fatal(err)
	}
	cert.Store(&tls.Certificate{Certificate: resp.CertChain, PrivateKey: key})

	out := make(chan received, 1024)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- cl.RunSession(ctx, push.SessionOptions{
			Endpoint: &meshv1.Endpoint{
				Id: service + "-1", Service: service, Namespace: "default",
				Address: "127.0.0.1:15006", AdminAddress: "127.0.0.1:15000", Healthy: true,
			},
			Heartbeat:     time.Second,
			Subscriptions: func() []string { return subs },
			Apply: func(s *meshv1.Snapshot) error {
				out <- received{at: time.Now(), snap: s}
				if refuse != nil {
					return refuse(s)
				}
				return nil
			},
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("session: %v", err)
		}
	})
	return out, time.Unix(resp.GetNotAfter(), 0)
}

func weightOf(s *meshv1.Snapshot, svc string) uint32 {
	for _, x := range s.Services {
		if x.Name == svc && len(x.Routes) > 0 && len(x.Routes[0].Backends) > 0 {
			return x.Routes[0].Backends[0].Weight
		}
	}
	return 0
}

func hasService(s *meshv1.Snapshot, name string) bool {
	return slices.ContainsFunc(s.Services, func(x *meshv1.Service) bool { return x.Name == name })
}

// TestApplyPropagation measures, over real HTTPS and gRPC + mTLS, the time
// from an apply to a proxy holding the new snapshot, 100 times. The bar is
// well under a second.
func TestApplyPropagation(t *testing.T) {
	c := startControl(t, t.TempDir())
	cl := newClient(t, c)
	if status, a := cl.apply(false, file{"svc.yaml", serviceYAML}, file{"route.yaml", routeYAML("split", 1)}); status != http.StatusOK {
		t.Fatalf("seed: %d %+v", status, a)
	}
	// A service the frontend does not use, with a live proxy of its own.
	payments := startProxySession(t, c, "payments")
	snaps := startProxySession(t, c, "frontend", "inventory.default")

	wait := func(want uint32) received {
		t.Helper()
		timeout := time.After(5 * time.Second)
		for {
			select {
			case r := <-snaps:
				if weightOf(r.snap, "inventory") == want {
					return r
				}
			case <-timeout:
				t.Fatalf("no snapshot with weight %d within 5s", want)
			}
		}
	}
	first := wait(1)
	if !hasService(first.snap, "inventory-v1") || !hasService(first.snap, "inventory-v2") || hasService(first.snap, "payments") {
		var names []string
		for _, s := range first.snap.Services {
			names = append(names, s.Name)
		}
		t.Fatalf("frontend snapshot holds %v: want inventory and its backends, not payments", names)
	}
	select {
	case r := <-payments:
		if hasService(r.snap, "inventory") {
			t.Fatal("payments' snapshot holds inventory, which it did not subscribe to")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("payments got no snapshot")
	}

	const n = 100
	var fromReturn, fromSend []time.Duration
	for i := range n {
		w := 2 + i%97
		body := applyBody(false, file{"route.yaml", routeYAML("split", w)})
		sent := time.Now()
		status, _ := cl.do("POST", "/v1/apply", body)
		returned := time.Now()
		if status != http.StatusOK {
			t.Fatalf("apply %d: %d", i, status)
		}
		r := wait(uint32(w))
		fromReturn = append(fromReturn, max(0, r.at.Sub(returned)))
		fromSend = append(fromSend, r.at.Sub(sent))
	}
	pct := func(d []time.Duration, p int) time.Duration {
		s := slices.Clone(d)
		slices.Sort(s)
		return s[(len(s)-1)*p/100]
	}
	t.Logf("apply→snapshot over %d applies: from POST return p50 %v p99 %v max %v; from POST send p50 %v p99 %v max %v",
		n, pct(fromReturn, 50), pct(fromReturn, 99), pct(fromReturn, 100), pct(fromSend, 50), pct(fromSend, 99), pct(fromSend, 100))
	if p99 := pct(fromSend, 99); p99 >= time.Second {
		t.Errorf("p99 apply→snapshot %v, want < 1s", p99)
	}

	// The proxy ACKed: proxy-status shows it in sync with the last version.
	deadline := time.Now().Add(5 * time.Second)
	for {
		status, body := cl.do("GET", "/v1/proxies", nil)
		var list []push.ProxyStatus
		if status != http.StatusOK || json.Unmarshal(body, &list) != nil {
			t.Fatalf("proxies: %d %s", status, body)
		}
		i := slices.IndexFunc(list, func(p push.ProxyStatus) bool { return p.NodeID == "frontend-1" })
		if i >= 0 && list[i].State == push.StateSynced && list[i].AckedVersion == list[i].SentVersion {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("frontend-1 not in sync: %s", body)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := os.Stat(filepath.Join(c.o.DataDir, StoreFile)); err != nil {
		t.Fatal(err)
	}
}
