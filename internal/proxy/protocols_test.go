package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// trailerService is a one-method gRPC service, registered by hand, whose
// reply carries a trailer after its message.
var trailerService = grpc.ServiceDesc{
	ServiceName: "test.Trailers",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Check",
		Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			var req healthpb.HealthCheckRequest
			if err := dec(&req); err != nil {
				return nil, err
			}
			_ = grpc.SetTrailer(ctx, metadata.Pairs("x-trailer", "kept-"+req.GetService()))
			return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
		},
	}},
}

func TestGRPCUnaryStreamingTrailers(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	gs.RegisterService(&trailerService, struct{}{})
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)
	app := ln.Addr().String()
	srv := startServer(t, ca, "greeter", app, port(9090, app, meshv1.Protocol_GRPC))
	client := startClient(t, ca, Options{})
	if err := client.Update(snapshot("1", srv.svc)); err != nil {
		t.Fatal(err)
	}
	cc := greeterConn(t, client)
	hc := healthpb.NewHealthClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("unary Check: %v %v", resp, err)
	}
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("status code lost across the mesh: %v", err)
	}
	var tr metadata.MD
	out := new(healthpb.HealthCheckResponse)
	if err := cc.Invoke(ctx, "/test.Trailers/Check", &healthpb.HealthCheckRequest{Service: "a"}, out, grpc.Trailer(&tr)); err != nil {
		t.Fatal(err)
	}
	if got := tr.Get("x-trailer"); len(got) != 1 || got[0] != "kept-a" {
		t.Fatalf("trailer = %v, want kept-a", got)
	}

	// Server streaming: each update arrives while the stream stays open.
	hs.SetServingStatus("svc", healthpb.HealthCheckResponse_SERVING)
	w, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: "svc"})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []healthpb.HealthCheckResponse_ServingStatus{
		healthpb.HealthCheckResponse_SERVING, healthpb.HealthCheckResponse_NOT_SERVING, healthpb.HealthCheckResponse_SERVING,
	} {
		msg, err := w.Recv()
		if err != nil || msg.GetStatus() != want {
			t.Fatalf("Watch: got %v %v, want %v", msg, err, want)
		}
		if want == healthpb.HealthCheckResponse_SERVING {
			hs.SetServingStatus("svc", healthpb.HealthCheckResponse_NOT_SERVING)
		} else {
			hs.SetServingStatus("svc", healthpb.HealthCheckResponse_SERVING)
		}
	}
	assertMetric(t, client, `trellis_requests_total{reporter="source",destination_service="greeter",destination_namespace="default",response_code="200",response_flags="-"} 3`)
	// grpc_status from the trailers, or the header of a trailers-only
	// answer (NotFound), on both sides of the hop.
	for _, p := range []*Proxy{client, srv.proxy} {
		assertMetric(t, p, `trellis_requests_total{destination_service="greeter",grpc_status="0"} 2`)
		assertMetric(t, p, `trellis_requests_total{destination_service="greeter",grpc_status="5"} 1`)
	}
}

func TestWebSocketEcho(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	app := startApp(t, websocket.Handler(func(ws *websocket.Conn) {
		for {
			var msg string
			if websocket.Message.Receive(ws, &msg) != nil || websocket.Message.Send(ws, msg) != nil {
				return
			}
		}
	}))
	srv := startServer(t, ca, "chat", app, port(80, app, meshv1.Protocol_HTTP))
	for _, hopH2 := range []bool{false, true} {
		client := startClient(t, ca, Options{})
		client.hopH2 = hopH2 // upgrades take the HTTP/1.1 path either way
		if err := client.Update(snapshot("1", srv.svc)); err != nil {
			t.Fatal(err)
		}
		cfg, err := websocket.NewConfig("ws://chat/echo", "http://chat/")
		if err != nil {
			t.Fatal(err)
		}
		conn, err := net.Dial("tcp", client.OutboundAddr())
		if err != nil {
			t.Fatal(err)
		}
		ws, err := websocket.NewClient(cfg, conn)
		if err != nil {
			t.Fatalf("websocket handshake through the mesh: %v", err)
		}
		for _, msg := range []string{"one", "two", strings.Repeat("x", 70000)} {
			if err := websocket.Message.Send(ws, msg); err != nil {
				t.Fatal(err)
			}
			var got string
			if err := websocket.Message.Receive(ws, &got); err != nil || got != msg {
				t.Fatalf("echo: %d bytes, %v", len(got), err)
			}
		}
		ws.Close()
	}
}

func TestAdminEndpoints(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	client := startClient(t, ca, Options{})
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + client.AdminAddr() + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/live"); code != 200 {
		t.Fatalf("/live = %d", code)
	}
	client.SetReady(true)
	if code, body := get("/ready"); code != 503 || client.Ready() {
		t.Fatalf("/ready without a snapshot = %d %q", code, body)
	}
	if code, _ := get("/config"); code != 503 {
		t.Fatalf("/config without a snapshot = %d", code)
	}
	app := startApp(t, whoami("orders"))
	srv := startServer(t, ca, "orders", app, port(80, app, meshv1.Protocol_HTTP))
	snap := snapshot("v7", srv.svc)
	snap.Revision = 42
	if err := client.Update(snap); err != nil {
		t.Fatal(err)
	}
	if code, _ := get("/ready"); code != 200 || !client.Ready() {
		t.Fatalf("/ready with snapshot = %d", code)
	}
	client.SetReady(false)
	if code, _ := get("/ready"); code != 503 {
		t.Fatalf("/ready after SetReady(false) = %d", code)
	}
	code, body := get("/config")
	var cfg map[string]any
	if code != 200 || json.Unmarshal([]byte(body), &cfg) != nil {
		t.Fatalf("/config = %d %q", code, body)
	}
	if cfg["version"] != "v7" || cfg["revision"] != "42" || cfg["trustBundle"] != nil || !strings.Contains(body, srv.proxy.InboundAddr()) {
		t.Fatalf("/config content: %s", body)
	}
	if code, _ := get("/debug/pprof/"); code != 404 {
		t.Fatalf("pprof without EnablePprof = %d, want 404", code)
	}
	if code, _ := get("/debug/pprof/cmdline"); code != 404 {
		t.Fatalf("pprof cmdline without EnablePprof = %d, want 404", code)
	}
	withPprof := startClient(t, ca, Options{EnablePprof: true})
	if resp, err := http.Get("http://" + withPprof.AdminAddr() + "/debug/pprof/"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("pprof with EnablePprof: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	resp, _ := get0(t, proxyClient(client), "http://orders/m")
	if resp != 200 {
		t.Fatalf("request = %d", resp)
	}
	assertMetric(t, client, `trellis_requests_total{reporter="source",destination_service="orders",destination_namespace="default",response_code="200",response_flags="-"} 1`)
	assertMetric(t, srv.proxy, `trellis_requests_total{reporter="destination",destination_service="orders",destination_namespace="default",response_code="200",response_flags="-"} 1`)
	assertMetric(t, client, `trellis_request_duration_seconds_bucket{reporter="source",destination_service="orders",destination_namespace="default",response_code="200",response_flags="-",le="10"} 1`)
}

func get0(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, body := get(t, c, url, nil)
	return resp.StatusCode, body
}

// assertMetric scrapes p's /metrics and looks for one exposition line.
// assertMetric checks p's /metrics has line's value for line's family
// summed over the series that carry every label line names (the others,
// such as identities and routes, are left free).
func assertMetric(t *testing.T, p *Proxy, line string) {
	t.Helper()
	name, rest, labelled := strings.Cut(line, "{")
	labels, want, _ := strings.Cut(rest, "} ")
	if !labelled { // a metric without labels: "name value"
		name, want, _ = strings.Cut(line, " ")
	}
	var got float64
	var body string
	for range 100 { // the exchange is counted as its body closes, maybe just after the client read it
		resp, err := http.Get("http://" + p.AdminAddr() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body, got = string(b), 0
	lines:
		for l := range strings.SplitSeq(body, "\n") {
			if v, ok := strings.CutPrefix(l, name+" "); ok && !labelled {
				got, _ = strconv.ParseFloat(v, 64)
				break
			}
			ls, ok := strings.CutPrefix(l, name+"{")
			if !ok || !labelled {
				continue
			}
			have, val, _ := strings.Cut(ls, "} ")
			for kv := range strings.SplitSeq(labels, ",") {
				if !slices.Contains(strings.Split(have, ","), kv) {
					continue lines
				}
			}
			f, _ := strconv.ParseFloat(val, 64)
			got += f
		}
		if strconv.FormatFloat(got, 'g', -1, 64) == want {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s = %v, want %s; have:\n%s", name+"{"+labels+"}", got, want, grepLines(body, name))
}

func grepLines(s, sub string) string {
	var out []string
	for l := range strings.SplitSeq(s, "\n") {
		if strings.Contains(l, sub) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestConnectOverH2C: an HTTP/2 CONNECT (the stream is the tunnel) through
// the outbound port, counted once as a request and once as a TCP tunnel.
func TestConnectOverH2C(t *testing.T) {
	m := newMesh(t, Options{})
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &protos, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", m.client.OutboundAddr())
	}}
	defer tr.CloseIdleConnections()
	pr, pw := io.Pipe()
	req, err := http.NewRequest("CONNECT", "http://orders:82", pr)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
		t.Fatalf("CONNECT: %d %s", resp.StatusCode, resp.Proto)
	}
	echoRoundTrip(t, pw, resp.Body)
	pw.Close()
	resp.Body.Close()
	assertMetric(t, m.orders.proxy, `trellis_tcp_connections_opened_total{reporter="destination",destination_service="orders",destination_namespace="default"} 1`)
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if scrape(t, m.client)["outbound,orders.default,200,-"] == 1 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	assertMetric(t, m.client, `trellis_tcp_connections_opened_total{reporter="source",destination_service="orders",destination_namespace="default"} 1`)
	assertMetric(t, m.client, `trellis_requests_total{reporter="source",destination_service="orders",destination_namespace="default",response_code="200",response_flags="-"} 1`)
}

// TestServerSentEventsFlushPerChunk: each event reaches the client before
// the app writes the next one, through both proxies (no buffering).
func TestServerSentEventsFlushPerChunk(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	next := make(chan struct{})
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 3 {
			fmt.Fprintf(w, "data: %d\n\n", i)
			w.(http.Flusher).Flush()
			select {
			case <-next:
			case <-r.Context().Done():
				return
			case <-time.After(5 * time.Second):
				return
			}
		}
	}))
	srv := startServer(t, ca, "events", app, port(80, app, meshv1.Protocol_HTTP))
	client := startClient(t, ca, Options{})
	if err := client.Update(snapshot("1", srv.svc)); err != nil {
		t.Fatal(err)
	}
	resp, err := proxyClient(client).Get("http://events/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	for i := range 3 {
		line, err := br.ReadString('\n')
		if err != nil || line != fmt.Sprintf("data: %d\n", i) {
			t.Fatalf("event %d: %q %v", i, line, err)
		}
		if _, err := br.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		select {
		case next <- struct{}{}:
		case <-time.After(5 * time.Second):
			t.Fatalf("event %d arrived only after the app gave up: it was buffered", i)
		}
	}
}

// TestLargeBodies: 8 MiB up and the same back, through both proxies, intact.
func TestLargeBodies(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(w, r.Body)
	}))
	srv := startServer(t, ca, "echo", app, port(80, app, meshv1.Protocol_HTTP))
	client := startClient(t, ca, Options{})
	if err := client.Update(snapshot("1", srv.svc)); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, 8<<20)
	for i := range body {
		body[i] = byte(i * 7 / 3)
	}
	resp, err := proxyClient(client).Post("http://echo/", "application/octet-stream", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || !bytes.Equal(got, body) {
		t.Fatalf("status %d, %d of %d bytes back, equal %v, %v", resp.StatusCode, len(got), len(body), bytes.Equal(got, body), err)
	}
}

// greeterConn is a gRPC connection to greeter:9090 through client's
// outbound port (plaintext, as an app calls its proxy).
func greeterConn(t *testing.T, client *Proxy) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+client.OutboundAddr(),
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority("greeter:9090"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}
