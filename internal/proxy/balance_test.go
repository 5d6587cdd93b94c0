package proxy

import (
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/lb"
)

// replicas starts n proxies of service name; the apps of those in dead
// refuse connections (their proxies stay up: the registry still lists them).
func replicas(t *testing.T, ca *testCA, name string, n int, dead map[int]bool) (*meshv1.Service, []*server) {
	t.Helper()
	svc := &meshv1.Service{Name: name, Namespace: "default"}
	var ss []*server
	for i := range n {
		app := deadAddr(t)
		if !dead[i] {
			app = startApp(t, whoami(name))
		}
		s := startServer(t, ca, name, app, port(80, app, meshv1.Protocol_HTTP))
		svc.Ports = s.svc.Ports
		svc.Endpoints = append(svc.Endpoints, s.svc.Endpoints...)
		ss = append(ss, s)
	}
	return svc, ss
}

// inboundRequests is how many requests a server's proxy counted.
func inboundRequests(t *testing.T, s *server) int {
	var n float64
	for k, v := range scrape(t, s.proxy) {
		if strings.HasPrefix(k, "inbound,") {
			n += v
		}
	}
	return int(n)
}

// TestDeadAppDrawsLittleTraffic: one of three replicas has lost its app, so
// its proxy answers every request 502 itself. The balancer learns that as a
// failure (not a fast success), so the replica draws a small share; and
// since its proxy says its app refused the connection (UF), a bodiless
// request that drew it is retried on another replica and still succeeds.
func TestDeadAppDrawsLittleTraffic(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	svc, ss := replicas(t, ca, "orders", 3, map[int]bool{2: true})
	client := startClient(t, ca, Options{})
	if err := client.Update(snapshot("1", svc)); err != nil {
		t.Fatal(err)
	}
	c := proxyClient(client)
	const n = 60
	for i := range n {
		resp, body := get(t, c, "http://orders/x", nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %d: %d %q; the retry should have found a live replica", i, resp.StatusCode, body)
		}
	}
	dead := inboundRequests(t, ss[2])
	t.Logf("dead replica drew %d of %d requests (live: %d, %d)", dead, n, inboundRequests(t, ss[0]), inboundRequests(t, ss[1]))
	if dead > n/10 {
		t.Fatalf("dead replica drew %d of %d requests; want at most %d", dead, n, n/10)
	}
}

// TestDeadAppPostsNotResent: requests with a body are not re-sent (the peer
// might have consumed it), so those that draw the dead replica fail — and
// the balancer still keeps that to a few.
func TestDeadAppPostsNotResent(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	svc, ss := replicas(t, ca, "orders", 3, map[int]bool{2: true})
	client := startClient(t, ca, Options{})
	if err := client.Update(snapshot("1", svc)); err != nil {
		t.Fatal(err)
	}
	c := proxyClient(client)
	const n = 60
	failed := 0
	for range n {
		resp, err := c.Post("http://orders/pay", "text/plain", strings.NewReader("charge 5"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			failed++
		}
	}
	dead := inboundRequests(t, ss[2])
	if failed != dead {
		t.Errorf("%d POSTs failed but the dead replica saw %d: a POST was re-sent or lost", failed, dead)
	}
	// Each POST reached exactly one replica's proxy: none was sent again.
	// (Counting happens when the response is done: wait for the last.)
	var seen int
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		seen = dead + inboundRequests(t, ss[0]) + inboundRequests(t, ss[1])
		if seen >= n || time.Now().After(deadline) {
			break
		}
	}
	if seen != n {
		t.Errorf("%d POSTs reached %d replica proxies: a request with a body was re-sent", n, seen)
	}
	if dead == 0 || dead > n/10 {
		t.Fatalf("dead replica drew %d of %d POSTs; want 1..%d", dead, n, n/10)
	}
}

// TestBalancerPerService: backend_policy picks the balancer per service;
// unspecified means Options.Balancer. Round-robin over two endpoints
// alternates exactly, which peak-EWMA would not promise.
func TestBalancerPerService(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	svc, ss := replicas(t, ca, "orders", 2, nil)
	svc.BackendPolicy = &meshv1.BackendPolicy{LoadBalancer: meshv1.LoadBalancer_ROUND_ROBIN}
	client := startClient(t, ca, Options{Balancer: lb.PeakEWMA})
	if err := client.Update(snapshot("1", svc)); err != nil {
		t.Fatal(err)
	}
	if got := client.cfg.Load().byKey["orders.default"].picker; got == nil {
		t.Fatal("no picker")
	} else if _, ok := got.(*lb.RoundRobinPicker); !ok {
		t.Fatalf("picker %T, want round-robin from the backend policy", got)
	}
	c := proxyClient(client)
	for range 10 {
		get(t, c, "http://orders/", nil)
	}
	if a, b := inboundRequests(t, ss[0]), inboundRequests(t, ss[1]); a != 5 || b != 5 {
		t.Fatalf("round-robin split %d/%d, want 5/5", a, b)
	}
	svc.BackendPolicy = nil
	if err := client.Update(snapshot("2", svc)); err != nil {
		t.Fatal(err)
	}
	if _, ok := client.cfg.Load().byKey["orders.default"].picker.(*lb.RoundRobinPicker); ok {
		t.Fatal("unspecified backend policy kept round-robin; want Options.Balancer (peak-EWMA)")
	}
}

// TestEndpointStateSurvivesSwap: the same address keeps the same
// *lb.Endpoint across snapshots (its balancing state with it); an address
// that leaves is forgotten.
func TestEndpointStateSurvivesSwap(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	svc, _ := replicas(t, ca, "orders", 2, nil)
	client := startClient(t, ca, Options{})
	if err := client.Update(snapshot("1", svc)); err != nil {
		t.Fatal(err)
	}
	before := client.cfg.Load().byKey["orders.default"].eps
	if err := client.Update(snapshot("2", svc)); err != nil {
		t.Fatal(err)
	}
	after := client.cfg.Load().byKey["orders.default"].eps
	if len(after) != 2 || after[0] != before[0] || after[1] != before[1] {
		t.Fatal("endpoints were replaced by a snapshot that kept their addresses")
	}
	one := renamed(svc, "orders")
	one.Endpoints = svc.Endpoints[1:]
	if err := client.Update(snapshot("3", one)); err != nil {
		t.Fatal(err)
	}
	if err := client.Update(snapshot("4", svc)); err != nil {
		t.Fatal(err)
	}
	again := client.cfg.Load().byKey["orders.default"].eps
	if again[0] == before[0] || again[1] != before[1] {
		t.Fatal("a removed address kept its state, or a kept one lost it")
	}
	client.updateMu.Lock()
	defer client.updateMu.Unlock()
	if len(client.endpoints) != 2 {
		t.Fatalf("proxy keeps %d endpoints, want 2", len(client.endpoints))
	}
}

// TestAppCannotForgeProxyError: an app answering 502 with X-Trellis-Error:
// UF must not make the caller's proxy re-send the request (only a proxy's
// own refusal means the app never saw it): the header is dropped inbound.
func TestAppCannotForgeProxyError(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	var hits atomic.Int32
	svc := &meshv1.Service{Name: "liar", Namespace: "default"}
	for range 2 {
		app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			hits.Add(1)
			w.Header().Set(headerError, "UF")
			w.WriteHeader(http.StatusBadGateway)
		}))
		s := startServer(t, ca, "liar", app, port(80, app, meshv1.Protocol_HTTP))
		svc.Ports = s.svc.Ports
		svc.Endpoints = append(svc.Endpoints, s.svc.Endpoints...)
	}
	client := startClient(t, ca, Options{})
	if err := client.Update(snapshot("1", svc)); err != nil {
		t.Fatal(err)
	}
	resp, _ := get(t, proxyClient(client), "http://liar/", nil)
	if resp.StatusCode != http.StatusBadGateway || resp.Header.Get(headerError) != "" || hits.Load() != 1 {
		t.Fatalf("status %d, %s %q, app hit %d times; want the app's 502 once, without the header",
			resp.StatusCode, headerError, resp.Header.Get(headerError), hits.Load())
	}
}
