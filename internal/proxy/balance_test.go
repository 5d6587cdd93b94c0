package proxy

import (
	"net"
	"net/http"
	"testing"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// TestDeadAppReplicaDrawsLittleTraffic is the foundations issue's report:
// three replicas, one whose app died, so its proxy answers 502 at once. The
// balancer must count that 5xx as a failure, not as a fast success (it drew
// 17 of 30 requests), and keep its state across a config push.
func TestDeadAppReplicaDrawsLittleTraffic(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadApp := ln.Addr().String()
	ln.Close()
	svc := &meshv1.Service{Name: "orders", Namespace: "default"}
	for _, app := range []string{startApp(t, whoami("orders")), startApp(t, whoami("orders")), deadApp} {
		s := startServer(t, ca, "orders", app, port(80, app, meshv1.Protocol_HTTP))
		svc.Ports = s.svc.Ports // the same port spec for all three
		ep := s.svc.Endpoints[0]
		ep.Id = ep.Address
		svc.Endpoints = append(svc.Endpoints, ep)
	}
	client := startClient(t, ca, Options{}) // the default balancer
	if err := client.Update(snapshot("1", svc)); err != nil {
		t.Fatal(err)
	}
	c := proxyClient(client)
	failed := 0
	for i := range 60 {
		if i == 30 {
			// A push with the same endpoints keeps what the balancer
			// learnt: the dead replica is not tried afresh.
			if err := client.Update(snapshot("2", svc)); err != nil {
				t.Fatal(err)
			}
		}
		resp, _ := get(t, c, "http://orders/get", nil)
		switch resp.StatusCode {
		case http.StatusOK:
		case http.StatusBadGateway, http.StatusServiceUnavailable:
			failed++
		default:
			t.Fatalf("GET %d: %d", i, resp.StatusCode)
		}
	}
	if failed > 1 {
		t.Fatalf("the replica whose app is dead answered %d of 60 requests, want <= 1", failed)
	}
}
