package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/tracing"
	"trellis.dev/trellis/internal/tracing/otlptest"
)

// startServerWith is startServer with the proxy's options (tracing, logs).
func startServerWith(t testing.TB, ca *testCA, name, appAddr string, o Options, ports ...*meshv1.Port) *server {
	t.Helper()
	s := ca.svid(t, spiffeFor(name))
	o.Service, o.AppAddr, o.InboundAddr, o.AdminAddr = name, appAddr, "127.0.0.1:0", "127.0.0.1:0"
	o.ServerTLS, o.ClientTLS, o.Identity = ca.serverTLS(s), ca.clientTLS(s), spiffeFor(name)
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

// traceApp answers with the trace headers it was sent.
var traceApp = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	for _, k := range []string{"Traceparent", "Tracestate", "X-B3-Traceid", "X-B3-Spanid", "X-B3-Parentspanid", "B3"} {
		w.Header().Set("X-Seen-"+k, r.Header.Get(k))
	}
})

// tracedMesh: a traced client proxy → a traced orders proxy → whoami.
func tracedMesh(t *testing.T, rcv *otlptest.Receiver, protocol string, pct float64) (*Proxy, *Proxy) {
	t.Helper()
	ep := "http://" + rcv.GRPCAddr
	if protocol == tracing.ProtocolHTTP {
		ep = "http://" + rcv.HTTPAddr
	}
	cfg := func() *tracing.Config {
		return &tracing.Config{Endpoint: ep, Protocol: protocol, SamplingPercent: pct, BatchTimeout: 50 * time.Millisecond}
	}
	ca := newTestCA(t, "trellis.local")
	app := startApp(t, traceApp)
	orders := startServerWith(t, ca, "orders", app, Options{Tracing: cfg()}, port(80, app, meshv1.Protocol_HTTP))
	client := startClient(t, ca, Options{Tracing: cfg(), Identity: spiffeFor("frontend")})
	if err := client.Update(snapshot("1", orders.svc)); err != nil {
		t.Fatal(err)
	}
	return client, orders.proxy
}

func spanOfKind(t *testing.T, spans []otlptest.Span, k tracepb.Span_SpanKind) otlptest.Span {
	t.Helper()
	for _, s := range spans {
		if s.Kind == k {
			return s
		}
	}
	t.Fatalf("no %v span in %+v", k, spans)
	return otlptest.Span{}
}

// traceparent's parent-id field.
func parentOf(tp string) string {
	parts := strings.Split(tp, "-")
	if len(parts) != 4 {
		return ""
	}
	return parts[2]
}

// TestTracingSpansAcrossHop: a request with a W3C parent gets a client span
// (child of that parent) on the calling proxy and a server span (child of
// the client span) on the called one; the app sees the server span as its
// parent; both carry the request's labels. Over gRPC and HTTP OTLP.
func TestTracingSpansAcrossHop(t *testing.T) {
	for _, proto := range []string{tracing.ProtocolGRPC, tracing.ProtocolHTTP} {
		t.Run(proto, func(t *testing.T) {
			rcv := otlptest.Start(t)
			client, _ := tracedMesh(t, rcv, proto, 0) // a sampled parent wins over 0%
			const traceID, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
			resp, _ := get(t, proxyClient(client), "http://orders/a", map[string]string{
				"Traceparent": "00-" + traceID + "-" + parent + "-01",
				"Tracestate":  "vendor=x",
			})
			if ts := resp.Header.Get("X-Seen-Tracestate"); ts != "vendor=x" {
				t.Errorf("app saw tracestate %q, want the caller's vendor=x", ts)
			}
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			spans := rcv.WaitFor(2, 10*time.Second)
			if len(spans) != 2 {
				t.Fatalf("got %d spans, want 2: %+v", len(spans), spans)
			}
			cs := spanOfKind(t, spans, tracepb.Span_SPAN_KIND_CLIENT)
			ss := spanOfKind(t, spans, tracepb.Span_SPAN_KIND_SERVER)
			if cs.TraceID != traceID || ss.TraceID != traceID {
				t.Errorf("trace ids %s, %s; want %s", cs.TraceID, ss.TraceID, traceID)
			}
			if cs.ParentID != parent {
				t.Errorf("client span parent %s, want the caller's %s", cs.ParentID, parent)
			}
			if ss.ParentID != cs.SpanID {
				t.Errorf("server span parent %s, want the client span %s", ss.ParentID, cs.SpanID)
			}
			seen := resp.Header.Get("X-Seen-Traceparent")
			if !strings.Contains(seen, traceID) || parentOf(seen) != ss.SpanID {
				t.Errorf("app saw traceparent %q, want trace %s parent %s (the server span)", seen, traceID, ss.SpanID)
			}
			for _, s := range []otlptest.Span{cs, ss} {
				for k, want := range map[string]string{
					"trellis.destination.service": "orders.default",
					"http.response.status_code":   "200",
					"trellis.response_flags":      "-",
					"http.request.method":         "GET",
					"url.path":                    "/a",
				} {
					if got := s.Attrs[k]; got != want {
						t.Errorf("%v span %s = %q, want %q", s.Kind, k, got, want)
					}
				}
			}
			if cs.Attrs["trellis.source.service"] != "frontend.default" || cs.Resource["service.name"] != "frontend" {
				t.Errorf("client span source %q resource %v", cs.Attrs["trellis.source.service"], cs.Resource)
			}
			if ss.Attrs["trellis.source.identity"] != spiffeFor("frontend") || ss.Resource["service.name"] != "orders" {
				t.Errorf("server span source identity %q resource %v", ss.Attrs["trellis.source.identity"], ss.Resource)
			}
			if cs.Name != "GET orders.default" {
				t.Errorf("client span name %q", cs.Name)
			}
		})
	}
}

// TestTracingB3InW3COut: a B3 multi-header parent is continued, and the
// app downstream gets both a traceparent and B3 headers naming the server
// span (with no stale parent span id).
func TestTracingB3InW3COut(t *testing.T) {
	rcv := otlptest.Start(t)
	client, _ := tracedMesh(t, rcv, tracing.ProtocolGRPC, 100)
	const traceID, parent = "463ac35c9f6413ad48485a3953bb6124", "a2fb4a1d1a96d312"
	resp, _ := get(t, proxyClient(client), "http://orders/b3", map[string]string{
		"X-B3-Traceid":      traceID,
		"X-B3-Spanid":       parent,
		"X-B3-Parentspanid": "0020000000000001",
		"X-B3-Sampled":      "1",
	})
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	spans := rcv.WaitFor(2, 10*time.Second)
	cs := spanOfKind(t, spans, tracepb.Span_SPAN_KIND_CLIENT)
	ss := spanOfKind(t, spans, tracepb.Span_SPAN_KIND_SERVER)
	if cs.TraceID != traceID || cs.ParentID != parent || ss.ParentID != cs.SpanID {
		t.Errorf("client %s/%s parent %s, server parent %s; want trace %s parent %s", cs.TraceID, cs.SpanID, cs.ParentID, ss.ParentID, traceID, parent)
	}
	if tp := resp.Header.Get("X-Seen-Traceparent"); tp != "00-"+traceID+"-"+ss.SpanID+"-01" {
		t.Errorf("app saw traceparent %q, want 00-%s-%s-01", tp, traceID, ss.SpanID)
	}
	if h := resp.Header; h.Get("X-Seen-X-B3-Traceid") != traceID || h.Get("X-Seen-X-B3-Spanid") != ss.SpanID || h.Get("X-Seen-X-B3-Parentspanid") != "" {
		t.Errorf("app saw B3 %q %q parent %q; want %s %s and no parent", h.Get("X-Seen-X-B3-Traceid"), h.Get("X-Seen-X-B3-Spanid"), h.Get("X-Seen-X-B3-Parentspanid"), traceID, ss.SpanID)
	}
}

// TestTracingB3Headers checks Inject rewrites B3 in the encoding it came
// in, single or multi, with no stale parent.
func TestTracingB3Headers(t *testing.T) {
	rcv := otlptest.Start(t)
	tr, err := tracing.New(context.Background(), tracing.Config{Endpoint: "http://" + rcv.GRPCAddr, SamplingPercent: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Shutdown(context.Background())
	const traceID, parent = "463ac35c9f6413ad48485a3953bb6124", "a2fb4a1d1a96d312"
	for _, tc := range []struct {
		name string
		in   http.Header
		mode tracing.B3
	}{
		{"single", http.Header{"B3": {traceID + "-" + parent + "-1"}}, tracing.B3Single},
		{"multi", http.Header{"X-B3-Traceid": {traceID}, "X-B3-Spanid": {parent}, "X-B3-Parentspanid": {"0020000000000001"}, "X-B3-Sampled": {"1"}}, tracing.B3Multi},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.in.Clone()
			ctx, mode := tr.Extract(context.Background(), h)
			if mode != tc.mode {
				t.Fatalf("mode %v, want %v", mode, tc.mode)
			}
			ctx, span := tr.Start(ctx, "x", 0)
			tr.Inject(ctx, h, mode)
			span.End()
			sid := span.SpanContext().SpanID().String()
			if h.Get("Traceparent") != "00-"+traceID+"-"+sid+"-01" {
				t.Errorf("traceparent %q", h.Get("Traceparent"))
			}
			switch mode {
			case tracing.B3Single:
				if h.Get("B3") != traceID+"-"+sid+"-1" {
					t.Errorf("b3 %q", h.Get("B3"))
				}
			case tracing.B3Multi:
				if h.Get("X-B3-Spanid") != sid || h.Get("X-B3-Traceid") != traceID || h.Get("X-B3-Parentspanid") != "" {
					t.Errorf("b3 multi %v", h)
				}
			}
		})
	}
}

// TestTracingSamplingZero: at 0% a request with no parent is not exported,
// yet its context still travels (unsampled), so the hops agree.
func TestTracingSamplingZero(t *testing.T) {
	rcv := otlptest.Start(t)
	client, orders := tracedMesh(t, rcv, tracing.ProtocolGRPC, 0)
	for range 5 {
		resp, _ := get(t, proxyClient(client), "http://orders/z", nil)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		tp := resp.Header.Get("X-Seen-Traceparent")
		if !strings.HasPrefix(tp, "00-") || !strings.HasSuffix(tp, "-00") {
			t.Errorf("app saw traceparent %q, want an unsampled one", tp)
		}
	}
	for _, p := range []*Proxy{client, orders} {
		if err := p.tracer.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if s := rcv.Spans(); len(s) != 0 {
		t.Errorf("exported %d spans at 0%% sampling: %+v", len(s), s)
	}
}

// TestObserveOffIsNotInChain: without a tracer and an access log the
// observe filter returns next itself, so it costs nothing per request.
func TestObserveOffIsNotInChain(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	p, err := New(Options{Service: "frontend", ClientTLS: ca.clientTLS(ca.svid(t, spiffeFor("frontend")))})
	if err != nil {
		t.Fatal(err)
	}
	var next Handler = routeDispatch{}
	if got := p.observeFilter(false)(next); got != next {
		t.Errorf("observe filter with nothing to do wrapped next: %T", got)
	}
}

// nopCloser adapts a writer to the access log's sink.
type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// accessLogLine is what a line's JSON decodes to.
type accessLogLine struct {
	StartTime          string  `json:"start_time"`
	Direction          string  `json:"direction"`
	Method             string  `json:"method"`
	Path               string  `json:"path"`
	Authority          string  `json:"authority"`
	Protocol           string  `json:"protocol"`
	Status             int     `json:"status"`
	Flags              string  `json:"response_flags"`
	BytesReceived      int64   `json:"bytes_received"`
	BytesSent          int64   `json:"bytes_sent"`
	DurationMS         float64 `json:"duration_ms"`
	Upstream           string  `json:"upstream"`
	SourceIdentity     string  `json:"source_identity"`
	DestinationService string  `json:"destination_service"`
	Route              string  `json:"route"`
	TraceID            string  `json:"trace_id"`
}

func readLines(t *testing.T, path string) []accessLogLine {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []accessLogLine
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var l accessLogLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, l)
	}
	return out
}

// TestAccessLogBothHops: with access logs on, each hop writes one line per
// request with the documented fields, refusals included, and the trace id
// of the request's traceparent (no tracer needed).
func TestAccessLogBothHops(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, "trellis.local")
	app := startApp(t, whoami("orders"))
	open := func(name string) *os.File {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	orders := startServerWith(t, ca, "orders", app, Options{AccessLog: open("orders.log"), AccessLogs: AccessLogAlways}, port(80, app, meshv1.Protocol_HTTP))
	client := startClient(t, ca, Options{AccessLog: open("frontend.log"), AccessLogs: AccessLogAlways, Identity: spiffeFor("frontend")})
	if err := client.Update(snapshot("1", orders.svc)); err != nil {
		t.Fatal(err)
	}
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	c := proxyClient(client)
	req, _ := http.NewRequest("POST", "http://orders/pay?x=1", strings.NewReader("12345"))
	req.Header.Set("Traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if r, _ := get(t, c, "http://nosuch/", nil); r.StatusCode != 503 {
		t.Fatalf("unknown service: status %d", r.StatusCode)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = client.Shutdown(ctx) // flushes the logs
	_ = orders.proxy.Shutdown(ctx)

	out := readLines(t, filepath.Join(dir, "frontend.log"))
	in := readLines(t, filepath.Join(dir, "orders.log"))
	if len(out) != 2 || len(in) != 1 {
		t.Fatalf("lines: frontend %d (want 2), orders %d (want 1): %+v %+v", len(out), len(in), out, in)
	}
	o, i := out[0], in[0]
	if o.Direction != "outbound" || o.Method != "POST" || o.Path != "/pay" || o.Authority != "orders" || o.Status != 200 ||
		o.Flags != "-" || o.BytesReceived != 5 || o.BytesSent != int64(len(body)) || o.Upstream != orders.proxy.InboundAddr() ||
		o.SourceIdentity != spiffeFor("frontend") || o.DestinationService != "orders.default" || o.TraceID != traceID || o.Protocol != "HTTP/1.1" {
		t.Errorf("outbound line %+v", o)
	}
	if _, err := time.Parse(time.RFC3339Nano, o.StartTime); err != nil || o.DurationMS <= 0 {
		t.Errorf("start_time %q duration %v", o.StartTime, o.DurationMS)
	}
	if i.Direction != "inbound" || i.SourceIdentity != spiffeFor("frontend") || i.DestinationService != "orders.default" ||
		i.BytesReceived != 5 || i.Upstream != app || i.TraceID != traceID || i.Protocol != "HTTP/1.1" { // the hop between proxies
		t.Errorf("inbound line %+v", i)
	}
	if r := out[1]; r.Status != 503 || r.Flags != "NC" || r.DestinationService != "unknown" {
		t.Errorf("refused request's line %+v", r)
	}
}

// BenchmarkObserve measures one request through the outbound listener
// chain (telemetry ▸ observe ▸ resolve ▸ route ▸ … ▸ upstream) with a stub
// transport: observe off (not in the chain), tracing at 100% (spans
// exported to an in-process OTLP receiver), tracing at 0% (context
// propagated only), and access logs to a discarding sink.
func BenchmarkObserve(b *testing.B) {
	rcv := otlptest.Start(b)
	ca := newTestCA(b, "trellis.local")
	api := &meshv1.Service{Name: "api", Namespace: "default", Ports: []*meshv1.Port{{Name: "http", Port: 80}},
		Routes:    []*meshv1.Route{{Name: "bare", Backends: backendTo("api")}},
		Endpoints: []*meshv1.Endpoint{{Id: "a", Service: "api", Namespace: "default", Address: "127.0.0.1:1", Identity: spiffeFor("api"), Healthy: true}}}
	tracingAt := func(pct float64) *tracing.Config {
		return &tracing.Config{Endpoint: "http://" + rcv.GRPCAddr, SamplingPercent: pct}
	}
	for _, tc := range []struct {
		name string
		o    Options
	}{
		{"off", Options{}},
		{"tracing=100%", Options{Tracing: tracingAt(100)}},
		{"tracing=0%", Options{Tracing: tracingAt(0)}},
		{"accesslog", Options{AccessLog: nopCloser{io.Discard}, AccessLogs: AccessLogAlways}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			o := tc.o
			o.Service, o.ClientTLS = "frontend", ca.clientTLS(ca.svid(b, spiffeFor("frontend")))
			p, err := New(o)
			if err != nil {
				b.Fatal(err)
			}
			defer p.stopObserving()
			if err := p.Update(snapshot("1", api)); err != nil {
				b.Fatal(err)
			}
			cfg := p.cfg.Load()
			for _, pr := range cfg.byKey["api.default"].peers {
				pr.h1 = stubH1{stubPeer{}}
				pr.h2.RegisterProtocol("https", stubPeer{})
			}
			hdr := http.Header{"User-Agent": []string{"bench"}}
			b.ReportAllocs()
			for b.Loop() {
				ex := p.exchanges.get()
				ex.ctx, ex.clientCtx = context.Background(), context.Background()
				ex.Start = time.Now()
				ex.Method, ex.Authority, ex.Path, ex.Header, ex.ProtoMajor = "GET", "api", "/b", hdr.Clone(), 1
				ex.cfg, ex.series = cfg, cfg.unknown
				resp := cfg.outbound.Serve(ex)
				if resp.Status != 200 {
					b.Fatalf("status %d", resp.Status)
				}
				_ = resp.Body.Close()
				ex.release()
			}
		})
	}
}

// TestTelemetryFromSnapshot: the snapshot's telemetry turns access logs on
// and sets the sampling rate, unless the proxy's own setting is fixed; a
// bad rate is refused (NACK) and the last good snapshot kept.
func TestTelemetryFromSnapshot(t *testing.T) {
	rcv := otlptest.Start(t)
	ca := newTestCA(t, "trellis.local")
	newP := func(o Options) *Proxy {
		o.Service, o.ClientTLS = "frontend", ca.clientTLS(ca.svid(t, spiffeFor("frontend")))
		p, err := New(o)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.stopObserving)
		return p
	}
	on, pct := true, 40.0
	withTel := snapshot("2")
	withTel.Telemetry = &meshv1.Telemetry{AccessLog: &on, TracingSamplingPercent: &pct}

	mesh := newP(Options{Tracing: &tracing.Config{Endpoint: "http://" + rcv.GRPCAddr, SamplingPercent: 1}, AccessLog: nopCloser{io.Discard}})
	if err := mesh.Update(snapshot("1")); err != nil {
		t.Fatal(err)
	}
	if mesh.cfg.Load().accessLog || mesh.tracer.SamplingPercent() != 1 {
		t.Errorf("no telemetry: access log %v, sampling %v; want off, the flag's 1", mesh.cfg.Load().accessLog, mesh.tracer.SamplingPercent())
	}
	if err := mesh.Update(withTel); err != nil {
		t.Fatal(err)
	}
	if !mesh.cfg.Load().accessLog || mesh.tracer.SamplingPercent() != 40 {
		t.Errorf("telemetry: access log %v, sampling %v; want on, 40", mesh.cfg.Load().accessLog, mesh.tracer.SamplingPercent())
	}
	bad := 120.0
	badSnap := snapshot("3")
	badSnap.Telemetry = &meshv1.Telemetry{TracingSamplingPercent: &bad}
	if err := mesh.Update(badSnap); err == nil || !strings.Contains(err.Error(), "tracing_sampling_percent") {
		t.Errorf("bad sampling accepted: %v", err)
	}
	if mesh.tracer.SamplingPercent() != 40 || mesh.cfg.Load().snap.Version != "2" {
		t.Errorf("after a refused snapshot: sampling %v version %s", mesh.tracer.SamplingPercent(), mesh.cfg.Load().snap.Version)
	}

	fixed := newP(Options{Tracing: &tracing.Config{Endpoint: "http://" + rcv.GRPCAddr, SamplingPercent: 5}, SamplingFixed: true,
		AccessLog: nopCloser{io.Discard}, AccessLogs: AccessLogNever})
	if err := fixed.Update(withTel); err != nil {
		t.Fatal(err)
	}
	if fixed.cfg.Load().accessLog || fixed.tracer.SamplingPercent() != 5 {
		t.Errorf("flags fixed: access log %v, sampling %v; want off, 5", fixed.cfg.Load().accessLog, fixed.tracer.SamplingPercent())
	}
}
