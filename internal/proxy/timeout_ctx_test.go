package proxy

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"trellis.dev/trellis/internal/http1"
)

// TestTimeoutCtxParentCancel: the client going away ends a timeout's
// context for a waiter (Done) and for a poller (Err), and ends the timeout
// nested in it.
func TestTimeoutCtxParentCancel(t *testing.T) {
	for _, wait := range []bool{true, false} {
		parent, cancel := context.WithCancel(context.Background())
		outer, inner := newTimeoutCtx(), newTimeoutCtx()
		outer.start(parent, time.Now().Add(time.Hour))
		inner.start(outer, time.Now().Add(time.Hour))
		var done <-chan struct{}
		if wait {
			done = inner.Done()
		}
		cancel()
		if wait {
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("a waiter on the nested timeout did not hear the client go away")
			}
		}
		if !errors.Is(outer.Err(), context.Canceled) || !errors.Is(inner.Err(), context.Canceled) {
			t.Fatalf("wait=%v: errs %v, %v after the parent was canceled", wait, outer.Err(), inner.Err())
		}
	}
}

// TestTimeoutCtxTimer: the timer ends the context with DeadlineExceeded
// and every child and AfterFunc registered on it hears it; a stopped
// registration does not.
func TestTimeoutCtxTimer(t *testing.T) {
	tc := newTimeoutCtx()
	tc.start(context.Background(), time.Now().Add(time.Second))
	if d, ok := tc.Deadline(); !ok || time.Until(d) > time.Second {
		t.Fatalf("deadline %v %v", d, ok)
	}
	var heard sync.WaitGroup
	heard.Add(3)
	for range 3 {
		context.AfterFunc(tc, heard.Done)
	}
	child, cancelChild := context.WithCancel(tc) // as a transport derives one
	defer cancelChild()
	stop := context.AfterFunc(tc, func() { t.Error("a stopped registration ran") })
	if !stop() {
		t.Fatal("stop of a live registration returned false")
	}
	tc.onTimer() // a late run of an earlier arming: the deadline is ahead
	if tc.Err() != nil {
		t.Fatalf("a timer run before the deadline ended the context: %v", tc.Err())
	}
	tc.mu.Lock()
	tc.deadline = time.Now()
	tc.mu.Unlock()
	tc.onTimer()
	heard.Wait()
	if !errors.Is(tc.Err(), context.DeadlineExceeded) {
		t.Fatalf("err %v, want DeadlineExceeded", tc.Err())
	}
	if context.Cause(child) != context.DeadlineExceeded {
		t.Fatalf("child's cause %v, want DeadlineExceeded", context.Cause(child))
	}
	select {
	case <-tc.Done():
	default:
		t.Fatal("Done open after the timer fired")
	}
	select {
	case <-child.Done():
	default:
		t.Fatal("a child context is open after the timer fired")
	}
}

// TestTimeoutCtxChildJoinsInner: a child context (net/http's transport
// derives one per request) registers as under context.WithTimeout, with
// no goroutine and no AfterFunc, and a reused context keeps its Done
// channel: what makes a timeout cost no allocation once pooled.
func TestTimeoutCtxChildJoinsInner(t *testing.T) {
	tc := newTimeoutCtx()
	parent, cancel := context.WithCancel(context.Background())
	defer cancel()
	tc.start(parent, time.Now().Add(time.Hour))
	tc.Done()
	// A child of a cancelCtx costs the child and its cancel closure (2),
	// and its own Done channel when waited on (3); under the afterFuncer
	// path (a parent that is no cancelCtx) it would cost 2 more.
	allocs := testing.AllocsPerRun(100, func() {
		child, cancelChild := context.WithCancel(tc)
		select {
		case <-child.Done():
		default:
		}
		cancelChild()
	})
	if allocs > 3 {
		t.Fatalf("a child context of a timeout costs %v allocations, want <= 3 (it did not join inner's children)", allocs)
	}
	ch := tc.Done()
	if !tc.finish() {
		t.Fatal("an untouched context is not reusable")
	}
	tc.start(parent, time.Now().Add(time.Hour))
	if tc.Done() != ch {
		t.Fatal("a reused context made a new Done channel")
	}
	tc.finish()
}

// TestTimeoutCtxReuse: a context nothing holds any more is kept for the
// next exchange; one a failed attempt's transport may hold, or one that
// ended, is not, and whoever holds it sees it canceled.
func TestTimeoutCtxReuse(t *testing.T) {
	tc := newTimeoutCtx()
	tc.start(context.Background(), time.Now().Add(time.Hour))
	if !tc.finish() {
		t.Fatal("an untouched context is not reusable")
	}
	tc.start(context.Background(), time.Now().Add(time.Hour))
	if tc.Err() != nil {
		t.Fatalf("reused: err %v", tc.Err())
	}
	ch := tc.Done()
	tc.mu.Lock()
	tc.tainted = true
	tc.mu.Unlock()
	if tc.finish() {
		t.Fatal("a tainted context was kept for reuse")
	}
	select {
	case <-ch:
	default:
		t.Fatal("a waiter on a dropped context was not released")
	}
	if tc.Err() == nil {
		t.Fatal("a dropped context was not canceled for its holder")
	}
	tc.start(context.Background(), time.Now().Add(time.Hour))
	if tc.Err() != nil || tc.Done() == ch {
		t.Fatalf("restarted after its end: err %v, same closed Done channel %v", tc.Err(), tc.Done() == ch)
	}
	if tc.tainted {
		t.Fatal("a restarted context is still tainted")
	}
	tc.mu.Lock()
	tc.deadline = time.Now()
	tc.mu.Unlock()
	tc.onTimer()
	if tc.finish() {
		t.Fatal("a context that timed out was kept for reuse")
	}
}

// TestTimeoutsPooledUnderRace: many exchanges, each with a request and an
// attempt timeout and a transport that waits on the context from its own
// goroutine until the response body is closed; some clients go away, some
// attempts time out. Run with -race: a reused context must never be one a
// transport still holds.
func TestTimeoutsPooledUnderRace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var timers sync.Pool
		upstream := HandlerFunc(func(ex *Exchange) *Response {
			ctx := ex.ctx
			got := make(chan struct{})
			go func() { // the transport's goroutine
				defer close(got)
				select {
				case <-ctx.Done():
				case <-time.After(time.Duration(ex.Attempts+1) * 3 * time.Millisecond):
				}
			}()
			<-got
			if ctx.Err() != nil {
				ex.taintTimeouts()
				return &Response{Status: http.StatusGatewayTimeout}
			}
			return &Response{Status: 200}
		})
		h := timeoutFilter(10*time.Millisecond, &timers)(timeoutFilter(5*time.Millisecond, &timers)(upstream))
		var wg sync.WaitGroup
		var xs exchangePool
		for i := range 200 {
			wg.Go(func() {
				parent, cancel := context.WithCancel(context.Background())
				defer cancel()
				ex := xs.get()
				ex.ctx, ex.clientCtx = parent, parent
				ex.Attempts = i % 3
				if i%5 == 0 {
					time.AfterFunc(time.Millisecond, cancel)
				}
				h.Serve(ex)
				ex.release()
			})
		}
		wg.Wait()
	})
}

// TestExTimerLazy: a pooled timeout timer armed and disarmed for request
// after request cancels nothing; armed once more, it cancels at that
// arming's deadline, not the first one's; a shorter timeout after a long
// one still fires on time.
func TestExTimerLazy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var et exTimer
		var fired []time.Duration
		start := time.Now()
		cancel := func() { fired = append(fired, time.Since(start)) }
		for range 1000 { // requests of 1 ms under a 100 ms timeout
			et.arm(100*time.Millisecond, cancel)
			time.Sleep(time.Millisecond)
			et.disarm()
		}
		if len(fired) != 0 {
			t.Fatalf("disarmed timeouts fired at %v", fired)
		}
		// Armed at 1 s: due at 1.1 s, though the timer was first set for 100 ms.
		et.arm(100*time.Millisecond, cancel)
		time.Sleep(time.Second)
		synctest.Wait()
		if len(fired) != 1 || fired[0] != 1100*time.Millisecond {
			t.Fatalf("fired at %v, want once at 1.1s", fired)
		}
		// Pending for an hour (disarmed), then armed for 10 ms.
		et.arm(time.Hour, cancel)
		et.disarm()
		et.arm(10*time.Millisecond, cancel)
		time.Sleep(20 * time.Millisecond)
		synctest.Wait()
		if len(fired) != 2 || fired[1] != 2010*time.Millisecond {
			t.Fatalf("fired at %v, want the second at 2.01s", fired)
		}
		et.disarm()
	})
}

// watchedParent is a client context as the HTTP/1.1 server makes them
// (http1.Watched).
type watchedParent struct {
	context.Context
	http1.WatchList
}

// TestTimeoutCtxWatched: under the server's connection context, a route
// timeout links to it and a transport watches the timeout through their
// lists, allocating nothing per request; the client's end reaches the
// transport's watch; a watch left behind keeps the context from reuse and
// runs when the exchange ends.
func TestTimeoutCtxWatched(t *testing.T) {
	inner, cancel := context.WithCancel(context.Background())
	defer cancel()
	parent := &watchedParent{Context: inner}
	tc := newTimeoutCtx()
	w := &http1.Watch{F: func() {}}
	if n := testing.AllocsPerRun(1000, func() {
		tc.start(parent, time.Now().Add(time.Hour))
		if !tc.Watch(w) || !tc.Unwatch(w) {
			t.Fatal("watch refused on a live context")
		}
		if !tc.finish() {
			t.Fatal("a clean exchange's context not kept for reuse")
		}
	}); n != 0 {
		t.Fatalf("%.1f allocations per exchange, want 0", n)
	}
	if !parent.Empty() {
		t.Fatal("the link to the parent outlived the exchange")
	}

	// The client goes: the transport's watch runs, the context ends.
	fired := make(chan struct{})
	w.F = func() { close(fired) }
	tc.start(parent, time.Now().Add(time.Hour))
	tc.Watch(w)
	cancel()
	parent.End()
	select {
	case <-fired:
	case <-time.After(5 * time.Second):
		t.Fatal("the client's end did not reach the transport's watch")
	}
	if !errors.Is(tc.Err(), context.Canceled) {
		t.Fatalf("Err = %v, want canceled", tc.Err())
	}
	if tc.finish() {
		t.Fatal("a canceled context kept for reuse")
	}

	// A watch left in the list: not reused, and told the exchange ended.
	live := &watchedParent{Context: context.Background()}
	fired = make(chan struct{})
	w.F = func() { close(fired) }
	tc.start(live, time.Now().Add(time.Hour))
	tc.Watch(w)
	if tc.finish() {
		t.Fatal("a context with a transport's watch still in it kept for reuse")
	}
	select {
	case <-fired:
	case <-time.After(5 * time.Second):
		t.Fatal("the watch left behind never ran")
	}
}
