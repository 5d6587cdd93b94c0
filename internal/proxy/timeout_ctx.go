package proxy

import (
	"context"
	"sync"
	"time"
)

// A route timeout used to cost context.WithCancel per request: a cancelCtx,
// its cancel closure and, under net/http's cancelable request context, the
// parent's children map and Done channel — 5 allocations (2 under a
// background one). timeoutCtx is the pooled replacement: two live in each
// pooled exchange (the request timeout, and an attempt timeout nested in
// it), reused from one exchange to the next while nothing can still hold
// them, carrying their deadline and keeping their Done channel until it is
// closed.
//
// A timeout's context ends with its exchange (release cancels it: a Done
// channel handed out is closed, Err says Canceled) and is reused by a later
// exchange of the same pooled Exchange. Reuse is safe because of net/http's
// contract, as for the exchange's outgoing request (lendOut): a transport
// may use a request (and so its context) until the response body is
// closed, which the writer does before release — unless the attempt failed
// without a response (taint), or the transport has not yet dropped a
// cancellation it registered with the context (AfterFunc): then the
// context is dropped, not reused. So an allocation remains only for a Done
// channel that was handed out (a real transport asks for it) and for
// linking to a cancelable parent that someone waits on.

// timeoutCtx is a context canceled when its deadline's timer fires, when
// its parent is done, or when its timeout parent (a timeoutCtx) is.
type timeoutCtx struct {
	parent   context.Context
	deadline time.Time
	// up is the timeoutCtx parent it is linked into (nil: parent is
	// another context, linked by link); down the timeout nested in this
	// one right now.
	up, down *timeoutCtx
	link     func() bool // context.AfterFunc on parent; nil: none
	// linked: the link to parent is made (lazily: see start).
	linked bool

	mu     sync.Mutex
	done   chan struct{} // made on first Done; kept across uses while open
	err    error
	afters [2]func() // cancellations registered by transports (AfterFunc)
	extra  []func()  // more than two, rarely
	// tainted: an attempt failed without a response; the transport may
	// still hold the context.
	tainted bool

	// Made once per object, so arming allocates nothing.
	onParent, onTimer func()
	stops             [2]func() bool
}

func newTimeoutCtx() *timeoutCtx {
	tc := &timeoutCtx{}
	tc.onParent = func() { tc.cancel(tc.parentCtx().Err()) }
	tc.onTimer = func() { tc.cancel(context.DeadlineExceeded) }
	for i := range tc.stops {
		tc.stops[i] = func() bool {
			tc.mu.Lock()
			defer tc.mu.Unlock()
			if tc.afters[i] == nil {
				return false
			}
			tc.afters[i] = nil
			return true
		}
	}
	return tc
}

// start makes tc a child of parent with deadline d. A parent that is a
// timeoutCtx links tc to itself at once. Another parent is linked (with
// context.AfterFunc, the only allocation, and that only for a cancelable
// parent) when someone first waits on tc — Done, or a child context's
// registration (net/http's transport derives one per request) — since
// only a waiter needs to hear of the parent's end at once; Err asks the
// parent meanwhile.
func (tc *timeoutCtx) start(parent context.Context, deadline time.Time) {
	tc.mu.Lock()
	tc.parent, tc.deadline, tc.linked, tc.down = parent, deadline, false, nil
	if tc.err != nil {
		// Ended with its last exchange: a fresh start, and a fresh Done
		// channel if the last one was handed out (and so closed).
		tc.err, tc.done = nil, nil
	}
	tc.mu.Unlock()
	if d, ok := parent.Deadline(); ok && d.Before(deadline) {
		tc.deadline = d
	}
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
	parent := tc.parent
	tc.mu.Unlock()
	if parent.Done() == nil {
		return
	}
	// Outside mu: AfterFunc runs onParent at once if parent is done.
	stop := context.AfterFunc(parent, tc.onParent)
	tc.mu.Lock()
	tc.link = stop
	tc.mu.Unlock()
}

func (tc *timeoutCtx) Deadline() (time.Time, bool) { return tc.deadline, true }

func (tc *timeoutCtx) Done() <-chan struct{} {
	tc.ensureLinked()
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if tc.done == nil {
		tc.done = make(chan struct{})
		if tc.err != nil {
			close(tc.done)
		}
	}
	return tc.done
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

func (tc *timeoutCtx) Value(key any) any {
	if p := tc.parentCtx(); p != nil {
		return p.Value(key)
	}
	return nil
}

func (tc *timeoutCtx) parentCtx() context.Context {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return tc.parent
}

// AfterFunc lets a child context (net/http's transport derives one per
// request) register its cancellation without a goroutine; context's
// propagateCancel uses it.
func (tc *timeoutCtx) AfterFunc(f func()) func() bool {
	tc.ensureLinked()
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if tc.err != nil {
		go f()
		return func() bool { return false }
	}
	for i := range tc.afters {
		if tc.afters[i] == nil {
			tc.afters[i] = f
			return tc.stops[i]
		}
	}
	i := len(tc.extra)
	tc.extra = append(tc.extra, f)
	return func() bool {
		tc.mu.Lock()
		defer tc.mu.Unlock()
		if i >= len(tc.extra) || tc.extra[i] == nil {
			return false
		}
		tc.extra[i] = nil
		return true
	}
}

// cancel ends tc (once) with err, and the timeout nested in it.
func (tc *timeoutCtx) cancel(err error) {
	tc.mu.Lock()
	if tc.err != nil {
		tc.mu.Unlock()
		return
	}
	tc.err = err
	if tc.done != nil {
		close(tc.done)
	}
	fs := tc.afters
	tc.afters = [2]func(){}
	extra := tc.extra
	tc.extra = nil
	down := tc.down
	tc.mu.Unlock()
	for _, f := range fs {
		if f != nil {
			f()
		}
	}
	for _, f := range extra {
		if f != nil {
			go f()
		}
	}
	if down != nil {
		down.cancel(err)
	}
}

// finish detaches tc at the end of its exchange and reports whether it
// may be reused: not canceled, not tainted, no transport still registered.
func (tc *timeoutCtx) finish() bool {
	linked := true
	tc.mu.Lock()
	link := tc.link
	tc.link = nil
	tc.mu.Unlock()
	if link != nil {
		// false: the parent's cancellation is running; it will cancel tc.
		linked = link()
	}
	if up := tc.up; up != nil {
		up.mu.Lock()
		if up.down == tc {
			up.down = nil
		}
		up.mu.Unlock()
		tc.up = nil
	}
	tc.mu.Lock()
	reusable := linked && tc.err == nil && !tc.tainted && tc.afters[0] == nil && tc.afters[1] == nil && len(tc.extra) == 0
	tc.mu.Unlock()
	// Whoever still holds it sees it end with its exchange, as a canceled
	// context (a Done channel handed out is closed: the next use makes a
	// new one).
	tc.cancel(context.Canceled)
	return reusable
}
