package stats

import (
	"errors"
	"fmt"
	"sync"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// Bounds of what the control plane accepts from one proxy.
const (
	// MaxEntries bounds the entries of one window.
	MaxEntries = 4096
	// MaxWindows bounds the windows of one report.
	MaxWindows = Keep
	// maxName bounds a service, route or source name; paths are
	// MaxPathLen.
	maxName = 512
)

// CheckReport checks a report of a proxy of service own ("name.namespace")
// whole before any of it is kept; the error names the field and why. A
// proxy speaks only for itself: its service entries are its own service's
// and its edges start at it.
func CheckReport(r *meshv1.StatsReport, own string) error {
	if n := len(r.GetWindows()); n > MaxWindows {
		return fmt.Errorf("stats: windows: %d, at most %d", n, MaxWindows)
	}
	for i, w := range r.GetWindows() {
		if err := checkWindow(w, own); err != nil {
			return fmt.Errorf("stats: windows[%d].%w", i, err)
		}
	}
	return nil
}

func checkWindow(w *meshv1.StatsWindow, own string) error {
	width := int64(Width / time.Second)
	if int64(w.GetWidthSeconds()) != width {
		return fmt.Errorf("width_seconds: %d, want %d", w.GetWidthSeconds(), width)
	}
	if w.GetStartUnix() <= 0 || w.GetStartUnix()%width != 0 {
		return fmt.Errorf("start_unix: %d is not a positive multiple of %d", w.GetStartUnix(), width)
	}
	if n := len(w.GetEntries()); n > MaxEntries {
		return fmt.Errorf("entries: %d, at most %d", n, MaxEntries)
	}
	for j, e := range w.GetEntries() {
		if err := checkEntry(e, own); err != nil {
			return fmt.Errorf("entries[%d].%w", j, err)
		}
	}
	return nil
}

func checkEntry(e *meshv1.StatsEntry, own string) error {
	switch e.GetKind() {
	case meshv1.StatsKind_STATS_SERVICE, meshv1.StatsKind_STATS_ROUTE, meshv1.StatsKind_STATS_EDGE, meshv1.StatsKind_STATS_PATH:
	default:
		return fmt.Errorf("kind: %v is not a stats kind", e.GetKind())
	}
	for _, f := range []struct {
		name, v string
		max     int
	}{{"service", e.GetService(), maxName}, {"route", e.GetRoute(), maxName}, {"source", e.GetSource(), maxName}, {"path", e.GetPath(), MaxPathLen}} {
		if len(f.v) > f.max {
			return fmt.Errorf("%s: %d bytes, at most %d", f.name, len(f.v), f.max)
		}
	}
	if e.GetService() == "" {
		return errors.New("service: required")
	}
	if e.GetKind() == meshv1.StatsKind_STATS_SERVICE && e.GetService() != own {
		return fmt.Errorf("service: %q is not this proxy's service %s", e.GetService(), own)
	}
	if e.GetKind() == meshv1.StatsKind_STATS_EDGE && e.GetSource() != own {
		return fmt.Errorf("source: %q is not this proxy's service %s", e.GetSource(), own)
	}
	if e.GetFailures() > e.GetRequests() {
		return fmt.Errorf("failures: %d of %d requests", e.GetFailures(), e.GetRequests())
	}
	var s Sketch
	if err := s.MergeProto(e.GetLatency()); err != nil {
		return fmt.Errorf("latency.%w", err)
	}
	return nil
}

// Store is the control plane's memory of proxies' reports: each proxy's
// windows of the last Keep, replaced when sent again, and forgotten with
// the proxy once its lease would have lapsed without a report.
type Store struct {
	now func() time.Time

	mu    sync.Mutex
	nodes map[string]*nodeWindows
}

type nodeWindows struct {
	expires time.Time
	windows map[int64]*meshv1.StatsWindow // by start
}

// NewStore returns an empty store; now is its clock (nil: time.Now).
func NewStore(now func() time.Time) *Store {
	if now == nil {
		now = time.Now
	}
	return &Store{now: now, nodes: map[string]*nodeWindows{}}
}

// Put checks a report of node, a proxy of service own ("name.namespace")
// whose lease lasts ttl, and keeps it whole or not at all; it returns the
// newest window start held for the node (0: none).
func (s *Store) Put(node, own string, ttl time.Duration, r *meshv1.StatsReport) (int64, error) {
	if err := CheckReport(r, own); err != nil {
		return 0, err
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked(now)
	n := s.nodes[node]
	if n == nil {
		n = &nodeWindows{windows: map[int64]*meshv1.StatsWindow{}}
		s.nodes[node] = n
	}
	n.expires = now.Add(ttl)
	oldest := windowStart(windowOf(now) - Keep)
	for _, w := range r.GetWindows() {
		if w.GetStartUnix() >= oldest {
			n.windows[w.GetStartUnix()] = w
		}
	}
	var through int64
	for start := range n.windows {
		if start < oldest {
			delete(n.windows, start)
			continue
		}
		through = max(through, start)
	}
	return through, nil
}

func (s *Store) expireLocked(now time.Time) {
	for id, n := range s.nodes {
		if now.After(n.expires) {
			delete(s.nodes, id)
		}
	}
}

// Nodes is the number of proxies whose windows are held.
func (s *Store) Nodes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked(s.now())
	return len(s.nodes)
}

// windowsIn returns every held window starting in [from, to), by node.
func (s *Store) windowsIn(from, to int64) (map[string][]*meshv1.StatsWindow, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked(s.now())
	out := map[string][]*meshv1.StatsWindow{}
	for id, n := range s.nodes {
		for start, w := range n.windows {
			if start >= from && start < to {
				out[id] = append(out[id], w)
			}
		}
	}
	return out, len(s.nodes)
}
