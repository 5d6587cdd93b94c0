package stats

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

func TestPathsFindHeavyHittersAmongManyPaths(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := NewRecorder()
		p := rec.Paths("orders.default")
		r := rand.New(rand.NewPCG(7, 8))
		heavy := map[string]int{"/api/orders": 2000, "/api/cart": 1500, "/healthz": 1000}
		var seq []string
		for path, n := range heavy {
			for range n {
				seq = append(seq, path)
			}
		}
		for i := range 5000 { // a long tail of one-off paths (ids)
			seq = append(seq, fmt.Sprintf("/api/items/%d", i))
		}
		r.Shuffle(len(seq), func(i, j int) { seq[i], seq[j] = seq[j], seq[i] })
		for _, path := range seq {
			p.Record(time.Now(), path, 200, time.Millisecond)
		}
		time.Sleep(Width)
		got := p.read(windowOf(time.Now()) - 1)
		if len(got) > TopK {
			t.Fatalf("%d paths kept, at most %d", len(got), TopK)
		}
		found := map[string]uint64{}
		for _, pc := range got {
			found[pc.path] = pc.requests
		}
		for path, n := range heavy {
			// A counter's own count is a lower bound; the tail can take at
			// most what lies between two of a heavy path's arrivals.
			if c := found[path]; c > uint64(n) || c < uint64(n)*9/10 {
				t.Errorf("%s: counted %d, sent %d", path, c, n)
			}
		}
	})
}

func TestPathsCutLongPaths(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := NewRecorder().Paths("orders.default")
		long := "/" + strings.Repeat("x", 300)
		p.Record(time.Now(), long, 500, time.Millisecond)
		p.Record(time.Now(), long[:MaxPathLen], 200, time.Millisecond)
		time.Sleep(Width)
		got := p.read(windowOf(time.Now()) - 1)
		if len(got) != 1 || got[0].path != long[:MaxPathLen] || got[0].requests != 2 || got[0].failures != 1 {
			t.Fatalf("got %+v, want one path of %d bytes, 2 requests, 1 failure", got, MaxPathLen)
		}
	})
}

func TestPathsScaleForSkippedRequests(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := NewRecorder().Paths("orders.default")
		for range 10 {
			p.Record(time.Now(), "/a", 200, time.Millisecond)
		}
		s := &p.slots[windowOf(time.Now())%pathSlots]
		s.mu.Lock() // another request holds the window: these are skipped, not waited for
		for range 10 {
			p.Record(time.Now(), "/a", 200, time.Millisecond)
		}
		s.mu.Unlock()
		time.Sleep(Width)
		got := p.read(windowOf(time.Now()) - 1)
		if len(got) != 1 || got[0].requests != 20 {
			t.Fatalf("got %+v, want /a with 20 requests (10 recorded, 10 skipped)", got)
		}
	})
}

func TestPathsKeepOnlyRecentWindows(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := NewRecorder()
		rec.Paths("orders.default").Record(time.Now(), "/a", 200, time.Millisecond)
		time.Sleep(Width)
		if n := countKind(rec, "path"); n != 1 {
			t.Fatalf("%d path entries, want 1", n)
		}
		time.Sleep(PathWindows * Width)
		if n := countKind(rec, "path"); n != 0 {
			t.Fatalf("%d path entries after %v, want 0", n, PathWindows*Width)
		}
	})
}

func countKind(rec *Recorder, kind string) int {
	n := 0
	for _, w := range rec.Windows(time.Now(), 0) {
		for _, e := range w.GetEntries() {
			if e.GetKind() == kindOf(kind) {
				n++
			}
		}
	}
	return n
}

func TestPathServicesAreBounded(t *testing.T) {
	rec := NewRecorder()
	for i := range MaxPathServices {
		if rec.Paths(fmt.Sprintf("s%d.default", i)) == nil {
			t.Fatalf("service %d refused", i)
		}
	}
	if rec.Paths("one-more.default") != nil {
		t.Fatal("paths of a service past the bound")
	}
}
