package tap

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// Bounds of a proxy's taps.
const (
	// MaxTaps is how many taps one proxy runs at once; a start beyond it
	// is refused (the hub bounds sessions per service the same way).
	MaxTaps = 8
	// QueueSize is the proxy's event queue: events wait here for the next
	// flush (every 100 ms); over it they are dropped and counted skipped.
	QueueSize = 1024
)

// Metrics is what a proxy's taps record: how many run, and the events
// sent and skipped (over the rate, or the queue full).
type Metrics interface {
	Running(n int)
	Sent()
	Skipped()
}

type nopMetrics struct{}

func (nopMetrics) Running(int) {}
func (nopMetrics) Sent()       {}
func (nopMetrics) Skipped()    {}

// Tap is one running tap on a proxy.
type Tap struct {
	id      string
	filter  Filter
	sampler *Sampler
	m       Metrics
}

// ID is the tap's id, as the control plane chose it.
func (t *Tap) ID() string { return t.id }

// MatchRequest reports whether the tap wants a request of this method and
// path, before its destination is known.
func (t *Tap) MatchRequest(method, path string) bool { return t.filter.MatchRequest(method, path) }

// Want reports whether the finished request passes the whole filter and
// the rate bound (a refused one is counted as skipped).
func (t *Tap) Want(method, path, dest string, now int64) bool {
	if !t.filter.MatchRequest(method, path) || !t.filter.MatchTo(dest) {
		return false
	}
	if !t.sampler.Admit(now) {
		t.m.Skipped()
		return false
	}
	return true
}

// Set is the taps running at one moment; immutable.
type Set struct{ taps []*Tap }

// Taps lists them.
func (s *Set) Taps() []*Tap { return s.taps }

// MatchRequest reports whether any tap wants a request of this method and
// path.
func (s *Set) MatchRequest(method, path string) bool {
	for _, t := range s.taps {
		if t.MatchRequest(method, path) {
			return true
		}
	}
	return false
}

// Taps is a proxy's running taps and its queue of events. The request
// path reads it with one atomic load (Load), nil while nothing is tapped.
type Taps struct {
	cur    atomic.Pointer[Set]
	mu     sync.Mutex // serializes changes to cur
	events chan *meshv1.TapEvent
	m      Metrics
}

// NewTaps returns an idle set recording into m (nil: nothing).
func NewTaps(m Metrics) *Taps {
	if m == nil {
		m = nopMetrics{}
	}
	return &Taps{events: make(chan *meshv1.TapEvent, QueueSize), m: m}
}

// Load is the running taps, nil when none: the request path's one load.
func (ts *Taps) Load() *Set { return ts.cur.Load() }

// Apply starts or stops the tap a request names. A start of a running id
// replaces its filter and rate.
func (ts *Taps) Apply(r *meshv1.TapRequest) error {
	if r.GetTapId() == "" {
		return fmt.Errorf("%w: tap_id: required", ErrInvalid)
	}
	var add *Tap
	if !r.GetStop() {
		f, err := FilterOf(r)
		if err != nil {
			return err
		}
		rps := r.GetMaxRps()
		if rps == 0 {
			rps = DefaultMaxRPS
		}
		if rps > MaxMaxRPS {
			return fmt.Errorf("%w: max_rps %d is over %d", ErrInvalid, rps, MaxMaxRPS)
		}
		add = &Tap{id: r.GetTapId(), filter: f, sampler: NewSampler(rps), m: ts.m}
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	var list []*Tap
	if s := ts.cur.Load(); s != nil {
		list = slices.DeleteFunc(slices.Clone(s.taps), func(t *Tap) bool { return t.id == r.GetTapId() })
	}
	if add != nil {
		if len(list) >= MaxTaps {
			return fmt.Errorf("%w: this proxy already runs %d taps", ErrInvalid, MaxTaps)
		}
		list = append(list, add)
	}
	ts.storeLocked(list)
	return nil
}

// Clear stops every tap (the stream to the control plane ended) and
// forgets the events still queued.
func (ts *Taps) Clear() {
	ts.mu.Lock()
	ts.storeLocked(nil)
	ts.mu.Unlock()
	for {
		select {
		case <-ts.events:
		default:
			return
		}
	}
}

func (ts *Taps) storeLocked(list []*Tap) {
	if len(list) == 0 {
		ts.cur.Store(nil)
	} else {
		ts.cur.Store(&Set{taps: list})
	}
	ts.m.Running(len(list))
}

// Emit queues t's event without waiting; a full queue drops it, counted
// as skipped.
func (ts *Taps) Emit(t *Tap, ev *meshv1.TapEvent) {
	ev.TapId = t.id
	select {
	case ts.events <- ev:
		ts.m.Sent()
	default:
		t.sampler.Skip()
		ts.m.Skipped()
	}
}

// Take returns the queued events (at most max) and the skip counts of
// the running taps since the last call: one message's worth.
func (ts *Taps) Take(max int) *meshv1.TapEvents {
	m := &meshv1.TapEvents{}
	for len(m.Events) < max {
		select {
		case ev := <-ts.events:
			m.Events = append(m.Events, ev)
			continue
		default:
		}
		break
	}
	if s := ts.cur.Load(); s != nil {
		for _, t := range s.taps {
			if n := t.sampler.TakeSkipped(); n > 0 {
				m.Skipped = append(m.Skipped, &meshv1.TapSkipped{TapId: t.id, Count: n})
			}
		}
	}
	return m
}

// idle reports whether there is nothing to send: no tap, no queued event.
func (ts *Taps) idle() bool { return ts.cur.Load() == nil && len(ts.events) == 0 }
