package proxy

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/testpki"
)

// testCA is a throwaway CA issuing SPIFFE leaf certificates in td.
type testCA struct {
	*testpki.CA
	td spiffeid.TrustDomain
}

func newTestCA(t testing.TB, td string) *testCA {
	t.Helper()
	return &testCA{CA: testpki.NewCA(t), td: spiffeid.RequireTrustDomainFromString(td)}
}

func (ca *testCA) svid(t testing.TB, id string) *x509svid.SVID {
	t.Helper()
	return ca.SVID(t, id)
}

func (ca *testCA) serverTLS(s *x509svid.SVID) *tls.Config {
	return tlsconfig.MTLSServerConfig(s, ca.Bundle(ca.td), tlsconfig.AuthorizeMemberOf(ca.td))
}

func (ca *testCA) clientTLS(s *x509svid.SVID) func(string) *tls.Config {
	return func(peer string) *tls.Config {
		id, err := spiffeid.FromString(peer)
		if err != nil {
			return nil
		}
		return tlsconfig.MTLSClientConfig(s, ca.Bundle(ca.td), tlsconfig.AuthorizeID(id))
	}
}

func spiffeFor(name string) string { return "spiffe://trellis.local/ns/default/sa/" + name }

// startProxy builds and starts a proxy on loopback :0 listeners, shut down
// at the end of the test.
func startProxy(t testing.TB, o Options) *Proxy {
	t.Helper()
	p, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	p.subscribeWait = 300 * time.Millisecond
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = p.Shutdown(ctx)
	})
	return p
}

// server is one mesh workload: an app behind its own proxy.
type server struct {
	name  string
	proxy *Proxy
	svc   *meshv1.Service // the service as peers see it, endpoint included
}

// port declares a service port; target is the app's port on loopback.
func port(n uint32, target string, proto meshv1.Protocol) *meshv1.Port {
	_, ps, _ := net.SplitHostPort(target)
	tp, _ := strconv.Atoi(ps)
	return &meshv1.Port{Name: "p" + strconv.Itoa(int(n)), Port: n, TargetPort: uint32(tp), Protocol: proto}
}

// startServer runs a proxy fronting appAddr for service name with ports.
func startServer(t testing.TB, ca *testCA, name, appAddr string, ports ...*meshv1.Port) *server {
	t.Helper()
	return startServerOpts(t, ca, name, appAddr, Options{}, ports...)
}

// startServerOpts is startServer with more options (o's listeners and
// identity are set here).
func startServerOpts(t testing.TB, ca *testCA, name, appAddr string, o Options, ports ...*meshv1.Port) *server {
	t.Helper()
	s := ca.svid(t, spiffeFor(name))
	o.Service, o.Identity, o.AppAddr = name, spiffeFor(name), appAddr
	o.InboundAddr, o.AdminAddr = "127.0.0.1:0", "127.0.0.1:0"
	o.ServerTLS, o.ClientTLS = ca.serverTLS(s), ca.clientTLS(s)
	p := startProxy(t, o)
	svc := &meshv1.Service{Name: name, Namespace: "default", Ports: ports}
	if err := p.Update(&meshv1.Snapshot{Version: "1", Inbound: svc}); err != nil {
		t.Fatal(err)
	}
	p.SetReady(true)
	peerView := &meshv1.Service{Name: name, Namespace: "default", Ports: ports, Endpoints: []*meshv1.Endpoint{{
		Id: name + "-1", Service: name, Namespace: "default", Address: p.InboundAddr(),
		Identity: spiffeFor(name), Healthy: true,
	}}}
	return &server{name: name, proxy: p, svc: peerView}
}

// startClient runs a client-only proxy (outbound + admin) as "frontend".
func startClient(t testing.TB, ca *testCA, o Options) *Proxy {
	t.Helper()
	s := ca.svid(t, spiffeFor("frontend"))
	o.Service = "frontend"
	o.OutboundAddr = "127.0.0.1:0"
	o.AdminAddr = "127.0.0.1:0"
	if o.ClientTLS == nil {
		o.ClientTLS = ca.clientTLS(s)
	}
	return startProxy(t, o)
}

func snapshot(version string, svcs ...*meshv1.Service) *meshv1.Snapshot {
	return &meshv1.Snapshot{
		Version:     version,
		Domain:      "trellis.local",
		TrustDomain: "trellis.local",
		TrustBundle: [][]byte{[]byte("not-really-der")},
		Inbound:     &meshv1.Service{Name: "frontend", Namespace: "default"},
		Services:    svcs,
	}
}

// startApp serves h on loopback HTTP/1.1 and h2c.
func startApp(t testing.TB, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, Protocols: &protos}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// startEcho runs a TCP echo server.
func startEcho(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

// proxyClient sends requests to the outbound listener as an HTTP proxy.
func proxyClient(p *Proxy) *http.Client {
	u := &url.URL{Scheme: "http", Host: p.OutboundAddr()}
	return &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(u), MaxIdleConnsPerHost: 64}, Timeout: 10 * time.Second}
}

func get(t testing.TB, c *http.Client, rawURL string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest("GET", rawURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}
