package demo

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// TestAppsForwardTraceHeaders: frontend and orders pass the trace context
// of the request they serve to every call they make (W3C and B3), and
// nothing else of the caller's headers.
func TestAppsForwardTraceHeaders(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]http.Header{}
	record := func(name, body string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			seen[name] = r.Header.Clone()
			mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(body))
		})
	}
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	in := http.Header{"Traceparent": {tp}, "Tracestate": {"v=1"}, "X-B3-Sampled": {"1"}, "X-Secret": {"no"}}
	for _, tc := range []struct {
		app, method, path, body string
		upstreams               map[string]http.Handler
	}{
		{"frontend", "GET", "/", "", map[string]http.Handler{"orders": record("orders", `{"id":"o-1"}`)}},
		{"orders", "POST", "/orders", `{"sku":"sku-1","quantity":1}`, map[string]http.Handler{
			"payments": record("payments", `{"charged":true}`), "inventory": record("inventory", `{"available":1}`)}},
	} {
		a, _ := newTestApp(t, tc.app, "", tc.upstreams)
		req := httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body))
		for k, v := range in {
			req.Header[k] = v
		}
		rec := httptest.NewRecorder()
		a.handler().ServeHTTP(rec, req)
		if rec.Code != 200 {
			t.Fatalf("%s: status %d %s", tc.app, rec.Code, rec.Body)
		}
	}
	for _, up := range []string{"orders", "payments", "inventory"} {
		h := seen[up]
		if h.Get("Traceparent") != tp || h.Get("Tracestate") != "v=1" || h.Get("X-B3-Sampled") != "1" {
			t.Errorf("%s got trace headers %q %q %q", up, h.Get("Traceparent"), h.Get("Tracestate"), h.Get("X-B3-Sampled"))
		}
		if h.Get("X-Secret") != "" {
			t.Errorf("%s got the caller's X-Secret", up)
		}
	}
}
