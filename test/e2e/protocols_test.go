package e2e

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

const protocolServices = `
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: greeter}
spec:
  ports: [{name: grpc, port: 9090, protocol: grpc}]
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: chat}
spec:
  ports: [{name: http, port: 80, protocol: http}]
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: echo}
spec:
  ports: [{name: tcp, port: 7000, protocol: tcp}]
`

func listen(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// TestGRPCThroughTwoProxies: unary and server-streaming gRPC, with status
// trailers intact, through outbound and inbound proxies.
func TestGRPCThroughTwoProxies(t *testing.T) {
	cp := startControl(t, "")
	cp.apply(t, protocolServices)
	l := listen(t)
	srv := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("shop", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)

	cp.proxy(t, proxyConfig{service: "greeter", app: l.Addr().String()})
	client := cp.proxy(t, proxyConfig{service: "client", upstreams: []string{"greeter"}})

	conn, err := grpc.NewClient(client.upstreams["greeter"], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "shop"})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("unary Check = %v, %v; want SERVING", resp, err)
	}
	// A gRPC error travels in the trailers: it must arrive intact.
	_, err = hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("Check(unknown) error = %v; want NotFound from the server's trailers", err)
	}

	stream, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: "shop"})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil || first.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("stream first message = %v, %v", first, err)
	}
	// The next message exists only after this change: streaming must not buffer.
	hs.SetServingStatus("shop", healthpb.HealthCheckResponse_NOT_SERVING)
	second, err := stream.Recv()
	if err != nil || second.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("stream second message = %v, %v", second, err)
	}
	hs.SetServingStatus("shop", healthpb.HealthCheckResponse_SERVING)
	third, err := stream.Recv()
	if err != nil || third.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("stream third message = %v, %v", third, err)
	}
}

// TestWebSocketThroughTwoProxies: an Upgrade crosses both proxies and the
// connection then carries messages both ways.
func TestWebSocketThroughTwoProxies(t *testing.T) {
	cp := startControl(t, "")
	cp.apply(t, protocolServices)
	app := appServer(t, "chat", func(w http.ResponseWriter, r *http.Request) {
		websocket.Handler(func(ws *websocket.Conn) { io.Copy(ws, ws) }).ServeHTTP(w, r)
	})
	cp.proxy(t, proxyConfig{service: "chat", app: app})
	client := cp.proxy(t, proxyConfig{service: "client", upstreams: []string{"chat"}})

	addr := client.upstreams["chat"]
	ws, err := websocket.Dial("ws://"+addr+"/echo", "", "http://"+addr+"/")
	if err != nil {
		t.Fatalf("websocket dial through proxies: %v", err)
	}
	defer ws.Close()
	ws.SetDeadline(time.Now().Add(10 * time.Second))
	for _, msg := range []string{"hello", "through", "the mesh"} {
		if err := websocket.Message.Send(ws, msg); err != nil {
			t.Fatal(err)
		}
		var got string
		if err := websocket.Message.Receive(ws, &got); err != nil || got != msg {
			t.Fatalf("echo = %q, %v; want %q", got, err, msg)
		}
	}
}

// TestTCPThroughTwoProxies: a port declared tcp is tunnelled opaquely through mTLS.
func TestTCPThroughTwoProxies(t *testing.T) {
	cp := startControl(t, "")
	cp.apply(t, protocolServices)
	l := listen(t)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	cp.proxy(t, proxyConfig{service: "echo", app: l.Addr().String()})
	client := cp.proxy(t, proxyConfig{service: "client", upstreams: []string{"echo"}})

	c, err := net.DialTimeout("tcp", client.upstreams["echo"], 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := []byte("not http at all\x00\x01\x02")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != string(msg) {
		t.Fatalf("tcp echo = %q, %v", got, err)
	}
}
