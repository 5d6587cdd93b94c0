package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/ca"
	"trellis.dev/trellis/internal/identity"
	"trellis.dev/trellis/internal/store"
)

// TestCertificateRotationUnderLoad rotates both proxies' certificates many
// times while HTTP requests and new TCP tunnels (each a fresh mTLS
// handshake) flow: no request may fail, and new handshakes must present the
// newest certificate without any restart.
func TestCertificateRotationUnderLoad(t *testing.T) {
	st, err := store.NewBolt(filepath.Join(t.TempDir(), "ca.db"), store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	authority, err := ca.LoadOrCreate(context.Background(), st, ca.Options{TrustDomain: "trellis.local", WorkloadTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("trellis.local")
	issue := func(src *identity.Source, name string) *x509.Certificate {
		t.Helper()
		id := spiffeid.RequireFromString(spiffeFor(name))
		key, err := identity.NewKey()
		if err != nil {
			t.Fatal(err)
		}
		csr, err := identity.NewCSR(key, id)
		if err != nil {
			t.Fatal(err)
		}
		chain, _, err := authority.Sign(csr, id)
		if err != nil {
			t.Fatal(err)
		}
		if err := src.Set(chain, key, authority.Bundle()); err != nil {
			t.Fatal(err)
		}
		leaf, _ := x509.ParseCertificate(chain[0])
		return leaf
	}
	clientTLS := func(src *identity.Source) func(string) *tls.Config {
		return func(peer string) *tls.Config {
			return identity.ClientTLS(src, tlsconfig.AuthorizeID(spiffeid.RequireFromString(peer)))
		}
	}

	ordersSrc, frontSrc := identity.NewSource(td), identity.NewSource(td)
	issue(ordersSrc, "orders")
	issue(frontSrc, "frontend")

	app := startApp(t, whoami("orders"))
	echo := startEcho(t)
	orders := startProxy(t, Options{
		Service: "orders", AppAddr: app, InboundAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		ServerTLS: identity.ServerTLS(ordersSrc, tlsconfig.AuthorizeMemberOf(td)),
		ClientTLS: clientTLS(ordersSrc),
	})
	ports := []*meshv1.Port{port(80, app, meshv1.Protocol_HTTP), port(82, echo, meshv1.Protocol_TCP)}
	if err := orders.Update(&meshv1.Snapshot{Version: "1", Inbound: &meshv1.Service{Name: "orders", Namespace: "default", Ports: ports}}); err != nil {
		t.Fatal(err)
	}
	orders.SetReady(true)
	front := startProxy(t, Options{
		Service: "frontend", OutboundAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		Upstreams: map[string]string{"orders.default:82": "127.0.0.1:0"},
		ClientTLS: clientTLS(frontSrc),
	})
	svc := &meshv1.Service{Name: "orders", Namespace: "default", Ports: ports, Endpoints: []*meshv1.Endpoint{{
		Id: "orders-1", Service: "orders", Namespace: "default", Address: orders.InboundAddr(),
		Identity: spiffeFor("orders"), Healthy: true,
	}}}
	if err := front.Update(snapshot("1", svc)); err != nil {
		t.Fatal(err)
	}

	var httpOK, tcpOK, failures atomic.Int64
	var firstErr atomic.Value
	fail := func(format string, args ...any) {
		failures.Add(1)
		firstErr.CompareAndSwap(nil, fmt.Sprintf(format, args...))
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	c := proxyClient(front)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 100000; n++ {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := c.Get("http://orders/rotate")
				if err != nil {
					fail("http: %v", err)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					fail("http: status %d", resp.StatusCode)
					continue
				}
				httpOK.Add(1)
			}
		}()
	}
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := []byte("rotate me\n")
			buf := make([]byte, len(msg))
			for n := 0; n < 100000; n++ {
				select {
				case <-stop:
					return
				default:
				}
				conn, err := net.DialTimeout("tcp", front.UpstreamAddr("orders.default:82"), 5*time.Second)
				if err != nil {
					fail("tcp dial: %v", err)
					continue
				}
				conn.SetDeadline(time.Now().Add(5 * time.Second))
				_, err = conn.Write(msg)
				if err == nil {
					_, err = io.ReadFull(conn, buf)
				}
				conn.Close()
				if err != nil || string(buf) != string(msg) {
					fail("tcp echo: %q %v", buf, err)
					continue
				}
				tcpOK.Add(1)
			}
		}()
	}

	var lastOrders *x509.Certificate
	for i := 0; i < 20; i++ {
		time.Sleep(50 * time.Millisecond)
		lastOrders = issue(ordersSrc, "orders")
		issue(frontSrc, "frontend")
	}
	time.Sleep(100 * time.Millisecond)
	close(stop)
	wg.Wait()

	if n := failures.Load(); n > 0 {
		t.Fatalf("%d requests failed during 20 certificate rotations; first: %v", n, firstErr.Load())
	}
	if httpOK.Load() == 0 || tcpOK.Load() == 0 {
		t.Fatalf("no traffic: %d http, %d tcp", httpOK.Load(), tcpOK.Load())
	}
	t.Logf("20 rotations under load: %d HTTP requests and %d new mTLS tunnels, 0 failed", httpOK.Load(), tcpOK.Load())

	// A new handshake presents the newest certificate: the swap needed no restart.
	cfg := identity.ClientTLS(frontSrc, tlsconfig.AuthorizeID(spiffeid.RequireFromString(spiffeFor("orders"))))
	cfg.NextProtos = []string{"http/1.1"}
	conn, err := tls.Dial("tcp", orders.InboundAddr(), cfg)
	if err != nil {
		t.Fatalf("handshake after rotation: %v", err)
	}
	defer conn.Close()
	got := conn.ConnectionState().PeerCertificates[0]
	if got.SerialNumber.Cmp(lastOrders.SerialNumber) != 0 {
		t.Fatalf("inbound presented serial %s; want the newest %s", got.SerialNumber, lastOrders.SerialNumber)
	}
}
