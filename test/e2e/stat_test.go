package e2e

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"
)

// statResult is what `trellis stat -o json` and `trellis top -o json` print.
type statResult struct {
	Kind    string `json:"kind"`
	Window  string `json:"window"`
	From    string `json:"from"`
	Proxies int    `json:"proxies"`
	Rows    []struct {
		Service  string  `json:"service"`
		Route    string  `json:"route"`
		Source   string  `json:"source"`
		Path     string  `json:"path"`
		Requests uint64  `json:"requests"`
		Failures uint64  `json:"failures"`
		RPS      float64 `json:"rps"`
		Success  float64 `json:"success"`
		P50      float64 `json:"p50"`
		P99      float64 `json:"p99"`
	} `json:"rows"`
}

func (cp *controlPlane) stat(t *testing.T, args ...string) statResult {
	t.Helper()
	out, err := cp.cli(t, append(args, "-o", "json")...)
	if err != nil {
		t.Fatalf("trellis %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	var r statResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("trellis %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return r
}

// statApp answers 503 on /fail, after a short wait otherwise, so latency
// quantiles have something to show.
func statApp(name string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fail" {
			http.Error(w, "failing on purpose", http.StatusServiceUnavailable)
			return
		}
		time.Sleep(5 * time.Millisecond)
		fmt.Fprint(w, name+" ok")
	}
}

// TestStatAndTopFromProxyReports: real control plane, two replicas of
// orders and a caller; a known count of requests with a known share of
// 5xx. `trellis stat` (no Prometheus) counts exactly what was sent, merged
// across the replicas, per service, route rule and edge; `trellis top`
// lists the paths sent, a regular-expression rule's paths as one row.
func TestStatAndTopFromProxyReports(t *testing.T) {
	cp := startControl(t, "")
	cp.apply(t, `
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: orders}
spec:
  ports: [{name: http, port: 80, protocol: http}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: orders-paths}
spec:
  parentRefs: [{group: "", kind: Service, name: orders}]
  rules:
  - matches: [{path: {type: RegularExpression, value: "/items/[0-9]+"}}]
    backendRefs: [{name: orders, port: 80}]
  - backendRefs: [{name: orders, port: 80}]
`)
	for i := range 2 {
		cp.proxy(t, proxyConfig{service: "orders", app: appServer(t, "orders", statApp("orders")), labels: fmt.Sprintf("replica=r%d", i)})
	}
	frontend := cp.proxy(t, proxyConfig{service: "frontend"})

	// 300 requests: 150 /buy, 90 to /items/<n> (one rule), 60 /fail (20% 5xx).
	const buy, items, fail = 150, 90, 60
	const total = buy + items + fail
	c := frontend.client()
	for i := range total {
		path := "/buy"
		switch {
		case i%5 == 0:
			path = "/fail"
		case i%10 == 1 || i%10 == 3 || i%10 == 7:
			path = fmt.Sprintf("/items/%d", i)
		}
		code, _, err := get(c, "http://orders"+path)
		if err != nil || (code != 200 && code != 503) {
			t.Fatalf("request %d %s: %d %v", i, path, code, err)
		}
	}

	var svc statResult
	eventually(t, 45*time.Second, "trellis stat to count every request", func() bool {
		svc = cp.stat(t, "stat", "service/orders")
		return len(svc.Rows) == 1 && svc.Rows[0].Requests == total
	})
	r := svc.Rows[0]
	t.Logf("trellis stat service/orders: %+v from %d proxies", r, svc.Proxies)
	// Counts are exact; success is 240/300 exactly; the app waits 5 ms on
	// all but /fail, so p50 is above it and p99 within reason.
	if r.Failures != fail || math.Abs(r.Success-0.8) > 1e-9 || svc.Proxies != 3 {
		t.Errorf("service row %+v, %d proxies: want %d failures, success 0.8, 3 proxies", r, svc.Proxies, fail)
	}
	if math.Abs(r.RPS-total/60.0) > 1e-9 || r.P50 < 0.005 || r.P99 > 1 {
		t.Errorf("service row %+v: want rps %.2f, p50 ≥ 5ms, p99 < 1s", r, total/60.0)
	}

	edges := cp.stat(t, "stat", "edges")
	if len(edges.Rows) != 1 || edges.Rows[0].Source != "frontend.default" || edges.Rows[0].Service != "orders.default" || edges.Rows[0].Requests != total || edges.Rows[0].Failures != fail {
		t.Errorf("edges %+v: want frontend.default → orders.default, %d requests, %d failures", edges.Rows, total, fail)
	}
	routes := cp.stat(t, "stat", "route/orders-paths")
	byRoute := map[string]uint64{}
	for _, row := range routes.Rows {
		byRoute[row.Route] += row.Requests
	}
	if byRoute["default/orders-paths/rules[0]"] != items || byRoute["default/orders-paths/rules[1]"] != buy+fail {
		t.Errorf("routes %v: want rules[0] %d, rules[1] %d", byRoute, items, buy+fail)
	}

	top := cp.stat(t, "top", "orders")
	got := map[string]uint64{}
	for _, row := range top.Rows {
		got[row.Path] = row.Requests
	}
	want := map[string]uint64{"/buy": buy, "/items/[0-9]+": items, "/fail": fail}
	if len(got) != len(want) || got["/buy"] != buy || got["/items/[0-9]+"] != items || got["/fail"] != fail {
		t.Errorf("top orders: %v, want %v", got, want)
	}
	if len(top.Rows) > 0 && top.Rows[0].Path != "/buy" {
		t.Errorf("top orders: busiest first, got %q first", top.Rows[0].Path)
	}

	// The tables people read.
	out, err := cp.cli(t, "stat")
	if err != nil || !strings.Contains(out, "orders.default") || !strings.Contains(out, "80.00%") {
		t.Errorf("trellis stat: %v\n%s", err, out)
	}
	out, err = cp.cli(t, "top", "orders")
	if err != nil || !strings.Contains(out, "/items/[0-9]+") {
		t.Errorf("trellis top orders: %v\n%s", err, out)
	}
	t.Logf("trellis stat:\n%s\ntrellis top orders:\n%s", must(cp.cli(t, "stat")), out)
}

// TestStatPrometheusMatchesControlPlane: `trellis stat --prometheus`
// against a real Prometheus scraping the mesh gives the same success rate
// as the control plane's own summaries for the same traffic.
func TestStatPrometheusMatchesControlPlane(t *testing.T) {
	cp := startControl(t, "")
	prom := startPrometheus(t, cp)
	cp.apply(t, `
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: orders}
spec:
  ports: [{name: http, port: 80, protocol: http}]
`)
	cp.proxy(t, proxyConfig{service: "orders", app: appServer(t, "orders", statApp("orders"))})
	frontend := cp.proxy(t, proxyConfig{service: "frontend"})
	c := frontend.client()
	send := func(path string) {
		if code, _, err := get(c, "http://orders"+path); err != nil || (code != 200 && code != 503) {
			t.Fatalf("%s: %d %v", path, code, err)
		}
	}
	// Prometheus' increase() starts at a series' first scrape: create
	// both series (200 and 503) on both reporters (orders' proxy and the
	// caller's, scraped at their own times) and let all four be scraped
	// before the measured traffic. A caller series first scraped mid-way
	// would lose its first requests to increase() and skew the ratio.
	send("/buy")
	send("/fail")
	eventually(t, 30*time.Second, "prometheus to scrape the warm-up on both reporters", func() bool {
		n, _ := promQuery(t, prom, `count(trellis_requests_total{destination_service="orders"} == 1)`)
		return n == 4
	})
	// 200 requests, one in four failing, over about 4 s of scrapes.
	for i := range 200 {
		if i%4 == 0 {
			send("/fail")
		} else {
			send("/buy")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Services (callee-side counts), edges and routes (caller-side).
	for _, what := range []string{"service/orders", "edges", "routes"} {
		var fromCP statResult
		eventually(t, 45*time.Second, what+": the control plane to count every request", func() bool {
			fromCP = cp.stat(t, "stat", what)
			return len(fromCP.Rows) == 1 && fromCP.Rows[0].Requests == 202
		})
		var fromProm statResult
		eventually(t, 30*time.Second, what+": prometheus to have scraped every request", func() bool {
			fromProm = cp.stat(t, "stat", what, "--prometheus", "http://"+prom)
			return len(fromProm.Rows) == 1 && fromProm.Rows[0].Requests >= 198
		})
		cpRow, promRow := fromCP.Rows[0], fromProm.Rows[0]
		t.Logf("%s: control plane %+v\n  prometheus %+v", what, cpRow, promRow)
		// 51/202 failed by the control plane's count (warm-up included);
		// 50/200 in Prometheus' increase() (which starts after it): ±1%.
		if math.Abs(cpRow.Success-promRow.Success) > 0.01 {
			t.Errorf("%s success: control plane %.4f, prometheus %.4f; want within 0.01", what, cpRow.Success, promRow.Success)
		}
		if !strings.HasPrefix(fromProm.From, "Prometheus") || promRow.Service != "orders.default" || promRow.Source != cpRow.Source || promRow.Route != cpRow.Route || promRow.P99 <= 0 {
			t.Errorf("%s: prometheus row %+v, control plane row %+v: want the same key", what, promRow, cpRow)
		}
	}
}
