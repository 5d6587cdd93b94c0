package proxy

import (
	"sync"
	"sync/atomic"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/stats"
	"trellis.dev/trellis/internal/telemetry"
)

// proxyStats feeds the windowed summaries the proxy reports to the control
// plane (internal/stats) from the telemetry filter's count of each
// exchange. The series an exchange is counted under (precomputed per
// route, backend and caller) maps to its stats cell through a
// copy-on-write map read with one atomic load, so recording takes no lock
// and allocates nothing once a series has been seen.
type proxyStats struct {
	rec   *stats.Recorder
	mu    sync.Mutex // serializes the copy-on-write additions
	cells atomic.Pointer[map[*telemetry.Series]*stats.Cell]
	paths atomic.Pointer[map[string]*stats.Paths] // by service key
}

func newProxyStats() *proxyStats {
	ps := &proxyStats{rec: stats.NewRecorder()}
	cells, paths := map[*telemetry.Series]*stats.Cell{}, map[string]*stats.Paths{}
	ps.cells.Store(&cells)
	ps.paths.Store(&paths)
	return ps
}

// Stats is the recorder of the proxy's windowed summaries, for the
// sidecar to report (stats.Report).
func (p *Proxy) Stats() *stats.Recorder { return p.stats.rec }

// recordStats counts the finished exchange ex, counted under series s,
// with status at end. Outbound, the path goes to the busiest-paths
// counters of the service the caller addressed.
func (ex *Exchange) recordStats(s *telemetry.Series, status int, end time.Time) {
	ps := ex.stats
	if ps == nil || s == nil {
		return
	}
	d := end.Sub(ex.Start)
	ps.cell(s).Record(end, status, d)
	if ex.sources != nil || ex.Service == nil {
		return // inbound (by caller), or no service resolved
	}
	if p := ps.pathsOf(ex.Service.key); p != nil {
		p.Record(end, ex.statsPath(), status, d)
	}
}

// statsPath is the path `trellis top` shows: the path as sent, or, when a
// regular expression matched it, the expression, so a family of paths
// (ids in them) is one row.
func (ex *Exchange) statsPath() string {
	if m := ex.matched; m != nil && m.hasPath && m.pathType == meshv1.PathMatch_REGEX {
		return m.path
	}
	return ex.Path
}

func (ps *proxyStats) cell(s *telemetry.Series) *stats.Cell {
	if c := (*ps.cells.Load())[s]; c != nil {
		return c
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	old := *ps.cells.Load()
	if c := old[s]; c != nil {
		return c
	}
	c := ps.rec.Cell(statsKey(s.Labels()))
	m := make(map[*telemetry.Series]*stats.Cell, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	m[s] = c
	ps.cells.Store(&m)
	return c
}

// pathsOf is the path counters of a service, nil past the recorder's bound.
func (ps *proxyStats) pathsOf(service string) *stats.Paths {
	if p, ok := (*ps.paths.Load())[service]; ok {
		return p
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	old := *ps.paths.Load()
	if p, ok := old[service]; ok {
		return p
	}
	// nil past the bound, remembered as such: services come from
	// snapshots, so the map stays as bounded as the mesh.
	p := ps.rec.Paths(service)
	m := make(map[string]*stats.Paths, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	m[service] = p
	ps.paths.Store(&m)
	return p
}

// statsKey is the part of a series' labels the summaries keep.
func statsKey(l telemetry.SeriesLabels) stats.Key {
	return stats.Key{
		Inbound:     l.Reporter == telemetry.ReporterDestination,
		Source:      peerKey(l.Source),
		Destination: peerKey(l.Destination),
		Route:       l.Route,
	}
}

// peerKey is "name.namespace", or "unknown" for a side not known.
func peerKey(p telemetry.Peer) string {
	if p.Service == "" || p.Service == telemetry.Unknown {
		return telemetry.Unknown
	}
	return p.Service + "." + p.Namespace
}
