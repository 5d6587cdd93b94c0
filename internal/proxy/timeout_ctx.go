package proxy

import (
	"context"
	"sync"
	"time"

	"trellis.dev/trellis/internal/http1"
)

// A route timeout used to cost context.WithCancel per request: a cancelCtx,
// its cancel closure and, under net/http's cancelable request context, the
// parent's children map and Done channel — 5 allocations (2 under a
// background one). timeoutCtx is the pooled replacement: two live in each
// pooled exchange (the request timeout, and an attempt timeout nested in
// it), reused from one exchange to the next while nothing can still hold
// them, carrying their deadline.
//
// Waiters and child contexts live on a cancelCtx of the context package
// rooted at Background (inner), made at the first Done and kept across
// reuses until the timeoutCtx is canceled. A child a transport derives
// (net/http's does, per request) then finds a *cancelCtx parent, as it
// would under context.WithTimeout, and joins its children map — no closure
// per child, no Done channel per request: the map and the channel are made
// once per inner and reused. The link to a cancelable parent that someone
// waits on, and the transport's own watch, go through http1.Watched when
// the parent is the HTTP/1.1 server's connection context: a Watch in a
// list, no allocation; another parent costs a context.AfterFunc (2
// allocations).
//
// Reuse is safe because of net/http's contract, as for the exchange's
// outgoing request (lendOut): a transport may use a request (and so its
// context) until the response body is closed, which the writer does before
// release, and it cancels the child contexts it derived when it is done
// with them — unless the attempt failed without a response (taint): then
// the context is canceled and dropped, not reused. A child a transport has
// not yet canceled when its exchange ends (net/http cancels from its read
// loop, just after the body's close) stays in inner's map until the
// transport cancels it or inner ends.

// timeoutCtx is a context canceled when its deadline's timer fires, when
// its parent is done, or when its timeout parent (a timeoutCtx) is.
type timeoutCtx struct {
	parent   context.Context
	deadline time.Time
	// up is the timeoutCtx parent it is linked into (nil: parent is
	// another context, linked by link); down the timeout nested in this
	// one right now.
	up, down *timeoutCtx
	// link runs onParent when parent ends: a Watch in its list when it is
	// http1.Watched, else a context.AfterFunc. Guarded by mu.
	link http1.ContextWatch
	// linked: the link to parent is made (lazily: see start).
	linked bool
	// watches are the transports' watches on tc (http1.Watched): each
	// transport aborts its round trip when tc ends.
	watches http1.WatchList

	mu  sync.Mutex
	err error
	// inner carries Done and the children (see above); nil until the
	// first Done, and again after a cancel.
	inner       context.Context
	cancelInner context.CancelCauseFunc
	// tainted: an attempt failed without a response; the transport may
	// still hold the context.
	tainted bool

	// Made once per object, so arming allocates nothing.
	onParent, onTimer func()
}

func newTimeoutCtx() *timeoutCtx {
	tc := &timeoutCtx{}
	tc.onParent = func() { tc.cancel(tc.parentCtx().Err()) }
	tc.link.F = tc.onParent
	tc.onTimer = func() {
		// A timer run that lost its race with disarm may come after the
		// context was reused: its deadline is then still ahead.
		tc.mu.Lock()
		early := time.Now().Before(tc.deadline)
		tc.mu.Unlock()
		if !early {
			tc.cancel(context.DeadlineExceeded)
		}
	}
	return tc
}

// start makes tc a child of parent with deadline d. A parent that is a
// timeoutCtx links tc to itself at once. Another parent is linked (link:
// no allocation under the HTTP/1.1 server's connection context, a
// context.AfterFunc under another cancelable parent) when someone first
// waits on tc — Done, Watch, or a child context's registration (net/http's
// transport derives one per request) — since
// only a waiter needs to hear of the parent's end at once; Err asks the
// parent meanwhile.
func (tc *timeoutCtx) start(parent context.Context, deadline time.Time) {
	tc.mu.Lock()
	tc.parent, tc.deadline, tc.linked, tc.down, tc.tainted = parent, deadline, false, nil, false
	if tc.err != nil {
		// Ended with its last exchange: a fresh start, and a fresh inner
		// when someone waits (the last one is canceled).
		tc.err, tc.inner, tc.cancelInner = nil, nil, nil
		tc.watches.Reset()
	}
	if d, ok := parent.Deadline(); ok && d.Before(deadline) {
		tc.deadline = d
	}
	tc.mu.Unlock()
	if up, ok := parent.(*timeoutCtx); ok {
		up.mu.Lock()
		err := up.err
		if err == nil {
			up.down, tc.up = tc, up
		}
		up.mu.Unlock()
		if err != nil {
			tc.cancel(err)
		}
	}
}

// ensureLinked links tc to its parent's cancellation, once (see start).
func (tc *timeoutCtx) ensureLinked() {
	if up := tc.up; up != nil {
		up.ensureLinked()
		return
	}
	tc.mu.Lock()
	if tc.linked || tc.err != nil {
		tc.mu.Unlock()
		return
	}
	tc.linked = true
	// onParent runs on its own goroutine (at once if parent is done), so
	// it may wait for mu.
	tc.link.Start(tc.parent)
	tc.mu.Unlock()
}

func (tc *timeoutCtx) Deadline() (time.Time, bool) { return tc.deadline, true }

// Watch adds a transport's watch (http1.Watched); false when tc has
// ended.
func (tc *timeoutCtx) Watch(w *http1.Watch) bool {
	tc.ensureLinked()
	return tc.watches.Watch(w)
}

// Unwatch removes a transport's watch; false when tc's end took it.
func (tc *timeoutCtx) Unwatch(w *http1.Watch) bool { return tc.watches.Unwatch(w) }

func (tc *timeoutCtx) Done() <-chan struct{} {
	tc.ensureLinked()
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if tc.inner == nil {
		tc.inner, tc.cancelInner = context.WithCancelCause(context.Background())
		if tc.err != nil {
			tc.cancelInner(tc.err)
		}
	}
	return tc.inner.Done()
}

func (tc *timeoutCtx) Err() error {
	tc.mu.Lock()
	err, linked, parent := tc.err, tc.linked || tc.up != nil, tc.parent
	tc.mu.Unlock()
	if err == nil && !linked && parent != nil {
		if perr := parent.Err(); perr != nil {
			tc.cancel(perr)
			return perr
		}
	}
	return err
}

// Value answers the context package's own lookup of a parent cancelCtx
// with inner (inner's parent is Background, which holds no values, so
// inner answers nothing else), and every other key from the parent.
func (tc *timeoutCtx) Value(key any) any {
	tc.mu.Lock()
	inner, parent := tc.inner, tc.parent
	tc.mu.Unlock()
	if inner != nil {
		if v := inner.Value(key); v != nil {
			return v
		}
	}
	if parent != nil {
		return parent.Value(key)
	}
	return nil
}

func (tc *timeoutCtx) parentCtx() context.Context {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return tc.parent
}

// cancel ends tc (once) with err, its waiters and children, and the
// timeout nested in it.
func (tc *timeoutCtx) cancel(err error) {
	tc.mu.Lock()
	if tc.err != nil {
		tc.mu.Unlock()
		return
	}
	tc.err = err
	cancelInner := tc.cancelInner
	down := tc.down
	tc.mu.Unlock()
	tc.watches.End()
	if cancelInner != nil {
		cancelInner(err)
	}
	if down != nil {
		down.cancel(err)
	}
}

// finish detaches tc at the end of its exchange and reports whether it
// may be reused: not canceled and not tainted. One that may not is
// canceled, so whoever still holds it sees it end with its exchange; one
// that may keeps inner, its Done channel open, for the next exchange.
func (tc *timeoutCtx) finish() bool {
	tc.mu.Lock()
	// false: the parent's cancellation is running; it will cancel tc.
	linked := tc.link.End()
	tc.mu.Unlock()
	if up := tc.up; up != nil {
		up.mu.Lock()
		if up.down == tc {
			up.down = nil
		}
		up.mu.Unlock()
		tc.up = nil
	}
	tc.mu.Lock()
	// A transport's watch still in the list would abort the next user's
	// round trip when that one's exchange ends.
	reusable := linked && tc.err == nil && !tc.tainted && tc.watches.Empty()
	tc.mu.Unlock()
	if !reusable {
		tc.cancel(context.Canceled)
	}
	return reusable
}
