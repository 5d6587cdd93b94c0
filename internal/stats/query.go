package stats

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// What a query asks for, the kinds of `trellis stat` and `trellis top`.
const (
	KindService = "service"
	KindRoute   = "route"
	KindEdge    = "edge"
	KindPath    = "path"
)

// ReportLag is how long after a window closes the control plane counts on
// having it from every live proxy: a report interval and some slack. A
// query ends at the last window boundary at least ReportLag ago, so every
// window it sums is complete.
const ReportLag = DefaultInterval + 2*time.Second

// MaxWindow bounds a query's window: what proxies keep.
const MaxWindow = Keep * Width

// Query selects rows.
type Query struct {
	Kind string
	// Service, Route and Source filter rows (empty: any). Service and
	// Source are "name.namespace"; Route matches a route label
	// "<ns>/<name>/rules[<i>]" by its name, "<ns>/<name>" or whole.
	Service, Route, Source string
	// Window is how far back from the query's end, a multiple of Width
	// from Width to MaxWindow.
	Window time.Duration
}

// Check refuses a query that asks for what no proxy keeps.
func (q Query) Check() error {
	switch q.Kind {
	case KindService, KindRoute, KindEdge, KindPath:
	default:
		return fmt.Errorf("kind: %q is not one of service, route, edge, path", q.Kind)
	}
	if q.Window < Width || q.Window > MaxWindow || q.Window%Width != 0 {
		return fmt.Errorf("window: %v is not a multiple of %v from %v to %v", q.Window, Width, Width, MaxWindow)
	}
	if q.Kind == KindPath && q.Window > PathWindows*Width {
		return fmt.Errorf("window: %v: paths are kept for %v", q.Window, PathWindows*Width)
	}
	return nil
}

// Row is one line of `trellis stat` or `trellis top`: traffic over the
// window, summed over the proxies that reported it (sketches merged).
type Row struct {
	Service string `json:"service"`
	Route   string `json:"route,omitempty"`
	Source  string `json:"source,omitempty"`
	Path    string `json:"path,omitempty"`
	// Requests and Failures (5xx) over the window.
	Requests uint64  `json:"requests"`
	Failures uint64  `json:"failures"`
	RPS      float64 `json:"rps"`
	// Success is the fraction of requests that were not 5xx (1 when none).
	Success float64 `json:"success"`
	// Latency quantiles, in seconds.
	P50 float64 `json:"p50"`
	P95 float64 `json:"p95"`
	P99 float64 `json:"p99"`
}

// Result is a query's answer.
type Result struct {
	Kind   string    `json:"kind"`
	Window string    `json:"window"`
	Start  time.Time `json:"start"`
	End    time.Time `json:"end"`
	// From is where the rows come from: "control plane", or the
	// Prometheus queried.
	From string `json:"from"`
	// Proxies is how many proxies' windows the control plane holds (0
	// from Prometheus).
	Proxies int   `json:"proxies"`
	Rows    []Row `json:"rows"`
}

// Query answers q at now from the held windows.
func (s *Store) Query(q Query, now time.Time) Result {
	end := windowOf(now.Add(-ReportLag))
	start := end - int64(q.Window/Width)
	byNode, nodes := s.windowsIn(windowStart(start), windowStart(end))
	rows := map[entryKey]*agg{}
	for _, ws := range byNode {
		for _, w := range ws {
			for _, e := range w.GetEntries() {
				k, ok := q.key(e)
				if !ok {
					continue
				}
				a := rows[k]
				if a == nil {
					a = &agg{}
					rows[k] = a
				}
				a.requests += e.GetRequests()
				a.failures += e.GetFailures()
				_ = a.sketch.MergeProto(e.GetLatency()) // checked on Put
			}
		}
	}
	res := Result{
		Kind: q.Kind, Window: q.Window.String(), From: "control plane", Proxies: nodes,
		Start: time.Unix(windowStart(start), 0).UTC(), End: time.Unix(windowStart(end), 0).UTC(),
		Rows: make([]Row, 0, len(rows)),
	}
	for k, a := range rows {
		res.Rows = append(res.Rows, a.row(k, q.Window))
	}
	SortRows(q.Kind, res.Rows)
	return res
}

// key is the row an entry sums into, if the query wants it.
func (q Query) key(e *meshv1.StatsEntry) (entryKey, bool) {
	want := kindOf(q.Kind)
	if e.GetKind() != want {
		return entryKey{}, false
	}
	if q.Service != "" && e.GetService() != q.Service {
		return entryKey{}, false
	}
	if q.Source != "" && e.GetSource() != q.Source {
		return entryKey{}, false
	}
	if q.Route != "" && !RouteMatches(e.GetRoute(), q.Route) {
		return entryKey{}, false
	}
	return entryKey{kind: want, service: e.GetService(), route: e.GetRoute(), source: e.GetSource(), path: e.GetPath()}, true
}

// RouteMatches reports whether a route label "<ns>/<name>/rules[<i>]" is
// the route asked for: by name, "<ns>/<name>" or the whole label.
func RouteMatches(label, want string) bool {
	if label == want {
		return true
	}
	ns, rest, ok := strings.Cut(label, "/")
	if !ok {
		return false
	}
	name, _, _ := strings.Cut(rest, "/")
	return want == name || want == ns+"/"+name
}

func (a *agg) row(k entryKey, window time.Duration) Row {
	r := Row{Service: k.service, Route: k.route, Source: k.source, Path: k.path, Requests: a.requests, Failures: a.failures, Success: 1}
	r.RPS = float64(a.requests) / window.Seconds()
	if a.requests > 0 {
		r.Success = float64(a.requests-a.failures) / float64(a.requests)
	}
	r.P50 = a.sketch.Quantile(0.50).Seconds()
	r.P95 = a.sketch.Quantile(0.95).Seconds()
	r.P99 = a.sketch.Quantile(0.99).Seconds()
	return r
}

// SortRows orders rows as the tables show them: paths busiest first,
// everything else by name.
func SortRows(kind string, rows []Row) {
	slices.SortFunc(rows, func(a, b Row) int {
		if kind == KindPath {
			if c := cmp.Compare(b.Requests, a.Requests); c != 0 {
				return c
			}
		}
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.Route, b.Route), cmp.Compare(a.Source, b.Source), cmp.Compare(a.Path, b.Path))
	})
}

func kindOf(kind string) meshv1.StatsKind {
	switch kind {
	case KindService:
		return meshv1.StatsKind_STATS_SERVICE
	case KindRoute:
		return meshv1.StatsKind_STATS_ROUTE
	case KindEdge:
		return meshv1.StatsKind_STATS_EDGE
	case KindPath:
		return meshv1.StatsKind_STATS_PATH
	}
	return meshv1.StatsKind_STATS_KIND_UNSPECIFIED
}
