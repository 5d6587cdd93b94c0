package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

func TestEmbeddedYAMLMatchesExamples(t *testing.T) {
	for name, embedded := range map[string][]byte{
		"shop.yaml":              shopYAML,
		"inventory-90-10.yaml":   inventory9010YAML,
		"inventory-v2-only.yaml": inventoryV2OnlyYAML,
	} {
		ex, err := os.ReadFile(filepath.Join("..", "..", "examples", "demo", name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ex, embedded) {
			t.Errorf("examples/demo/%s differs from internal/demo/%s: copy one over the other", name, name)
		}
	}
	// The split the demo starts with and the ones the README tour applies.
	for _, c := range []struct {
		yaml   []byte
		v1, v2 string
	}{{shopYAML, "50", "50"}, {inventory9010YAML, "90", "10"}, {inventoryV2OnlyYAML, "0", "100"}} {
		s := string(c.yaml)
		if !strings.Contains(s, "name: inventory-v1\n      port: 80\n      weight: "+c.v1+"\n") ||
			!strings.Contains(s, "name: inventory-v2\n      port: 80\n      weight: "+c.v2+"\n") {
			t.Errorf("route does not split %s/%s:\n%s", c.v1, c.v2, s)
		}
	}
}

// fakeOutbound stands in for the proxy's outbound port: an HTTP proxy that
// hands each request to the handler of the service it is addressed to.
type fakeOutbound struct {
	mu       sync.Mutex
	services map[string]http.Handler
	seen     []string // request URIs as the proxy received them
}

func (f *fakeOutbound) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.seen = append(f.seen, r.Method+" "+r.RequestURI)
	h, ok := f.services[r.Host]
	f.mu.Unlock()
	if !ok {
		http.Error(w, "no route to "+r.Host, http.StatusServiceUnavailable)
		return
	}
	h.ServeHTTP(w, r)
}

func newTestApp(t *testing.T, name, version string, upstreams map[string]http.Handler) (*app, *fakeOutbound) {
	t.Helper()
	fo := &fakeOutbound{services: upstreams}
	srv := httptest.NewServer(fo)
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	c := newUpstreamClient(u)
	t.Cleanup(c.CloseIdleConnections)
	return &app{name: name, version: version, client: c, work: func(context.Context) {}}, fo
}

func status(code int, body string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(code)
		io.WriteString(w, body)
	})
}

func do(t *testing.T, h http.Handler, method, target, body string) (int, map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, target, strings.NewReader(body)))
	var out map[string]any
	if rec.Body.Len() > 0 && strings.HasPrefix(rec.Header().Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
			t.Fatalf("%s %s: body is not JSON: %q", method, target, rec.Body.String())
		}
	}
	return rec.Code, out
}

func TestFrontend(t *testing.T) {
	tests := []struct {
		name      string
		orders    http.Handler
		wantCode  int
		wantError string
	}{
		{"order placed", status(200, `{"service":"orders","id":"o-1"}`), 200, ""},
		{"orders fails", status(500, `{"error":"boom"}`), 502, "http://orders/orders: status 500"},
		{"orders unavailable", status(503, ``), 502, "status 503"},
		{"orders answers garbage", status(200, `<html>`), 502, "not JSON"},
		{"no orders service", nil, 502, "status 503"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ups := map[string]http.Handler{}
			if tt.orders != nil {
				ups["orders"] = tt.orders
			}
			a, fo := newTestApp(t, "frontend", "", ups)
			code, body := do(t, a.handler(), "GET", "/", "")
			if code != tt.wantCode {
				t.Fatalf("status %d, want %d (%v)", code, tt.wantCode, body)
			}
			if tt.wantError != "" {
				if e, _ := body["error"].(string); !strings.Contains(e, tt.wantError) {
					t.Fatalf("error %q, want it to contain %q", e, tt.wantError)
				}
				return
			}
			order, _ := body["order"].(map[string]any)
			if body["service"] != "frontend" || order["id"] != "o-1" {
				t.Fatalf("body %v", body)
			}
			// The call went through the outbound port as a proxy request.
			if len(fo.seen) != 1 || fo.seen[0] != "POST http://orders/orders" {
				t.Fatalf("outbound saw %q", fo.seen)
			}
		})
	}
}

func TestFrontendOutboundDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	a := &app{name: "frontend", client: newUpstreamClient(&url.URL{Scheme: "http", Host: addr}), work: func(context.Context) {}}
	code, body := do(t, a.handler(), "GET", "/", "")
	if e, _ := body["error"].(string); code != 502 || !strings.Contains(e, "http://orders/orders") {
		t.Fatalf("status %d body %v, want 502 naming the upstream", code, body)
	}
}

func TestOrders(t *testing.T) {
	var payBody atomic.Value
	payOK := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		payBody.Store(string(b))
		io.WriteString(w, `{"service":"payments","charged":true}`)
	})
	var stockPath atomic.Value
	stockOK := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		stockPath.Store(r.URL.Path)
		io.WriteString(w, `{"service":"inventory","version":"v2"}`)
	})
	tests := []struct {
		name            string
		body            string
		payments, stock http.Handler
		wantCode        int
		wantError       string
	}{
		{"both succeed", `{"sku":"sku-7","quantity":2}`, payOK, stockOK, 200, ""},
		{"payments fails", `{"sku":"sku-7","quantity":1}`, status(500, "{}"), stockOK, 502, "http://payments/charge: status 500"},
		{"inventory fails", `{"sku":"sku-7","quantity":1}`, payOK, status(502, "{}"), 502, "http://inventory/stock/sku-7: status 502"},
		{"both fail", `{"sku":"sku-7","quantity":1}`, status(500, "{}"), status(500, "{}"), 502, "inventory"},
		{"bad body", `{`, payOK, stockOK, 400, "sku"},
		{"no sku", `{"quantity":1}`, payOK, stockOK, 400, "sku"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, _ := newTestApp(t, "orders", "", map[string]http.Handler{"payments": tt.payments, "inventory": tt.stock})
			code, body := do(t, a.handler(), "POST", "/orders", tt.body)
			if code != tt.wantCode {
				t.Fatalf("status %d, want %d (%v)", code, tt.wantCode, body)
			}
			if tt.wantError != "" {
				if e, _ := body["error"].(string); !strings.Contains(e, tt.wantError) {
					t.Fatalf("error %q, want it to contain %q", e, tt.wantError)
				}
				return
			}
			stock, _ := body["stock"].(map[string]any)
			pay, _ := body["payment"].(map[string]any)
			if stock["version"] != "v2" || pay["charged"] != true {
				t.Fatalf("body %v", body)
			}
			if p := stockPath.Load(); p != "/stock/sku-7" {
				t.Errorf("inventory called at %v", p)
			}
			if b, _ := payBody.Load().(string); !strings.Contains(b, `"amount_cents":998`) {
				t.Errorf("payments got %q, want 2 × 499 cents", b)
			}
		})
	}
}

func TestLeafApps(t *testing.T) {
	inv, _ := newTestApp(t, "inventory", "v2", nil)
	code, body := do(t, inv.handler(), "GET", "/stock/sku-3", "")
	if code != 200 || body["version"] != "v2" || body["sku"] != "sku-3" {
		t.Fatalf("inventory: %d %v", code, body)
	}
	pay, _ := newTestApp(t, "payments", "", nil)
	code, body = do(t, pay.handler(), "POST", "/charge", `{"amount_cents":499}`)
	if code != 200 || body["charged"] != true || body["amount_cents"] != 499.0 {
		t.Fatalf("payments: %d %v", code, body)
	}
	if code, _ := do(t, pay.handler(), "POST", "/charge", `nope`); code != 400 {
		t.Fatalf("payments with a bad body: %d, want 400", code)
	}
	// Each app answers only its own API.
	if code, _ := do(t, pay.handler(), "GET", "/charge", ""); code != http.StatusMethodNotAllowed {
		t.Fatalf("GET /charge: %d", code)
	}
	if code, _ := do(t, inv.handler(), "POST", "/orders", "{}"); code != http.StatusNotFound {
		t.Fatalf("inventory POST /orders: %d", code)
	}
	if code, body := do(t, inv.handler(), "GET", "/healthz", ""); code != 200 || body["service"] != "inventory" {
		t.Fatalf("healthz: %d %v", code, body)
	}
}

func TestRandomWork(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var lo, hi time.Duration = time.Hour, 0
		for range 200 {
			start := time.Now()
			randomWork(t.Context())
			d := time.Since(start)
			lo, hi = min(lo, d), max(hi, d)
		}
		if lo < time.Millisecond || hi >= 5*time.Millisecond || hi-lo < time.Millisecond {
			t.Fatalf("work took %v..%v, want spread over [1ms, 5ms)", lo, hi)
		}
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestGenerateLoad(t *testing.T) {
	tests := []struct {
		name       string
		code       int
		err        error
		wantFailed bool
	}{
		{"all succeed", 200, nil, false},
		{"frontend fails", 502, nil, true},
		{"transport fails", 0, errors.New("refused"), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var got atomic.Int64
				client := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
					if r.URL.String() != "http://frontend/" {
						t.Errorf("called %s", r.URL)
					}
					got.Add(1)
					if tt.err != nil {
						return nil, tt.err
					}
					return &http.Response{StatusCode: tt.code, Body: io.NopCloser(strings.NewReader("{}"))}, nil
				})}
				ctx, cancel := context.WithCancel(t.Context())
				var sent, failed atomic.Int64
				done := make(chan struct{})
				go func() { generateLoad(ctx, client, "http://frontend/", 50, &sent, &failed); close(done) }()
				time.Sleep(time.Second + time.Millisecond)
				cancel()
				<-done
				// 50 rps for a second: a tick every 20 ms.
				if sent.Load() != 50 || got.Load() != 50 {
					t.Fatalf("sent %d, transport saw %d, want 50", sent.Load(), got.Load())
				}
				if want := map[bool]int64{true: 50, false: 0}[tt.wantFailed]; failed.Load() != want {
					t.Fatalf("failed %d, want %d", failed.Load(), want)
				}
			})
		})
	}
}

func TestRunAppFlags(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	tests := []struct {
		name, app string
		args      []string
		want      string
	}{
		{"unknown app", "checkout", nil, "unknown demo app"},
		{"unknown flag", "orders", []string{"--nope"}, "flag provided but not defined"},
		{"bad rps", "loadgen", []string{"--rps", "0"}, "--rps must be > 0"},
		{"extra args", "orders", []string{"extra"}, "unexpected arguments"},
		{"bad outbound", "orders", []string{"--outbound", "::bad"}, "--outbound"},
		{"port in use", "orders", []string{"--listen", busy.Addr().String()}, "address already in use"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := RunApp(t.Context(), tt.app, tt.args)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want containing %q", err, tt.want)
			}
		})
	}
	if err := RunApp(t.Context(), "checkout", nil); !errors.Is(err, ErrUnknownApp) {
		t.Fatalf("err = %v, want ErrUnknownApp", err)
	}
}

// TestRunAppEndToEnd runs inventory and a frontend→orders chain as real
// servers behind a fake outbound proxy and stops them by cancelling.
func TestRunAppServesAndStops(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- RunApp(ctx, "inventory", []string{"--listen", addr, "--version", "v1"}) }()

	var resp *http.Response
	for deadline := time.Now().Add(5 * time.Second); ; {
		resp, err = http.Get("http://" + addr + "/stock/sku-1")
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	var body map[string]any
	json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if body["version"] != "v1" {
		t.Fatalf("body %v", body)
	}
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("RunApp returned %v after cancel, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("RunApp did not stop after cancel")
	}
	// The port is released.
	ln, err = net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("port still bound after stop: %v", err)
	}
	ln.Close()
}

func TestRunAppLoadgenStats(t *testing.T) {
	var seen atomic.Int64
	fo := &fakeOutbound{services: map[string]http.Handler{"frontend": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		io.WriteString(w, "{}")
	})}}
	srv := httptest.NewServer(fo)
	defer srv.Close()
	stats := filepath.Join(t.TempDir(), "stats.json")
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() {
		errc <- RunApp(ctx, "loadgen", []string{"--listen", "127.0.0.1:0", "--outbound", strings.TrimPrefix(srv.URL, "http://"),
			"--rps", "200", "--stats-file", stats})
	}()
	for deadline := time.Now().Add(5 * time.Second); seen.Load() < 20 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(stats)
	if err != nil {
		t.Fatal(err)
	}
	var st LoadStats
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	// Every request sent was answered before RunApp returned.
	if st.Sent < 20 || st.Failed != 0 || st.Sent != seen.Load() {
		t.Fatalf("stats %+v, frontend saw %d", st, seen.Load())
	}
}
