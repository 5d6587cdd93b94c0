package stats

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"
)

// Paths bounds: a service's busiest paths are counted with the
// space-saving algorithm (Metwally et al.) in TopK counters per window,
// paths up to MaxPathLen bytes (longer ones are cut there), over the last
// pathSlots−2 windows (a minute; `trellis top` looks at the present).
const (
	TopK       = 16
	MaxPathLen = 128
	pathSlots  = 8
	// PathWindows is how many closed windows of paths a proxy keeps.
	PathWindows = pathSlots - 2
)

// Paths counts one service's busiest paths. Record takes the window's
// lock only if it is free (TryLock): under contention the request is
// counted as skipped instead, and a window's path counts are scaled by
// (recorded + skipped) / recorded when read, so no request waits on
// another and the counts stay unbiased estimates.
type Paths struct {
	service string
	seed    maphash.Seed
	slots   [pathSlots]pathSlot
}

type pathSlot struct {
	skipped atomic.Uint64
	mu      sync.Mutex
	window  int64
	n       int    // counters in use
	total   uint64 // requests recorded in the window
	e       [TopK]pathEntry
}

// pathEntry is one space-saving counter. count includes over, the count
// inherited from the path it replaced (the algorithm's overestimate);
// failures and the sketch are this path's own.
type pathEntry struct {
	hash        uint64
	plen        int
	path        [MaxPathLen]byte
	count, over uint64
	failures    uint64
	lat         [NumBuckets]uint32
}

func (e *pathEntry) is(h uint64, path string) bool {
	return e.hash == h && string(e.path[:e.plen]) == path
}

// Record counts one request to path at now.
func (p *Paths) Record(now time.Time, path string, status int, d time.Duration) {
	if len(path) > MaxPathLen {
		path = path[:MaxPathLen]
	}
	w := windowOf(now)
	s := &p.slots[w%pathSlots]
	if !s.mu.TryLock() {
		s.skipped.Add(1)
		return
	}
	defer s.mu.Unlock()
	if s.window != w {
		if s.window > w {
			return // a straggler from a window long gone
		}
		s.reset(w)
	}
	e := s.find(maphash.String(p.seed, path), path)
	e.count++
	s.total++
	if status >= 500 && status <= 599 {
		e.failures++
	}
	e.lat[bucketOf(d)]++
}

func (s *pathSlot) reset(w int64) {
	s.window, s.n, s.total = w, 0, 0
	s.skipped.Store(0)
}

// find returns path's counter: its own, a free one, or the one with the
// smallest count, taken over (space-saving).
func (s *pathSlot) find(h uint64, path string) *pathEntry {
	for i := range s.n {
		if s.e[i].is(h, path) {
			return &s.e[i]
		}
	}
	var e *pathEntry
	if s.n < TopK {
		e = &s.e[s.n]
		s.n++
		e.count, e.over = 0, 0
	} else {
		e = &s.e[0]
		for i := 1; i < TopK; i++ {
			if s.e[i].count < e.count {
				e = &s.e[i]
			}
		}
		e.over = e.count
	}
	e.hash, e.plen = h, copy(e.path[:], path)
	e.failures = 0
	clear(e.lat[:])
	return e
}

// pathCount is one path of a closed window, scaled for skipped requests.
type pathCount struct {
	path string
	agg
}

// read returns window w's paths, or nil if the window is not held.
func (p *Paths) read(w int64) []pathCount {
	s := &p.slots[w%pathSlots]
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.window != w || s.total == 0 {
		return nil
	}
	scale := float64(s.total+s.skipped.Load()) / float64(s.total)
	out := make([]pathCount, 0, s.n)
	for i := range s.n {
		e := &s.e[i]
		own := e.count - e.over
		if own == 0 {
			continue
		}
		pc := pathCount{path: string(e.path[:e.plen])}
		pc.requests = uint64(float64(own)*scale + 0.5)
		pc.failures = uint64(float64(e.failures)*scale + 0.5)
		for j, n := range e.lat {
			pc.sketch.Counts[j] = uint64(float64(n)*scale + 0.5)
		}
		out = append(out, pc)
	}
	return out
}
