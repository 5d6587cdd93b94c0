package cli

import (
	"bytes"
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"trellis.dev/trellis/internal/stats"
)

func statResult(kind string, rows ...stats.Row) stats.Result {
	end := time.Date(2026, 12, 1, 15, 2, 30, 0, time.UTC)
	return stats.Result{Kind: kind, Window: "1m0s", Start: end.Add(-time.Minute), End: end, From: "control plane", Proxies: 4, Rows: rows}
}

var statRows = map[string]stats.Result{
	"services": statResult(stats.KindService,
		stats.Row{Service: "frontend.default", Requests: 2400, Failures: 0, RPS: 40, Success: 1, P50: 0.0042, P95: 0.162, P99: 0.171},
		stats.Row{Service: "payments.default", Requests: 1200, Failures: 12, RPS: 20, Success: 0.99, P50: 0.00081, P95: 0.0019, P99: 0.0123},
		stats.Row{Service: "idle.default", Success: 1}),
	"routes": statResult(stats.KindRoute,
		stats.Row{Service: "inventory-v1.default", Route: "default/inventory-split/rules[0]", Requests: 600, RPS: 10, Success: 1, P50: 0.001, P95: 0.002, P99: 0.003},
		stats.Row{Service: "inventory-v2.default", Route: "default/inventory-split/rules[0]", Requests: 590, Failures: 59, RPS: 9.8, Success: 0.9, P50: 0.0011, P95: 0.0025, P99: 0.04}),
	"edges": statResult(stats.KindEdge,
		stats.Row{Service: "orders.default", Source: "frontend.default", Requests: 2400, RPS: 40, Success: 1, P50: 0.004, P95: 0.16, P99: 0.17}),
	"top": statResult(stats.KindPath,
		stats.Row{Service: "orders.default", Path: "/api/orders", Requests: 1800, RPS: 30, Success: 0.995, P50: 0.003, P95: 0.009, P99: 0.012},
		stats.Row{Service: "orders.default", Path: "/items/[0-9]+", Requests: 600, RPS: 10, Success: 1, P50: 0.001, P95: 0.002, P99: 0.0031}),
	"empty": statResult(stats.KindService),
}

func TestStatTables(t *testing.T) {
	for name, res := range statRows {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := printStats(&buf, res); err != nil {
				t.Fatal(err)
			}
			golden(t, "stat-"+name, buf.Bytes())
		})
	}
}

func TestStatJSON(t *testing.T) {
	var buf bytes.Buffer
	if err := runStat(context.Background(), &buf, statFlags{output: "json"}, func(context.Context) (stats.Result, error) {
		return statRows["routes"], nil
	}); err != nil {
		t.Fatal(err)
	}
	golden(t, "stat-json", buf.Bytes())
}

// TestStatWatch: -w prints a table per fetch, in place in a terminal
// (clear screen first), a blank line apart otherwise; a failed fetch is
// shown and the watch goes on.
func TestStatWatch(t *testing.T) {
	for _, tty := range []bool{false, true} {
		var buf bytes.Buffer
		ctx, cancel := context.WithCancel(context.Background())
		n := 0
		fetch := func(context.Context) (stats.Result, error) {
			n++
			switch n {
			case 2:
				return stats.Result{}, context.DeadlineExceeded
			case 3:
				cancel()
			}
			return statRows["edges"], nil
		}
		if err := watch(ctx, &buf, tty, time.Millisecond, fetch, func(r stats.Result) error { return printStats(&buf, r) }); err != nil {
			t.Fatal(err)
		}
		out := buf.String()
		if got := strings.Count(out, "Edges over"); got != 1 || !strings.Contains(out, "context deadline exceeded") {
			t.Fatalf("tty=%v: %d tables and no error line in\n%s", tty, got, out)
		}
		if clears := strings.Count(out, clearScreen); tty && clears != 2 || !tty && clears != 0 {
			t.Errorf("tty=%v: %d screen clears in %q", tty, clears, out)
		}
		if !tty && !strings.Contains(out, "\n\n") {
			t.Errorf("not a terminal: tables not a blank line apart: %q", out)
		}
	}
}

func TestStatArgs(t *testing.T) {
	for arg, want := range map[string]stats.Query{
		"service/orders":        {Kind: stats.KindService, Service: "orders"},
		"services":              {Kind: stats.KindService},
		"route/inventory-split": {Kind: stats.KindRoute, Route: "inventory-split"},
		"routes":                {Kind: stats.KindRoute},
		"edges":                 {Kind: stats.KindEdge},
	} {
		got, err := statQuery([]string{arg})
		if err != nil || got != want {
			t.Errorf("%s: %+v, %v; want %+v", arg, got, err, want)
		}
	}
	for _, arg := range []string{"pods/x", "edges/orders"} {
		if _, err := statQuery([]string{arg}); err == nil {
			t.Errorf("%s: accepted", arg)
		}
	}
}

// TestPromRouteRegexp: --prometheus selects the same route labels as the
// control plane (stats.RouteMatches): by name, namespace/name or whole.
func TestPromRouteRegexp(t *testing.T) {
	labels := []string{"default/inventory-split/rules[0]", "default/inventory-split/rules[1]", "default/inventory-split-x/rules[0]", "shop/inventory-split/rules[0]", "default/a.b/rules[0]", "default/aXb/rules[0]"}
	for _, want := range []string{"inventory-split", "default/inventory-split", "default/inventory-split/rules[1]", "a.b"} {
		lit, err := strconv.Unquote(`"` + promRouteRegexp(want) + `"`) // the PromQL string literal
		if err != nil {
			t.Fatalf("%s: %q is not a valid string literal: %v", want, promRouteRegexp(want), err)
		}
		re := regexp.MustCompile("^(?:" + lit + ")$") // PromQL anchors =~
		for _, l := range labels {
			if got := re.MatchString(l); got != stats.RouteMatches(l, want) {
				t.Errorf("route %q, label %q: prometheus matches %v, control plane %v", want, l, got, !got)
			}
		}
	}
}
