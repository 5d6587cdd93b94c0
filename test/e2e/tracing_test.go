package e2e

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"trellis.dev/trellis/internal/tracing/otlptest"
)

// shopProxy runs one demo app (trellis demo-app NAME) behind its proxy,
// with the proxy's extra flags. The app calls its upstreams through the
// proxy's outbound port, which the test picks so the app can be told.
func shopProxy(t *testing.T, cp *controlPlane, name string, extra ...string) *sidecar {
	t.Helper()
	app, out := freeAddr(t), freeAddr(t)
	s := cp.proxy(t, proxyConfig{
		service: name,
		app:     app,
		extra:   append([]string{"--outbound", out}, extra...),
		command: []string{trellisBin, "demo-app", name, "--listen", app, "--outbound", out},
	})
	s.outbound = out
	return s
}

// spanOf finds the span of kind that service's proxy made toward dest.
func spanOf(t *testing.T, spans []otlptest.Span, service string, kind tracepb.Span_SpanKind, dest string) otlptest.Span {
	t.Helper()
	for _, s := range spans {
		if s.Resource["service.name"] == service && s.Kind == kind && s.Attrs["trellis.destination.service"] == dest {
			return s
		}
	}
	t.Fatalf("no %v span by %s to %s among %d spans", kind, service, dest, len(spans))
	return otlptest.Span{}
}

// TestTracingThroughShop: a request with a B3 parent enters the mesh at a
// client proxy and crosses the demo shop (frontend → orders → payments and
// inventory) through real proxies exporting to a real OTLP receiver. Every
// hop has a client span on the calling proxy and a server span on the
// called one, parented across the hop and through each app (which forwards
// traceparent), all in the caller's trace. An app at the end of another
// path sees W3C traceparent although the caller sent only B3.
func TestTracingThroughShop(t *testing.T) {
	rcv := otlptest.Start(t)
	cp := startControl(t, "")
	traced := []string{"--trace-endpoint", "http://" + rcv.GRPCAddr, "--trace-sampling", "100"}
	for _, name := range []string{"payments", "inventory", "orders", "frontend"} {
		shopProxy(t, cp, name, traced...)
	}
	seen := make(chan http.Header, 1)
	echo := appServer(t, "echo", func(w http.ResponseWriter, r *http.Request) {
		select {
		case seen <- r.Header.Clone():
		default:
		}
	})
	cp.proxy(t, proxyConfig{service: "echo", app: echo, extra: traced})
	shopper := cp.proxy(t, proxyConfig{service: "shopper", extra: traced})

	const traceID, parent = "463ac35c9f6413ad48485a3953bb6124", "a2fb4a1d1a96d312"
	req, _ := http.NewRequest("GET", "http://frontend/", nil)
	req.Header.Set("B3", traceID+"-"+parent+"-1")
	resp, err := shopper.client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET frontend: %d %s", resp.StatusCode, body)
	}

	// shopper→frontend, frontend→orders, orders→payments, orders→inventory:
	// a client and a server span each.
	spans := rcv.WaitFor(8, 20*time.Second)
	in := func(svc string) otlptest.Span {
		return spanOf(t, spans, svc, tracepb.Span_SPAN_KIND_SERVER, svc+".default")
	}
	out := func(from, to string) otlptest.Span {
		return spanOf(t, spans, from, tracepb.Span_SPAN_KIND_CLIENT, to+".default")
	}
	chain := []struct {
		name         string
		span, parent otlptest.Span
	}{
		{"frontend server ← shopper client", in("frontend"), out("shopper", "frontend")},
		{"frontend client ← frontend server (through the app)", out("frontend", "orders"), in("frontend")},
		{"orders server ← frontend client", in("orders"), out("frontend", "orders")},
		{"orders→payments client ← orders server (through the app)", out("orders", "payments"), in("orders")},
		{"payments server ← orders client", in("payments"), out("orders", "payments")},
		{"orders→inventory client ← orders server", out("orders", "inventory"), in("orders")},
		{"inventory server ← orders client", in("inventory"), out("orders", "inventory")},
	}
	for _, c := range chain {
		if c.span.ParentID != c.parent.SpanID {
			t.Errorf("%s: parent %s, want %s", c.name, c.span.ParentID, c.parent.SpanID)
		}
	}
	for _, s := range spans {
		if s.TraceID != traceID {
			t.Errorf("span %s of %s in trace %s, want the caller's %s", s.Name, s.Resource["service.name"], s.TraceID, traceID)
		}
	}
	if root := out("shopper", "frontend"); root.ParentID != parent {
		t.Errorf("first span's parent %s, want the B3 span %s", root.ParentID, parent)
	}
	if p := in("payments"); p.Attrs["http.response.status_code"] != "200" || p.Attrs["trellis.source.identity"] != "spiffe://trellis.local/ns/default/sa/orders" ||
		p.Attrs["trellis.response_flags"] != "-" || p.Attrs["url.path"] != "/charge" {
		t.Errorf("payments' server span attributes %v", p.Attrs)
	}

	// B3 in, W3C out: the app behind the last proxy gets a traceparent.
	req, _ = http.NewRequest("GET", "http://echo/", nil)
	req.Header.Set("X-B3-Traceid", traceID)
	req.Header.Set("X-B3-Spanid", parent)
	req.Header.Set("X-B3-Sampled", "1")
	if resp, err = shopper.client().Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	h := <-seen
	if tp := h.Get("Traceparent"); !strings.HasPrefix(tp, "00-"+traceID+"-") || !strings.HasSuffix(tp, "-01") {
		t.Errorf("echo app saw traceparent %q, want one in trace %s, sampled", tp, traceID)
	}
	if sid := h.Get("X-B3-Spanid"); sid == parent || sid == "" || !strings.Contains(h.Get("Traceparent"), sid) {
		t.Errorf("echo app saw X-B3-Spanid %q, want the echo proxy's span (as in traceparent %q)", sid, h.Get("Traceparent"))
	}
}

// TestTracingSamplingFromTelemetry: proxies without --trace-sampling take
// the mesh-wide Telemetry's rate. At 0% nothing is exported; the same
// proxies export once the Telemetry says 100%.
func TestTracingSamplingFromTelemetry(t *testing.T) {
	rcv := otlptest.Start(t)
	cp := startControl(t, "")
	tel := func(pct string) string {
		return "apiVersion: trellis.dev/v1alpha1\nkind: Telemetry\nmetadata: {name: mesh, namespace: trellis-system}\nspec:\n  tracing: {randomSamplingPercentage: " + pct + "}\n"
	}
	cp.apply(t, tel("0"))
	traced := []string{"--trace-endpoint", "http://" + rcv.HTTPAddr, "--trace-protocol", "http"}
	cp.proxy(t, proxyConfig{service: "echo", app: appServer(t, "echo", nil), extra: traced})
	shopper := cp.proxy(t, proxyConfig{service: "shopper", extra: traced})
	c := shopper.client()
	for range 20 {
		if code, body, err := get(c, "http://echo/"); err != nil || code != 200 {
			t.Fatalf("GET echo: %d %q %v", code, body, err)
		}
	}
	time.Sleep(2500 * time.Millisecond) // two batch timeouts
	if s := rcv.Spans(); len(s) != 0 {
		t.Fatalf("%d spans exported at 0%% sampling", len(s))
	}
	if out, err := cp.cli(t, "apply", "--wait", "-f", writeTemp(t, tel("100"))); err != nil {
		t.Fatalf("apply --wait: %v\n%s", err, out)
	}
	if code, _, err := get(c, "http://echo/"); err != nil || code != 200 {
		t.Fatalf("GET echo: %d %v", code, err)
	}
	if s := rcv.WaitFor(2, 10*time.Second); len(s) != 2 {
		t.Fatalf("%d spans at 100%% sampling, want 2 (a client and a server span)", len(s))
	}
}

func writeTemp(t *testing.T, content string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "res.yaml")
	if err := os.WriteFile(f, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// accessLine is one access log line as documented.
type accessLine struct {
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

// readAccessLog decodes every line of the files, strictly.
func readAccessLog(t *testing.T, files ...string) []accessLine {
	t.Helper()
	var out []accessLine
	for _, f := range files {
		fh, err := os.Open(f)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			dec := json.NewDecoder(strings.NewReader(sc.Text()))
			dec.DisallowUnknownFields()
			var l accessLine
			if err := dec.Decode(&l); err != nil {
				t.Fatalf("%s: line %q: %v", f, sc.Text(), err)
			}
			out = append(out, l)
		}
		fh.Close()
	}
	return out
}

// TestAccessLogFileRotates: a proxy logging to a file writes one JSON line
// per request with the documented fields, rotates at the size bound
// keeping the files it is told to, and loses no line doing so.
func TestAccessLogFileRotates(t *testing.T) {
	cp := startControl(t, "")
	dir := t.TempDir()
	file := filepath.Join(dir, "access.log")
	cp.proxy(t, proxyConfig{service: "echo", app: appServer(t, "echo", nil)})
	shopper := cp.proxy(t, proxyConfig{service: "shopper", extra: []string{
		"--access-log", file, "--access-log-max-size", "8KiB", "--access-log-max-files", "5"}})
	c := shopper.client()
	const n = 60
	for i := range n {
		req, _ := http.NewRequest("GET", "http://echo/item", nil)
		if i == 0 {
			req.Header.Set("Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	files := []string{file + ".5", file + ".4", file + ".3", file + ".2", file + ".1", file}
	var lines []accessLine
	eventually(t, 10*time.Second, "every line written", func() bool {
		lines = readAccessLog(t, files...)
		return len(lines) >= n
	})
	if len(lines) != n {
		t.Fatalf("%d lines for %d requests", len(lines), n)
	}
	for i, f := range files {
		st, err := os.Stat(f)
		if err != nil && f != file+".1" && f != file+".2" {
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v (60 lines of ~400 bytes rotate at 8KiB at least twice)", f, err)
		}
		if st.Size() > 8<<10 {
			t.Errorf("%s (file %d) is %d bytes, over the 8KiB bound", f, i, st.Size())
		}
	}
	l := lines[0]
	if l.Direction != "outbound" || l.Method != "GET" || l.Path != "/item" || l.Authority != "echo" || l.Status != 200 ||
		l.Flags != "-" || l.BytesSent != int64(len("echo /item")) || l.Upstream == "" || l.DestinationService != "echo.default" ||
		l.SourceIdentity != "spiffe://trellis.local/ns/default/sa/shopper" || l.TraceID != "4bf92f3577b34da6a3ce929d0e0e4736" || l.DurationMS <= 0 {
		t.Errorf("first line %+v", l)
	}
	if _, err := time.Parse(time.RFC3339Nano, l.StartTime); err != nil {
		t.Errorf("start_time: %v", err)
	}
}

// TestAccessLogDropsUnderFullBuffer: a sink that stops taking lines (a
// pipe nobody reads) never slows the requests; lines beyond the buffer
// are dropped and counted on /metrics.
func TestAccessLogDropsUnderFullBuffer(t *testing.T) {
	cp := startControl(t, "")
	fifo := filepath.Join(t.TempDir(), "access.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// Opened for reading (so the proxy's open does not block) and never read.
	r, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cp.proxy(t, proxyConfig{service: "echo", app: appServer(t, "echo", nil)})
	shopper := cp.proxy(t, proxyConfig{service: "shopper", extra: []string{"--access-log", fifo, "--access-log-buffer", "16"}})
	c := shopper.client()
	start := time.Now()
	const n = 600 // ~240 KB of lines: past the 64 KiB pipe and the buffer
	for range n {
		if code, _, err := get(c, "http://echo/"); err != nil || code != 200 {
			t.Fatalf("GET echo: %d %v", code, err)
		}
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("%d requests took %s with a stuck log", n, d)
	}
	dropped := metricValue(t, shopper, "trellis_proxy_access_log_dropped_total")
	written := metricValue(t, shopper, "trellis_proxy_access_log_lines_total")
	if dropped < n/2 || dropped+written > n {
		t.Errorf("dropped %v, written %v of %d lines; want most dropped", dropped, written, n)
	}
}
