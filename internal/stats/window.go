package stats

import (
	"sync/atomic"
	"time"
)

// Windows are Width long and aligned to multiples of Width on the wall
// clock (Unix time), so windows of different proxies cover the same span
// and merge. A proxy keeps Keep of them closed.
const (
	Width = 10 * time.Second
	Keep  = 30 // 5 minutes
	// numSlots is the ring of a Cell: the kept windows, the open one and
	// the next one, prepared ahead (Roll) so requests never clear a slot.
	numSlots = Keep + 2
)

// windowOf is the index of the window holding t: Unix nanoseconds / Width.
func windowOf(t time.Time) int64 { return t.UnixNano() / int64(Width) }

// windowStart is the Unix time, in seconds, a window starts at.
func windowStart(w int64) int64 { return w * int64(Width/time.Second) }

// preparing marks a slot being cleared for a new window.
const preparing = -1

// slot is one window of a Cell's counters. Recording is lock-free: atomic
// adds into the open window's slot.
type slot struct {
	// window is the index of the window the slot holds, or preparing.
	window             atomic.Int64
	requests, failures atomic.Uint64
	buckets            [NumBuckets]atomic.Uint32
}

// prepare makes s hold window w, cleared, unless it already does. Of
// concurrent callers one clears; false means the slot is not w's yet (the
// caller drops what it meant to record rather than wait).
func (s *slot) prepare(w int64) bool {
	old := s.window.Load()
	if old == w {
		return true
	}
	if old > w || old == preparing || !s.window.CompareAndSwap(old, preparing) {
		return false
	}
	s.requests.Store(0)
	s.failures.Store(0)
	for i := range s.buckets {
		s.buckets[i].Store(0)
	}
	s.window.Store(w)
	return true
}

// Cell is the ring of windows of one series (one label set of the proxy's
// request metrics). Record allocates nothing and takes no lock.
type Cell struct {
	key   Key
	slots [numSlots]slot
	// dropped counts records lost to a slot being prepared (only when
	// Roll did not run ahead of a window).
	dropped *atomic.Uint64
}

// Key is what a Cell counts: the labels of a series of the request metrics
// that matter to the summaries. Services are "name.namespace".
type Key struct {
	// Inbound is the destination side (the called service's own proxy);
	// otherwise the caller's proxy.
	Inbound             bool
	Source, Destination string
	Route               string // "" or "-": none matched
}

// Record counts one finished request at now: its status and duration.
func (c *Cell) Record(now time.Time, status int, d time.Duration) {
	w := windowOf(now)
	s := &c.slots[w%numSlots]
	if s.window.Load() != w && !s.prepare(w) {
		c.dropped.Add(1)
		return
	}
	s.requests.Add(1)
	if status >= 500 && status <= 599 {
		s.failures.Add(1)
	}
	s.buckets[bucketOf(d)].Add(1)
}

// roll prepares the slot of window w (the next one) ahead of its requests.
func (c *Cell) roll(w int64) { c.slots[w%numSlots].prepare(w) }

// read adds window w's counts to a, if the cell holds that window.
func (c *Cell) read(w int64, a *agg) bool {
	s := &c.slots[w%numSlots]
	if s.window.Load() != w || s.requests.Load() == 0 {
		return false
	}
	a.requests += s.requests.Load()
	a.failures += s.failures.Load()
	for i := range s.buckets {
		a.sketch.Counts[i] += uint64(s.buckets[i].Load())
	}
	return true
}

// agg is a summary being built: one entry of a report, or a row.
type agg struct {
	requests, failures uint64
	sketch             Sketch
}
