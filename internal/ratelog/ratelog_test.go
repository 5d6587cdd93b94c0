package ratelog

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// records keeps the lines a Limiter writes.
type records struct {
	mu    sync.Mutex
	lines []map[string]any
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *records) WithGroup(string) slog.Handler            { return r }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	m := map[string]any{"msg": rec.Message}
	rec.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.Any(); return true })
	r.mu.Lock()
	r.lines = append(r.lines, m)
	r.mu.Unlock()
	return nil
}

func (r *records) all() []map[string]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]map[string]any(nil), r.lines...)
}

// TestBurstRateAndSummary: a reason gets Burst lines at once, then
// PerSecond a second; the first line after a suppression says how many
// were left out, and a summary line counts those no later line reported.
func TestBurstRateAndSummary(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &records{}
		l := New(slog.New(rec), Options{PerSecond: 5, Burst: 10, Summary: 10 * time.Second})
		allowed := 0
		for range 100 {
			if ok, _ := l.Allow("bad_token"); ok {
				allowed++
			}
		}
		if allowed != 10 {
			t.Fatalf("%d of 100 lines at once allowed, want the burst of 10", allowed)
		}
		time.Sleep(time.Second)
		ok, n := l.Allow("bad_token")
		if !ok || n != 90 {
			t.Fatalf("a second later: allowed %t, suppressed %d; want true, 90", ok, n)
		}
		for range 50 { // 4 more tokens this second, 46 suppressed
			l.Allow("bad_token")
		}
		if got := len(rec.all()); got != 0 {
			t.Fatalf("%d summary lines before the interval, want 0", got)
		}
		time.Sleep(10 * time.Second)
		synctest.Wait()
		lines := rec.all()
		if len(lines) != 1 || lines[0]["reason"] != "bad_token" || lines[0]["suppressed"] != int64(46) {
			t.Fatalf("summary lines %v, want one for bad_token with 46 suppressed", lines)
		}
		// Nothing suppressed since: no further summary.
		time.Sleep(time.Minute)
		synctest.Wait()
		if got := len(rec.all()); got != 1 {
			t.Fatalf("%d summary lines after a quiet minute, want still 1", got)
		}
	})
}

// TestReasonsIndependent: one reason's flood does not silence another.
func TestReasonsIndependent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := New(nil, Options{PerSecond: 1, Burst: 1})
		for range 100 {
			l.Allow("flood")
		}
		if ok, _ := l.Allow("rare"); !ok {
			t.Fatal("a quiet reason was suppressed by another's flood")
		}
		l.Stop()
	})
}

// TestMaxReasons: reasons past the bound share one bucket.
func TestMaxReasons(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := New(nil, Options{PerSecond: 1, Burst: 1, MaxReasons: 3})
		for i := range 100 {
			l.Allow(fmt.Sprint("reason-", i))
		}
		l.mu.Lock()
		n, other := len(l.reasons), l.reasons[OtherReason]
		l.mu.Unlock()
		if n > 4 || other == nil || other.suppressed != 96 {
			t.Fatalf("%d reasons kept (other: %+v); want at most 3 + %q holding the rest", n, other, OtherReason)
		}
		l.Stop()
	})
}

func TestAllowAllocatesNothing(t *testing.T) {
	l := New(nil, Options{PerSecond: 1, Burst: 1})
	l.Allow("denied")
	if a := testing.AllocsPerRun(1000, func() { l.Allow("denied") }); a != 0 {
		t.Fatalf("Allow allocates %.1f per call, want 0", a)
	}
	l.Stop()
}

// BenchmarkAllowSuppressed is the cost of a refusal whose line is left out
// (the flood case).
func BenchmarkAllowSuppressed(b *testing.B) {
	l := New(nil, Options{PerSecond: 1, Burst: 1})
	defer l.Stop()
	b.ReportAllocs()
	for b.Loop() {
		l.Allow("denied")
	}
}
