package http1

import (
	"context"
	"sync"
)

// The transport must abort a round trip's blocked I/O the moment the
// request's context ends. context.AfterFunc does that at a price per call:
// two allocations, and a child registered in (and removed from) the
// parent's map under its lock, about 4% of a sidecar's CPU when every
// request pays it twice (the attempt's timeout linked to the client's
// context, the transport's watch on the attempt). A context that
// implements Watched is watched through a Watch its watcher owns and
// reuses instead: linked into the context's list and out again, nothing
// allocated. The server's connection context implements it, as do the
// proxy's pooled timeout contexts; any other context falls back to
// context.AfterFunc.

// Watched is a context that runs its watches when it ends.
type Watched interface {
	context.Context
	// Watch adds w, whose F runs once, on its own, when the context ends.
	// It reports false, adding nothing, if the context has ended.
	Watch(w *Watch) bool
	// Unwatch removes w. It reports false if w is not in the list: its F
	// has run, is running or will run, as context.AfterFunc's stop does.
	Unwatch(w *Watch) bool
}

// Watch is one watcher's entry in a WatchList; its owner keeps it and
// reuses it from one context to the next.
type Watch struct {
	F          func()
	prev, next *Watch
	in         *WatchList // the list w is in; nil: none
}

// WatchList implements Watch and Unwatch for a context that embeds it
// and calls End when it ends. The zero value is an empty list.
type WatchList struct {
	mu    sync.Mutex
	ended bool
	head  *Watch
	n     int
}

// Watch adds w; false if the list has ended.
func (l *WatchList) Watch(w *Watch) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ended {
		return false
	}
	w.prev, w.next, w.in = nil, l.head, l
	if l.head != nil {
		l.head.prev = w
	}
	l.head = w
	l.n++
	return true
}

// Unwatch removes w; false if it is not in l (End took it).
func (l *WatchList) Unwatch(w *Watch) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if w.in != l {
		return false
	}
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		l.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	}
	w.prev, w.next, w.in = nil, nil, nil
	l.n--
	return true
}

// End runs every watch's F, each on its own goroutine (as
// context.AfterFunc does, so that an F may take locks its context's
// canceller holds), and refuses watches from then on.
func (l *WatchList) End() {
	var buf [4]func()
	fs := buf[:0]
	l.mu.Lock()
	if l.ended {
		l.mu.Unlock()
		return
	}
	l.ended = true
	for w := l.head; w != nil; {
		next := w.next
		fs = append(fs, w.F)
		w.prev, w.next, w.in = nil, nil, nil
		w = next
	}
	l.head, l.n = nil, 0
	l.mu.Unlock()
	for _, f := range fs {
		go f()
	}
}

// Empty reports whether no watch is in the list: a pooled context may be
// reused only then (a watch left behind would fire on the next user's end).
func (l *WatchList) Empty() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n == 0
}

// Reset makes an ended, empty list usable again, for a pooled context
// that starts over.
func (l *WatchList) Reset() {
	l.mu.Lock()
	l.ended = false
	l.mu.Unlock()
}

// connCtx is a server connection's context: the cancelCtx its requests
// share, and the watches on it.
type connCtx struct {
	context.Context
	WatchList
}

// newConnCtx derives a connection's context from parent; its cancel, or
// parent's end, ends the watches too.
func newConnCtx(parent context.Context) (*connCtx, context.CancelFunc) {
	inner, cancel := context.WithCancel(parent)
	c := &connCtx{Context: inner}
	if parent.Done() != nil {
		context.AfterFunc(parent, c.End) // once per connection
	}
	return c, func() { cancel(); c.End() }
}

// ContextWatch is a watcher's hold on one context at a time: through its
// Watch when the context is Watched, else with context.AfterFunc. Either
// way it behaves as context.AfterFunc does: F runs on its own goroutine
// when the context ends (at once if it has), and End reports false when
// F ran or will. The owner sets F once and reuses the ContextWatch.
type ContextWatch struct {
	Watch
	watched Watched
	stop    func() bool
	missed  bool // the context had ended at Start
}

// Start watches ctx (a context that can never end: nothing to do).
func (cw *ContextWatch) Start(ctx context.Context) {
	cw.watched, cw.stop, cw.missed = nil, nil, false
	if wc, ok := ctx.(Watched); ok {
		if wc.Watch(&cw.Watch) {
			cw.watched = wc
		} else {
			cw.missed = true
			go cw.F()
		}
		return
	}
	if ctx.Done() != nil {
		cw.stop = context.AfterFunc(ctx, cw.F)
	}
}

// End ends the watch; false when F ran or will.
func (cw *ContextWatch) End() bool {
	ok := !cw.missed
	switch {
	case cw.watched != nil:
		ok = cw.watched.Unwatch(&cw.Watch)
	case cw.stop != nil:
		ok = cw.stop()
	}
	cw.watched, cw.stop, cw.missed = nil, nil, false
	return ok
}
