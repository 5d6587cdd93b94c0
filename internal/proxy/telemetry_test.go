package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/telemetry"
)

// metricsApp reads the request body and answers 1000 bytes, telling which
// X-Trellis-Source-Service header it saw.
func metricsApp() http.Handler {
	body := bytes.Repeat([]byte("x"), 1000)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("X-Seen-Source", r.Header.Get(headerSource))
		_, _ = w.Write(body)
	})
}

// TestRequestMetricLabels: one request through a proxy pair is counted
// once on each side, with both sides' service, namespace and identity, the
// route, the code, no gRPC status, no flags, mTLS, and the bytes each way;
// the source service is the calling proxy's, whatever its app sent.
func TestRequestMetricLabels(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	app := startApp(t, metricsApp())
	srv := startServer(t, ca, "orders", app, port(80, app, meshv1.Protocol_HTTP))
	client := startClient(t, ca, Options{Identity: spiffeFor("frontend")})
	svc := srv.svc
	svc.Routes = []*meshv1.Route{{Name: "default/orders/rules[0]", Backends: []*meshv1.Backend{{Service: "orders", Weight: 1}}}}
	if err := client.Update(snapshot("1", svc)); err != nil {
		t.Fatal(err)
	}
	c := proxyClient(client)
	req, _ := http.NewRequest("POST", "http://orders/buy", strings.NewReader("hello"))
	req.Header.Set(headerSource, "evil")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if got := resp.Header.Get("X-Seen-Source"); got != "" {
		t.Errorf("the app saw %s %q; the inbound proxy must strip it", headerSource, got)
	}
	// A streamed body (no Content-Length) is counted as it is read.
	req, _ = http.NewRequest("POST", "http://orders/buy", io.NopCloser(strings.NewReader("0123456789")))
	req.ContentLength = -1
	resp, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	const both = `source_service="frontend",source_namespace="default",source_identity="spiffe://trellis.local/ns/default/sa/frontend",destination_service="orders",destination_namespace="default",destination_identity="spiffe://trellis.local/ns/default/sa/orders",response_code="200",grpc_status="-",response_flags="-",mtls="true"`
	assertMetric(t, client, `trellis_requests_total{reporter="source",`+both+`,route="default/orders/rules[0]"} 2`)
	assertMetric(t, srv.proxy, `trellis_requests_total{reporter="destination",`+both+`,route="-"} 2`)
	for _, p := range []*Proxy{client, srv.proxy} {
		assertMetric(t, p, `trellis_request_bytes_sum{`+both+`} 15`)
		assertMetric(t, p, `trellis_response_bytes_sum{`+both+`} 2000`)
		assertMetric(t, p, `trellis_request_duration_seconds_count{`+both+`} 2`)
		assertMetric(t, p, `trellis_active_requests{reporter="source"} 0`)
		assertMetric(t, p, `trellis_active_requests{reporter="destination"} 0`)
	}
}

// TestRefusedRequestLabels: a request the source side refuses before it
// knows a service, route or endpoint reads unknown / "-" there.
func TestRefusedRequestLabels(t *testing.T) {
	m := newMesh(t, Options{Identity: spiffeFor("frontend")})
	c := proxyClient(m.client)
	resp, _ := get(t, c, "http://nosuch.default/", nil)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want 503", resp.StatusCode)
	}
	assertMetric(t, m.client, `trellis_requests_total{reporter="source",source_service="frontend",destination_service="unknown",destination_namespace="unknown",destination_identity="unknown",route="-",response_code="503",response_flags="NC"} 1`)
}

// TestDisableMetrics: with DisableMetrics the proxy serves as before and
// exports no per-request family.
func TestDisableMetrics(t *testing.T) {
	m := newMesh(t, Options{DisableMetrics: true})
	c := proxyClient(m.client)
	if resp, body := get(t, c, "http://orders/a", nil); resp.StatusCode != 200 || !strings.HasPrefix(body, "orders") {
		t.Fatalf("status %d body %q", resp.StatusCode, body)
	}
	resp, err := http.Get("http://" + m.client.AdminAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, fam := range []string{telemetry.RequestsTotalName, telemetry.RequestDurationName, telemetry.RequestBytesName, telemetry.ActiveRequestsName} {
		if strings.Contains(string(b), fam) {
			t.Errorf("metrics disabled, yet /metrics has %s", fam)
		}
	}
	if !strings.Contains(string(b), telemetry.MirrorRequestsName) {
		t.Errorf("event counters must stay with metrics disabled:\n%s", b)
	}
}

// TestCountAllocs: counting a finished exchange on a warm series allocates
// nothing, on the source and on the destination side.
func TestCountAllocs(t *testing.T) {
	pm, err := telemetry.NewProxyMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	src := pm.Series(telemetry.SeriesLabels{Reporter: telemetry.ReporterSource, Route: "r"})
	sources := pm.Sources(telemetry.Peer{Service: "orders", Namespace: "default"})
	hdr := http.Header{headerSource: {"frontend"}}
	trailer := http.Header{"Grpc-Status": {"0"}}
	resp := &Response{Status: 200, Header: http.Header{}, Trailer: &trailer}
	out := &Exchange{series: src, Header: hdr, Start: time.Now(), ContentLength: 5}
	in := &Exchange{sources: sources, Header: hdr, PeerID: spiffeFor("frontend"), Start: time.Now()}
	run := func() {
		for _, ex := range []*Exchange{out, in} {
			ex.body = countedBody{ex: ex, resp: resp, status: 200}
			_ = ex.body.Close()
		}
	}
	run()
	if n := testing.AllocsPerRun(200, run); n != 0 {
		t.Fatalf("allocs per counted exchange = %v, want 0", n)
	}
}

// BenchmarkCountExchange is what the telemetry filter adds to one request
// on one side of a hop: counting the exchange into its warm series (the
// source side's precomputed one, the destination side's by caller).
func BenchmarkCountExchange(b *testing.B) {
	pm, err := telemetry.NewProxyMetrics(prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	hdr := http.Header{headerSource: {"frontend"}}
	resp := &Response{Status: 200, Header: http.Header{}}
	for _, tc := range []struct {
		name string
		ex   *Exchange
	}{
		{"source", &Exchange{series: pm.Series(telemetry.SeriesLabels{Reporter: telemetry.ReporterSource, Route: "r"}), Header: hdr}},
		{"destination", &Exchange{sources: pm.Sources(telemetry.Peer{Service: "orders", Namespace: "default"}), Header: hdr, PeerID: spiffeFor("frontend")}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			ex := tc.ex
			ex.Start = time.Now()
			b.ReportAllocs()
			for b.Loop() {
				ex.body = countedBody{ex: ex, resp: resp, status: 200}
				_ = ex.body.Close()
			}
		})
	}
}

// TestMetricsPromtool runs promtool's linter on real /metrics scrapes of
// both proxies of a hop after HTTP, refused, gRPC-less and TCP traffic.
func TestMetricsPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (apt-get install prometheus)")
	}
	m := newMesh(t, Options{Identity: spiffeFor("frontend")})
	c := proxyClient(m.client)
	get(t, c, "http://orders/a", nil)
	get(t, c, "http://nosuch.default/", nil)
	conn, err := net.Dial("tcp", m.client.OutboundAddr())
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "CONNECT orders:82 HTTP/1.1\r\nHost: orders:82\r\n\r\n")
	br := bufio.NewReader(conn)
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	echoRoundTrip(t, conn, br)
	conn.Close()
	assertMetric(t, m.orders.proxy, `trellis_tcp_connections_closed_total{reporter="destination"} 1`)
	for _, p := range []*Proxy{m.client, m.orders.proxy} {
		resp, err := http.Get("http://" + p.AdminAddr() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(body), telemetry.RequestsTotalName) {
			t.Fatalf("no %s in the scrape:\n%s", telemetry.RequestsTotalName, body)
		}
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = bytes.NewReader(body)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("promtool check metrics: %v\n%s", err, out)
		}
	}
}

// TestOpenConnections: the gauge follows connections to the outbound and
// inbound listeners, up while a keep-alive connection is open, down when
// it closes.
func TestOpenConnections(t *testing.T) {
	m := newMesh(t, Options{})
	tr := &http.Transport{Proxy: http.ProxyURL(must(url.Parse("http://" + m.client.OutboundAddr())))}
	c := &http.Client{Transport: tr}
	resp, err := c.Get("http://orders/a")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	assertMetric(t, m.client, `trellis_proxy_open_connections{listener="outbound"} 1`)
	assertMetric(t, m.orders.proxy, `trellis_proxy_open_connections{listener="inbound"} 1`)
	tr.CloseIdleConnections()
	assertMetric(t, m.client, `trellis_proxy_open_connections{listener="outbound"} 0`)
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestSpliceCountedDirections: a tunnel's bytes are counted by direction,
// received from the source and sent back to it (Istio's reading), and the
// tunnel is no longer open once both directions end.
func TestSpliceCountedDirections(t *testing.T) {
	reg := prometheus.NewRegistry()
	pm, err := telemetry.NewProxyMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	ts := pm.TCP(telemetry.SeriesLabels{Reporter: telemetry.ReporterSource, Destination: telemetry.Peer{Service: "db", Namespace: "default"}})
	srcApp, srcProxy := net.Pipe()
	dstProxy, dstApp := net.Pipe()
	done := make(chan struct{})
	go func() { spliceCounted(ts, srcProxy, srcProxy, dstProxy, dstProxy); close(done) }()
	go func() {
		_, _ = dstApp.Write([]byte("1234567")) // the destination answers 7 bytes
		_, _ = io.Copy(io.Discard, dstApp)
		dstApp.Close()
	}()
	got := make([]byte, 7)
	if _, err := io.ReadFull(srcApp, got); err != nil {
		t.Fatal(err)
	}
	if _, err := srcApp.Write([]byte("abc")); err != nil { // the source sends 3
		t.Fatal(err)
	}
	srcApp.Close()
	<-done
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{telemetry.TCPSentName: 7, telemetry.TCPReceivedName: 3, telemetry.TCPOpenedName: 1, telemetry.TCPClosedName: 1, telemetry.TCPOpenName: 0}
	for _, mf := range mfs {
		w, ok := want[mf.GetName()]
		if !ok {
			continue
		}
		m := mf.GetMetric()[0]
		v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
		if v != w {
			t.Errorf("%s = %v, want %v", mf.GetName(), v, w)
		}
		delete(want, mf.GetName())
	}
	if len(want) > 0 {
		t.Errorf("families missing: %v", want)
	}
}
