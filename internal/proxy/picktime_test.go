package proxy

import (
	"context"
	"testing"
	"time"
)

// TestPickTime: the balancer gets the request's start as "now" only for a
// first attempt that nothing made wait; otherwise it reads the clock.
func TestPickTime(t *testing.T) {
	start := time.Unix(1000, 0)
	for _, tc := range []struct {
		name     string
		attempts int
		waited   bool
		want     time.Time
	}{
		{"first attempt", 0, false, start},
		{"retry", 1, false, time.Time{}},
		{"after a wait", 0, true, time.Time{}},
	} {
		ex := &Exchange{Start: start, Attempts: tc.attempts, waited: tc.waited}
		if got := ex.pickTime(); !got.Equal(tc.want) {
			t.Errorf("%s: pickTime %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestFaultDelayMarksWaited: an injected delay is not charged to the
// endpoint the request then goes to.
func TestFaultDelayMarksWaited(t *testing.T) {
	var waited bool
	h := faultFilter(&faultSpec{delay: time.Millisecond, delayPPM: ppm}, func(uint32) uint32 { return 0 })(
		HandlerFunc(func(ex *Exchange) *Response { waited = ex.waited; return &Response{Status: 200} }))
	ex := &Exchange{ctx: context.Background(), clientCtx: context.Background()}
	h.Serve(ex)
	if !waited {
		t.Fatal("the pick after an injected delay would take the request's start as now")
	}
}
