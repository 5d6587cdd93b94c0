package cli

import (
	"context"
	"fmt"
	"math"
	"net/url"
	"strings"
	"time"

	"github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"

	"trellis.dev/trellis/internal/meshname"
	"trellis.dev/trellis/internal/stats"
	"trellis.dev/trellis/internal/telemetry"
)

// promQuerier is what `trellis stat --prometheus` needs of a Prometheus.
type promQuerier interface {
	Query(ctx context.Context, query string, ts time.Time, opts ...promv1.Option) (model.Value, promv1.Warnings, promv1.Infos, error)
}

// newPromSource answers stat's queries with PromQL against a Prometheus
// scraping the proxies.
func newPromSource(addr string) (fetcher, error) {
	u, err := url.Parse(addr)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("stat: --prometheus %q: want http://host:port", addr)
	}
	c, err := api.NewClient(api.Config{Address: addr})
	if err != nil {
		return nil, fmt.Errorf("stat: --prometheus: %w", err)
	}
	p := promv1.NewAPI(c)
	return func(ctx context.Context, q stats.Query) (stats.Result, error) {
		res, err := promStats(ctx, p, q, time.Now())
		res.From = "Prometheus " + addr
		return res, err
	}, nil
}

// promShape is how a kind reads in PromQL: the reporter that counts it
// and the labels that make a row.
func promShape(kind string) (reporter string, by []string) {
	switch kind {
	case stats.KindRoute:
		return telemetry.ReporterSource, []string{"route", "destination_service", "destination_namespace"}
	case stats.KindEdge:
		return telemetry.ReporterSource, []string{"source_service", "source_namespace", "destination_service", "destination_namespace"}
	}
	return telemetry.ReporterDestination, []string{"destination_service", "destination_namespace"}
}

// promSelector is the label matchers of q.
func promSelector(q stats.Query, reporter string) (string, error) {
	m := []string{`reporter="` + reporter + `"`}
	for _, f := range []struct{ label, service string }{{"destination", q.Service}, {"source", q.Source}} {
		if f.service == "" {
			continue
		}
		name, ns, ok := meshname.ParseHost(f.service, "default", "trellis.local")
		if !ok {
			return "", fmt.Errorf("stat: %q is not a service name", f.service)
		}
		m = append(m, f.label+`_service="`+name+`"`, f.label+`_namespace="`+ns+`"`)
	}
	if q.Route != "" {
		// The label is "<ns>/<name>/rules[<i>]"; a name matches its rules.
		m = append(m, `route=~"`+promRouteRegexp(q.Route)+`"`)
	}
	return strings.Join(m, ","), nil
}

// promRouteRegexp matches the route labels stats.RouteMatches accepts.
func promRouteRegexp(want string) string {
	quoted := strings.NewReplacer(`\`, `\\\\`, `.`, `\\.`, `[`, `\\[`, `]`, `\\]`, `"`, `\"`, `(`, `\\(`, `)`, `\\)`, `*`, `\\*`, `+`, `\\+`, `?`, `\\?`, `|`, `\\|`, `{`, `\\{`, `}`, `\\}`, `^`, `\\^`, `$`, `\\$`).Replace(want)
	if strings.Count(want, "/") >= 2 {
		return quoted
	}
	if strings.Contains(want, "/") {
		return quoted + `/.*`
	}
	return `[^/]+/` + quoted + `/.*`
}

// promStats runs the queries of q at ts and builds the rows.
func promStats(ctx context.Context, p promQuerier, q stats.Query, ts time.Time) (stats.Result, error) {
	if q.Kind == stats.KindPath {
		return stats.Result{}, fmt.Errorf("stat: Prometheus has no path label: use the control plane (trellis top)")
	}
	reporter, by := promShape(q.Kind)
	sel, err := promSelector(q, reporter)
	if err != nil {
		return stats.Result{}, err
	}
	w := model.Duration(q.Window).String()
	group := strings.Join(by, ", ")
	queries := map[string]string{
		"requests": fmt.Sprintf(`sum by (%s) (increase(%s{%s}[%s]))`, group, telemetry.RequestsTotalName, sel, w),
		"failures": fmt.Sprintf(`sum by (%s) (increase(%s{%s,response_code=~"5.."}[%s]))`, group, telemetry.RequestsTotalName, sel, w),
		"rps":      fmt.Sprintf(`sum by (%s) (rate(%s{%s}[%s]))`, group, telemetry.RequestsTotalName, sel, w),
	}
	for _, qq := range []struct {
		name string
		q    float64
	}{{"p50", 0.5}, {"p95", 0.95}, {"p99", 0.99}} {
		queries[qq.name] = fmt.Sprintf(`histogram_quantile(%g, sum by (%s, le) (rate(%s_bucket{%s}[%s])))`, qq.q, group, telemetry.RequestDurationName, sel, w)
	}
	rows := map[string]*stats.Row{}
	for name, query := range queries {
		v, _, _, err := p.Query(ctx, query, ts)
		if err != nil {
			return stats.Result{}, fmt.Errorf("stat: prometheus: %s: %w", query, err)
		}
		vec, ok := v.(model.Vector)
		if !ok {
			return stats.Result{}, fmt.Errorf("stat: prometheus: %s: a %s, want a vector", query, v.Type())
		}
		for _, s := range vec {
			r := promRow(rows, q.Kind, s.Metric)
			f := float64(s.Value)
			if math.IsNaN(f) || math.IsInf(f, 0) {
				f = 0
			}
			switch name {
			case "requests":
				r.Requests = uint64(math.Round(f))
			case "failures":
				r.Failures = uint64(math.Round(f))
			case "rps":
				r.RPS = f
			case "p50":
				r.P50 = f
			case "p95":
				r.P95 = f
			case "p99":
				r.P99 = f
			}
		}
	}
	res := stats.Result{Kind: q.Kind, Window: q.Window.String(), Start: ts.Add(-q.Window).UTC(), End: ts.UTC(), Rows: []stats.Row{}}
	for _, r := range rows {
		r.Success = 1
		if r.Requests > 0 {
			r.Success = 1 - float64(min(r.Failures, r.Requests))/float64(r.Requests)
		}
		res.Rows = append(res.Rows, *r)
	}
	stats.SortRows(q.Kind, res.Rows)
	return res, nil
}

// promRow is the row of a series' labels, made on first sight.
func promRow(rows map[string]*stats.Row, kind string, m model.Metric) *stats.Row {
	svc := func(side string) string {
		return string(m[model.LabelName(side+"_service")]) + "." + string(m[model.LabelName(side+"_namespace")])
	}
	r := stats.Row{Service: svc("destination")}
	switch kind {
	case stats.KindRoute:
		r.Route = string(m["route"])
	case stats.KindEdge:
		r.Source = svc("source")
	}
	key := r.Service + "\x00" + r.Route + "\x00" + r.Source
	if rows[key] == nil {
		rows[key] = &r
	}
	return rows[key]
}
