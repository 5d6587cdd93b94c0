package cli

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"trellis.dev/trellis/internal/stats"
	"trellis.dev/trellis/internal/telemetry"
)

// statFlags are what stat and top share.
type statFlags struct {
	window   time.Duration
	output   string
	watch    bool
	interval time.Duration
}

func (f *statFlags) register(cmd *cobra.Command, watch bool) {
	cmd.Flags().DurationVar(&f.window, "window", time.Minute, "how far back to look, a multiple of 10s up to 5m (top: 1m)")
	cmd.Flags().StringVarP(&f.output, "output", "o", "table", "output format: table or json")
	if watch {
		cmd.Flags().BoolVarP(&f.watch, "watch", "w", false, "keep printing: redraw in place in a terminal, successive tables otherwise")
		cmd.Flags().DurationVar(&f.interval, "interval", 5*time.Second, "with -w, how often to ask again")
	}
}

func newStatCmd(g *globals) *cobra.Command {
	var f statFlags
	var prom string
	cmd := &cobra.Command{
		Use:   "stat [service/NAME | services | route/NAME | routes | edges]",
		Short: "Show requests per second, success rate and latency per service, route or edge",
		Long: `Show each service's (or route's, or edge's) traffic over a recent window:
REQUESTS, RPS, SUCCESS (the share of responses that were not 5xx) and the
p50, p95 and p99 latency.

Services are counted by their own proxies (inbound), so every caller is
included; routes and edges (FROM → TO) by the callers' proxies, per route
rule and backend. Every proxy reports 10-second windows to the control
plane about every 5 s and the control plane merges them across replicas
(latency sketches merged, never percentiles averaged); the window ends at
the last 10-second boundary every proxy has reported, 7 to 17 s ago.

With --prometheus URL the same numbers come from a Prometheus scraping the
proxies instead (PromQL over trellis_requests_total and
trellis_request_duration_seconds_bucket; histogram_quantile interpolates
within the histogram's buckets).`,
		Example: `  trellis stat
  trellis stat service/orders --window 5m
  trellis stat route/inventory-split
  trellis stat edges -w
  trellis stat -o json
  trellis stat --prometheus http://127.0.0.1:9090`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q, err := statQuery(args)
			if err != nil {
				return err
			}
			q.Window = f.window
			if err := checkOutput("stat", f.output, "table", "json"); err != nil {
				return err
			}
			if err := q.Check(); err != nil {
				return fmt.Errorf("stat: --%w", err)
			}
			fetch, err := statSource(g, prom)
			if err != nil {
				return err
			}
			return runStat(cmd.Context(), g.stdout, f, func(ctx context.Context) (stats.Result, error) { return fetch(ctx, q) })
		},
	}
	f.register(cmd, true)
	cmd.Flags().StringVar(&prom, "prometheus", "", "query this Prometheus (http://host:9090) instead of the control plane")
	return cmd
}

// statQuery reads stat's argument: what to show.
func statQuery(args []string) (stats.Query, error) {
	if len(args) == 0 {
		return stats.Query{Kind: stats.KindService}, nil
	}
	kind, name, _ := strings.Cut(args[0], "/")
	switch kind {
	case "service", "services", "svc":
		return stats.Query{Kind: stats.KindService, Service: name}, nil
	case "route", "routes", "httproute", "grpcroute":
		return stats.Query{Kind: stats.KindRoute, Route: name}, nil
	case "edge", "edges":
		if name != "" {
			return stats.Query{}, fmt.Errorf("stat: %q: edges take no name (use service/NAME for one service)", args[0])
		}
		return stats.Query{Kind: stats.KindEdge}, nil
	}
	return stats.Query{}, fmt.Errorf("stat: %q: want service/NAME, services, route/NAME, routes or edges", args[0])
}

// fetcher answers a query.
type fetcher func(ctx context.Context, q stats.Query) (stats.Result, error)

// statSource is the control plane's /v1/stats, or a Prometheus.
func statSource(g *globals, prom string) (fetcher, error) {
	if prom != "" {
		return newPromSource(prom)
	}
	c, err := newAdminClient(g.dataDir)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, q stats.Query) (stats.Result, error) {
		v := url.Values{"kind": {q.Kind}, "window": {q.Window.String()}}
		for k, s := range map[string]string{"service": q.Service, "route": q.Route, "source": q.Source} {
			if s != "" {
				v.Set(k, s)
			}
		}
		var res stats.Result
		if err := c.do(ctx, "GET", "/v1/stats?"+v.Encode(), nil, &res); err != nil {
			return stats.Result{}, fmt.Errorf("stats: %w", err)
		}
		return res, nil
	}, nil
}

// runStat prints one result, or with -w one every interval until ctx ends.
func runStat(ctx context.Context, w io.Writer, f statFlags, fetch func(context.Context) (stats.Result, error)) error {
	print := func(res stats.Result) error {
		if f.output == "json" {
			return printValue(w, "json", res)
		}
		return printStats(w, res)
	}
	if !f.watch {
		res, err := fetch(ctx)
		if err != nil {
			return err
		}
		return print(res)
	}
	// A terminal redraws in place (isTerminal, demo.go); a pipe or a file
	// gets successive tables.
	return watch(ctx, w, isTerminal(w), f.interval, fetch, print)
}

// clearScreen moves to the top left and clears the screen (ANSI).
const clearScreen = "\x1b[H\x1b[2J"

// watch prints a result every interval until ctx ends (then returns nil):
// in a terminal each redraws the screen, otherwise they follow each other,
// a blank line apart, so a log or a pipe reads as plain text. A failed
// fetch is shown and retried, not fatal.
func watch(ctx context.Context, w io.Writer, tty bool, interval time.Duration, fetch func(context.Context) (stats.Result, error), print func(stats.Result) error) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for i := 0; ; i++ {
		res, err := fetch(ctx)
		if ctx.Err() != nil {
			return nil
		}
		switch {
		case tty:
			fmt.Fprint(w, clearScreen)
		case i > 0:
			fmt.Fprintln(w)
		}
		if err != nil {
			fmt.Fprintf(w, "%s  %v\n", time.Now().UTC().Format(time.TimeOnly), err)
		} else if err := print(res); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// printStats writes a result as a table in the stat table's style.
func printStats(w io.Writer, res stats.Result) error {
	var b strings.Builder
	from := res.From
	if res.Proxies > 0 {
		from = fmt.Sprintf("%d proxies via the %s", res.Proxies, res.From)
	}
	fmt.Fprintf(&b, "%s over %s ending %s UTC (%s)\n", title(res), res.Window, res.End.UTC().Format(time.TimeOnly), from)
	if len(res.Rows) == 0 {
		fmt.Fprintf(&b, "No traffic in this window.\n")
		_, err := io.WriteString(w, b.String())
		return err
	}
	cols := keyColumns(res.Kind)
	width := make([]int, len(cols))
	for i, c := range cols {
		width[i] = len(c.title)
		for _, r := range res.Rows {
			width[i] = max(width[i], len(c.value(r)))
		}
	}
	for i, c := range cols {
		fmt.Fprintf(&b, "%-*s  ", width[i], c.title)
	}
	if res.Kind == stats.KindPath {
		fmt.Fprintf(&b, "%9s  %8s  %8s  %9s\n", "REQUESTS", "RPS", "SUCCESS", "P99")
	} else {
		fmt.Fprintf(&b, "%9s  %8s  %8s  %9s  %9s  %9s\n", "REQUESTS", "RPS", "SUCCESS", "P50", "P95", "P99")
	}
	for _, r := range res.Rows {
		for i, c := range cols {
			fmt.Fprintf(&b, "%-*s  ", width[i], c.value(r))
		}
		success, rps := "-", "-"
		p50, p95, p99 := "-", "-", "-"
		if r.Requests > 0 {
			success = fmt.Sprintf("%.2f%%", 100*r.Success)
			rps = fmt.Sprintf("%.1f", r.RPS)
			p50, p95, p99 = latency(r.P50), latency(r.P95), latency(r.P99)
		}
		if res.Kind == stats.KindPath {
			fmt.Fprintf(&b, "%9d  %8s  %8s  %9s\n", r.Requests, rps, success, p99)
		} else {
			fmt.Fprintf(&b, "%9d  %8s  %8s  %9s  %9s  %9s\n", r.Requests, rps, success, p50, p95, p99)
		}
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("stat: write table: %w", err)
	}
	return nil
}

func latency(seconds float64) string {
	return telemetry.FormatLatency(time.Duration(seconds * float64(time.Second)))
}

// title names what a table shows.
func title(res stats.Result) string {
	switch res.Kind {
	case stats.KindRoute:
		return "Routes"
	case stats.KindEdge:
		return "Edges"
	case stats.KindPath:
		if len(res.Rows) > 0 {
			return "Busiest paths of " + res.Rows[0].Service
		}
		return "Busiest paths"
	}
	return "Services"
}

type column struct {
	title string
	value func(stats.Row) string
}

// keyColumns are the columns that name a row, by kind.
func keyColumns(kind string) []column {
	service := column{"SERVICE", func(r stats.Row) string { return r.Service }}
	switch kind {
	case stats.KindRoute:
		return []column{{"ROUTE", func(r stats.Row) string { return r.Route }}, {"BACKEND", func(r stats.Row) string { return r.Service }}}
	case stats.KindEdge:
		return []column{{"FROM", func(r stats.Row) string { return r.Source }}, {"TO", func(r stats.Row) string { return r.Service }}}
	case stats.KindPath:
		return []column{{"PATH", func(r stats.Row) string { return r.Path }}}
	}
	return []column{service}
}
