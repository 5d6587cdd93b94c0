package stats

import (
	"cmp"
	"hash/maphash"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// MaxPathServices bounds the services whose paths a proxy counts; calls to
// services beyond it are still counted, their paths not.
const MaxPathServices = 256

// Recorder holds a proxy's summaries: a Cell per series and a Paths per
// service called. Cells and Paths are made once per key (off the request
// path: the proxy caches them) and live as long as the Recorder.
type Recorder struct {
	seed    maphash.Seed
	dropped atomic.Uint64

	mu    sync.Mutex
	cells map[Key]*Cell
	paths map[string]*Paths
}

// NewRecorder returns an empty Recorder.
func NewRecorder() *Recorder {
	return &Recorder{seed: maphash.MakeSeed(), cells: map[Key]*Cell{}, paths: map[string]*Paths{}}
}

// Cell returns the cell of k, made on first use.
func (r *Recorder) Cell(k Key) *Cell {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.cells[k]
	if c == nil {
		c = &Cell{key: k, dropped: &r.dropped}
		r.cells[k] = c
	}
	return c
}

// Paths returns the path counters of a service ("name.namespace"), made on
// first use; nil past MaxPathServices.
func (r *Recorder) Paths(service string) *Paths {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.paths[service]
	if p == nil && len(r.paths) < MaxPathServices {
		p = &Paths{service: service, seed: r.seed}
		r.paths[service] = p
	}
	return p
}

// Dropped counts records lost because a window's slot was being prepared.
func (r *Recorder) Dropped() uint64 { return r.dropped.Load() }

func (r *Recorder) all() ([]*Cell, []*Paths) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cs := make([]*Cell, 0, len(r.cells))
	for _, c := range r.cells {
		cs = append(cs, c)
	}
	ps := make([]*Paths, 0, len(r.paths))
	for _, p := range r.paths {
		ps = append(ps, p)
	}
	return cs, ps
}

// Roll prepares every cell's next window, so requests at its start find
// their slot cleared. Call it more often than once a window.
func (r *Recorder) Roll(now time.Time) {
	cs, _ := r.all()
	next := windowOf(now) + 1
	for _, c := range cs {
		c.roll(next)
	}
}

// Windows returns the closed windows of the last Keep whose start (Unix
// seconds) is after `after`, oldest first, each with its entries; windows
// with no requests are left out.
func (r *Recorder) Windows(now time.Time, after int64) []*meshv1.StatsWindow {
	cs, ps := r.all()
	cur := windowOf(now)
	var out []*meshv1.StatsWindow
	for w := cur - Keep; w < cur; w++ {
		if windowStart(w) <= after {
			continue
		}
		var es []*meshv1.StatsEntry
		es = appendCells(es, cs, w)
		if w >= cur-PathWindows {
			es = appendPaths(es, ps, w)
		}
		if len(es) > 0 {
			out = append(out, &meshv1.StatsWindow{StartUnix: windowStart(w), WidthSeconds: uint32(Width / time.Second), Entries: es})
		}
	}
	return out
}

// entryKey is an entry of a report: cells are summed into entries by kind.
type entryKey struct {
	kind                         meshv1.StatsKind
	service, route, source, path string
}

// appendCells sums window w of the cells into entries: inbound cells into
// their service's, outbound ones into their route's (with the backend)
// and their edge's.
func appendCells(es []*meshv1.StatsEntry, cs []*Cell, w int64) []*meshv1.StatsEntry {
	by := map[entryKey]*agg{}
	add := func(k entryKey, a *agg) {
		t := by[k]
		if t == nil {
			t = &agg{}
			by[k] = t
		}
		t.requests += a.requests
		t.failures += a.failures
		t.sketch.Merge(&a.sketch)
	}
	var a agg
	for _, c := range cs {
		a = agg{}
		if !c.read(w, &a) {
			continue
		}
		k := c.key
		if k.Inbound {
			add(entryKey{kind: meshv1.StatsKind_STATS_SERVICE, service: k.Destination}, &a)
			continue
		}
		route := k.Route
		if route == "" {
			route = "-"
		}
		add(entryKey{kind: meshv1.StatsKind_STATS_ROUTE, service: k.Destination, route: route}, &a)
		add(entryKey{kind: meshv1.StatsKind_STATS_EDGE, service: k.Destination, source: k.Source}, &a)
	}
	return appendEntries(es, by)
}

func appendPaths(es []*meshv1.StatsEntry, ps []*Paths, w int64) []*meshv1.StatsEntry {
	by := map[entryKey]*agg{}
	for _, p := range ps {
		for _, pc := range p.read(w) {
			by[entryKey{kind: meshv1.StatsKind_STATS_PATH, service: p.service, path: pc.path}] = &pc.agg
		}
	}
	return appendEntries(es, by)
}

// appendEntries adds by's entries in a stable order (reports and tests
// read the same for the same counts).
func appendEntries(es []*meshv1.StatsEntry, by map[entryKey]*agg) []*meshv1.StatsEntry {
	keys := make([]entryKey, 0, len(by))
	for k := range by {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b entryKey) int {
		return cmp.Or(cmp.Compare(a.kind, b.kind), cmp.Compare(a.service, b.service), cmp.Compare(a.route, b.route),
			cmp.Compare(a.source, b.source), cmp.Compare(a.path, b.path))
	})
	for _, k := range keys {
		a := by[k]
		es = append(es, &meshv1.StatsEntry{
			Kind: k.kind, Service: k.service, Route: k.route, Source: k.source, Path: k.path,
			Requests: a.requests, Failures: a.failures, Latency: a.sketch.Proto(),
		})
	}
	return es
}
