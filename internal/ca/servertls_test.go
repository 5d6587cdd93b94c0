package ca

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"trellis.dev/trellis/internal/testpki"
)

func TestServerTLSConfig(t *testing.T) {
	c := mustCA(t, Options{})
	cpID := workloadID(t, "trellis-system", "control")
	cfg, err := c.ServerTLSConfig(cpID, []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback})
	if err != nil {
		t.Fatal(err)
	}
	addr, results := testpki.Serve(t, cfg, nil)

	// The CLI: trusts the bundle, checks the host name, has no client cert.
	for _, name := range []string{"localhost", "127.0.0.1"} {
		cs, err := testpki.Dial(t, addr, &tls.Config{RootCAs: c.RootPool(), ServerName: name})
		if err != nil {
			t.Fatalf("client with ServerName %s: %v", name, err)
		}
		leaf := cs.PeerCertificates[0]
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != cpID.String() {
			t.Fatalf("server cert URIs %v, want %s", leaf.URIs, cpID)
		}
		if r := <-results; r.Err != nil || len(r.State.VerifiedChains) != 0 {
			t.Fatalf("server: err %v, %d verified chains", r.Err, len(r.State.VerifiedChains))
		}
	}
	// A name not in the certificate fails host name verification.
	if _, err := testpki.Dial(t, addr, &tls.Config{RootCAs: c.RootPool(), ServerName: "evil.example"}); err == nil {
		t.Fatal("certificate accepted for a name it does not carry")
	}
	<-results

	// A proxy with a workload certificate: verified by the server.
	id := workloadID(t, "default", "orders")
	csr, key := csrFor(t, id)
	chain, _, err := c.Sign(csr, id)
	if err != nil {
		t.Fatal(err)
	}
	clientCert := tls.Certificate{Certificate: chain, PrivateKey: key}
	if _, err := testpki.Dial(t, addr, &tls.Config{RootCAs: c.RootPool(), ServerName: "localhost", Certificates: []tls.Certificate{clientCert}}); err != nil {
		t.Fatal(err)
	}
	if r := <-results; r.Err != nil || len(r.State.VerifiedChains) == 0 {
		t.Fatalf("server did not verify the client certificate: err %v, %d verified chains", r.Err, len(r.State.VerifiedChains))
	}

	// A client certificate from another CA is refused, not ignored.
	other := mustCA(t, Options{})
	chain, _, err = other.Sign(csr, id)
	if err != nil {
		t.Fatal(err)
	}
	rogue := tls.Certificate{Certificate: chain, PrivateKey: key}
	_, err = testpki.Dial(t, addr, &tls.Config{RootCAs: c.RootPool(), ServerName: "localhost", Certificates: []tls.Certificate{rogue}})
	if err == nil {
		t.Fatal("client certificate from another CA accepted")
	}
	if r := <-results; r.Err == nil || !strings.Contains(r.Err.Error(), "unknown authority") {
		t.Fatalf("server err = %v, want unknown authority", r.Err)
	}

	if _, err := c.ServerTLSConfig(spiffeIDOf(t, "spiffe://other.org/control"), nil, nil); err == nil {
		t.Fatal("server config for a foreign ID was created")
	}
}

// The control plane's certificate is re-issued at the point of its
// lifetime the jitter draw picks (here the middle of 45-55%), without
// rebuilding the tls.Config.
func TestServerTLSConfigReissue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, err := LoadOrCreate(context.Background(), newMem(), Options{WorkloadTTL: 24 * time.Hour, RenewJitter: func() float64 { return 0.5 }})
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := c.ServerTLSConfig(workloadID(t, "trellis-system", "control"), []string{"localhost"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		get := func() *x509.Certificate {
			t.Helper()
			cert, err := cfg.GetCertificate(&tls.ClientHelloInfo{ServerName: "localhost"})
			if err != nil {
				t.Fatal(err)
			}
			return cert.Leaf
		}
		first := get()
		start := time.Now()
		if !first.NotAfter.Equal(start.Add(24 * time.Hour)) {
			t.Fatalf("NotAfter %s, want now+24h", first.NotAfter)
		}

		time.Sleep(11*time.Hour + 59*time.Minute) // renewal is at 50% of (now-1m .. now+24h) = now+11h59m30s
		if got := get(); got.SerialNumber.Cmp(first.SerialNumber) != 0 {
			t.Fatal("re-issued before half of the lifetime")
		}
		time.Sleep(time.Minute)
		second := get()
		if second.SerialNumber.Cmp(first.SerialNumber) == 0 {
			t.Fatal("not re-issued after half of the lifetime")
		}
		if !second.NotAfter.Equal(time.Now().Add(24 * time.Hour)) {
			t.Fatalf("new NotAfter %s, want now+24h", second.NotAfter)
		}
		if get() != second {
			t.Fatal("re-issued again immediately")
		}
	})
}
