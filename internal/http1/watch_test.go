package http1

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// TestWatchList: a watch runs once when the list ends, not after it was
// removed; an ended list refuses new watches until Reset.
func TestWatchList(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var l WatchList
		var mu sync.Mutex
		ran := map[string]int{}
		mk := func(name string) *Watch {
			return &Watch{F: func() { mu.Lock(); ran[name]++; mu.Unlock() }}
		}
		a, b, c := mk("a"), mk("b"), mk("c")
		for _, w := range []*Watch{a, b, c} {
			if !l.Watch(w) {
				t.Fatal("a live list refused a watch")
			}
		}
		if !l.Unwatch(b) || l.Unwatch(b) {
			t.Fatal("Unwatch: true once, then false")
		}
		if l.Empty() {
			t.Fatal("two watches left, Empty says none")
		}
		l.End()
		l.End()
		synctest.Wait()
		if ran["a"] != 1 || ran["c"] != 1 || ran["b"] != 0 {
			t.Fatalf("ran %v, want a and c once each", ran)
		}
		if l.Unwatch(a) {
			t.Fatal("Unwatch after End reported the watch removed: its F ran")
		}
		if l.Watch(b) {
			t.Fatal("an ended list took a watch")
		}
		if !l.Empty() {
			t.Fatal("ended list not empty")
		}
		l.Reset()
		if !l.Watch(b) || !l.Unwatch(b) {
			t.Fatal("a reset list refused a watch")
		}
	})
}

// watchedCtx is a context implementing Watched, as the proxy's are.
type watchedCtx struct {
	context.Context
	WatchList
}

// TestCtxWatchFreeOfAllocations: watching a Watched context and ending
// the watch allocates nothing (context.AfterFunc allocates twice); a plain
// cancelable context still works through AfterFunc.
func TestCtxWatchFreeOfAllocations(t *testing.T) {
	ctx := &watchedCtx{Context: context.Background()}
	cw := ContextWatch{Watch: Watch{F: func() {}}}
	if n := testing.AllocsPerRun(1000, func() {
		cw.Start(ctx)
		if !cw.End() {
			t.Fatal("end: false with the context live")
		}
	}); n != 0 {
		t.Fatalf("%.1f allocations per watch of a Watched context, want 0", n)
	}
	plain, cancel := context.WithCancel(context.Background())
	fired := make(chan struct{})
	cw = ContextWatch{Watch: Watch{F: func() { close(fired) }}}
	cw.Start(plain)
	cancel()
	waitClosed(t, fired, "the plain context's watch")
	if cw.End() {
		t.Fatal("end: true after the plain context's AfterFunc ran")
	}
	// A Watched context already ended: F runs at once, end says so.
	ctx.End()
	fired = make(chan struct{})
	cw = ContextWatch{Watch: Watch{F: func() { close(fired) }}}
	cw.Start(ctx)
	waitClosed(t, fired, "the ended context's watch")
	if cw.End() {
		t.Fatal("end: true for a context that had ended")
	}
}

func waitClosed(t *testing.T, c chan struct{}, what string) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s did not run", what)
	}
}

// TestTransportAbortsOnWatchedEnd: a round trip blocked on a server that
// never answers fails as soon as its Watched context ends, and the
// connection is not pooled.
func TestTransportAbortsOnWatchedEnd(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan struct{})
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 1024)
		if _, err := c.Read(buf); err == nil {
			close(got) // the request is here; no answer comes
		}
		_, _ = c.Read(buf) // until the client goes
	}()
	inner, cancel := context.WithCancel(context.Background())
	ctx := &watchedCtx{Context: inner}
	tr := &Transport{}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+ln.Addr().String()+"/", nil)
	done := make(chan error, 1)
	go func() {
		resp, err := tr.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	<-got // the transport now waits for the response
	cancel()
	ctx.End()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("round trip succeeded")
		}
		if !errors.Is(err, context.Canceled) {
			t.Logf("error: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("round trip still blocked 5 s after its context ended")
	}
	if n := len(tr.idle); n != 0 {
		t.Fatalf("%d idle connection lists after an aborted round trip", n)
	}
}
