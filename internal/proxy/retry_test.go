package proxy

import (
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/lb"
)

// TestConnectFailureRetriedOnAnotherEndpoint: an endpoint that refuses
// connections (its proxy just died; the registry hasn't noticed yet) costs a
// bodiless request nothing — it goes to another endpoint. A request with a
// body is not re-sent: it gets 502.
func TestConnectFailureRetriedOnAnotherEndpoint(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	app := startApp(t, whoami("orders"))
	orders := startServer(t, ca, "orders", app, port(80, app, meshv1.Protocol_HTTP))

	// A dead endpoint: a port nothing listens on any more.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	svc := orders.svc
	svc.Endpoints = append([]*meshv1.Endpoint{{
		Id: "orders-dead", Service: "orders", Namespace: "default", Address: dead,
		Identity: spiffeFor("orders"), Healthy: true,
	}}, svc.Endpoints...)

	// Round-robin makes every other first pick the dead endpoint.
	client := startClient(t, ca, Options{Balancer: lb.RoundRobin})
	if err := client.Update(snapshot("1", svc)); err != nil {
		t.Fatal(err)
	}
	c := proxyClient(client)
	for i := 0; i < 20; i++ {
		resp, body := get(t, c, "http://orders/get", nil)
		if resp.StatusCode != http.StatusOK || body != "orders GET /get" {
			t.Fatalf("GET %d: %d %q; want 200 from the live endpoint", i, resp.StatusCode, body)
		}
	}
	var badGateway int
	for i := 0; i < 4; i++ {
		resp, err := c.Post("http://orders/pay", "text/plain", strings.NewReader("charge 5"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
		case http.StatusBadGateway:
			badGateway++
		default:
			t.Fatalf("POST %d: %d", i, resp.StatusCode)
		}
	}
	if badGateway == 0 {
		t.Fatal("no POST with a body reached the dead endpoint's 502: was a request with a body re-sent?")
	}
}

// recordingPicker passes picks through and remembers what tried held.
type recordingPicker struct {
	lb.Picker
	mu    sync.Mutex
	tried [][]string
}

func (r *recordingPicker) Pick(req *lb.Request, eps, tried []*lb.Endpoint) (lb.Call, bool) {
	var addrs []string
	for _, e := range tried {
		addrs = append(addrs, e.Addr())
	}
	r.mu.Lock()
	r.tried = append(r.tried, addrs)
	r.mu.Unlock()
	return r.Picker.Pick(req, eps, tried)
}

// TestRetryExcludesTriedEndpoint: the retry's pick is told which endpoint
// failed, so the balancer cannot hand it back.
func TestRetryExcludesTriedEndpoint(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	app := startApp(t, whoami("orders"))
	orders := startServer(t, ca, "orders", app, port(80, app, meshv1.Protocol_HTTP))
	dead := deadAddr(t)
	svc := renamed(orders.svc, "orders")
	svc.Endpoints = append([]*meshv1.Endpoint{{Address: dead, Identity: spiffeFor("orders"), Healthy: true}}, orders.svc.Endpoints...)
	client := startClient(t, ca, Options{Balancer: lb.RoundRobin})
	rec := &recordingPicker{Picker: lb.NewRoundRobin()}
	client.pickers[pickerKey{"orders.default", lb.Config{Policy: lb.RoundRobin}}] = pickerEntry{picker: rec}
	if err := client.Update(snapshot("1", svc)); err != nil {
		t.Fatal(err)
	}
	resp, _ := get(t, proxyClient(client), "http://orders/", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.tried) != 2 || len(rec.tried[0]) != 0 || len(rec.tried[1]) != 1 || rec.tried[1][0] != dead {
		t.Fatalf("picks saw tried = %v; want [] then [%s]", rec.tried, dead)
	}
}
