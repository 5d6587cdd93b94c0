package stats

import (
	"testing"
	"testing/synctest"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

var ordersIn = Key{Inbound: true, Source: "frontend.default", Destination: "orders.default"}

// entryOf finds the entry of a kind and service in a window.
func entryOf(w *meshv1.StatsWindow, kind meshv1.StatsKind, service string) *meshv1.StatsEntry {
	for _, e := range w.GetEntries() {
		if e.GetKind() == kind && e.GetService() == service {
			return e
		}
	}
	return nil
}

func TestWindowsRollEveryWidth(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := NewRecorder()
		c := rec.Cell(ordersIn)
		t0 := time.Now() // synctest's clock starts on a window boundary
		if t0.UnixNano()%int64(Width) != 0 {
			t.Fatalf("start %v is not on a window boundary", t0)
		}
		for i := range 10 {
			status := 200
			if i < 2 {
				status = 503
			}
			c.Record(time.Now(), status, time.Millisecond)
		}
		time.Sleep(Width)
		for range 5 {
			c.Record(time.Now(), 200, 2*time.Millisecond)
		}
		// The open window is not reported.
		if ws := rec.Windows(time.Now(), 0); len(ws) != 1 {
			t.Fatalf("%d windows before the second closed, want 1", len(ws))
		}
		time.Sleep(Width)
		ws := rec.Windows(time.Now(), 0)
		if len(ws) != 2 {
			t.Fatalf("%d windows, want 2", len(ws))
		}
		if ws[0].GetStartUnix() != t0.Unix() || ws[1].GetStartUnix() != t0.Unix()+10 || ws[0].GetWidthSeconds() != 10 {
			t.Fatalf("windows start %d and %d (width %d), want %d and %d", ws[0].GetStartUnix(), ws[1].GetStartUnix(), ws[0].GetWidthSeconds(), t0.Unix(), t0.Unix()+10)
		}
		e0 := entryOf(ws[0], meshv1.StatsKind_STATS_SERVICE, "orders.default")
		e1 := entryOf(ws[1], meshv1.StatsKind_STATS_SERVICE, "orders.default")
		if e0.GetRequests() != 10 || e0.GetFailures() != 2 || e1.GetRequests() != 5 || e1.GetFailures() != 0 {
			t.Fatalf("windows counted %d/%d and %d/%d, want 10/2 and 5/0", e0.GetRequests(), e0.GetFailures(), e1.GetRequests(), e1.GetFailures())
		}
		// After what was sent, only what is newer.
		if ws := rec.Windows(time.Now(), t0.Unix()); len(ws) != 1 || ws[0].GetStartUnix() != t0.Unix()+10 {
			t.Fatalf("after %d: %d windows, want only the second", t0.Unix(), len(ws))
		}
		// Past Keep windows, nothing is left to report.
		time.Sleep(Keep * Width)
		if ws := rec.Windows(time.Now(), 0); len(ws) != 0 {
			t.Fatalf("%d windows after %v idle, want 0", len(ws), Keep*Width)
		}
	})
}

func TestSlotReusedIsCleared(t *testing.T) {
	for _, roll := range []bool{false, true} {
		name := "lazily"
		if roll {
			name = "rolled ahead"
		}
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rec := NewRecorder()
				c := rec.Cell(ordersIn)
				for range 7 {
					c.Record(time.Now(), 200, time.Millisecond)
				}
				// The same slot, numSlots windows later.
				time.Sleep(numSlots*Width - time.Second)
				if roll {
					rec.Roll(time.Now())
				}
				time.Sleep(time.Second)
				c.Record(time.Now(), 200, time.Millisecond)
				time.Sleep(Width)
				ws := rec.Windows(time.Now(), 0)
				if len(ws) != 1 {
					t.Fatalf("%d windows, want 1", len(ws))
				}
				if got := entryOf(ws[0], meshv1.StatsKind_STATS_SERVICE, "orders.default").GetRequests(); got != 1 {
					t.Fatalf("reused slot counts %d requests, want 1 (old window's 7 cleared)", got)
				}
				if rec.Dropped() != 0 {
					t.Errorf("%d records dropped", rec.Dropped())
				}
			})
		})
	}
}

func TestRollPreparesTheNextWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := NewRecorder()
		c := rec.Cell(ordersIn)
		next := windowOf(time.Now()) + 1
		rec.Roll(time.Now())
		if got := c.slots[next%numSlots].window.Load(); got != next {
			t.Fatalf("next slot holds window %d, want %d", got, next)
		}
	})
}

func TestRecordDropsWhileSlotIsPrepared(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := NewRecorder()
		c := rec.Cell(ordersIn)
		w := windowOf(time.Now())
		c.slots[w%numSlots].window.Store(preparing)
		c.Record(time.Now(), 200, time.Millisecond)
		if rec.Dropped() != 1 {
			t.Fatalf("dropped %d, want 1", rec.Dropped())
		}
	})
}

func TestOutboundCellsSumIntoRoutesAndEdges(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := NewRecorder()
		// Two endpoint identities of one backend, and a second backend.
		a := rec.Cell(Key{Source: "frontend.default", Destination: "inventory-v1.default", Route: "default/split/rules[0]"})
		b := rec.Cell(Key{Source: "frontend.default", Destination: "inventory-v2.default", Route: "default/split/rules[0]"})
		for range 3 {
			a.Record(time.Now(), 200, time.Millisecond)
		}
		b.Record(time.Now(), 500, time.Millisecond)
		time.Sleep(Width)
		ws := rec.Windows(time.Now(), 0)
		if len(ws) != 1 {
			t.Fatalf("%d windows", len(ws))
		}
		var routes, edges uint64
		for _, e := range ws[0].GetEntries() {
			switch e.GetKind() {
			case meshv1.StatsKind_STATS_ROUTE:
				routes += e.GetRequests()
				if e.GetRoute() != "default/split/rules[0]" {
					t.Errorf("route %q", e.GetRoute())
				}
			case meshv1.StatsKind_STATS_EDGE:
				edges += e.GetRequests()
				if e.GetSource() != "frontend.default" {
					t.Errorf("edge source %q", e.GetSource())
				}
			case meshv1.StatsKind_STATS_SERVICE:
				t.Errorf("an outbound cell made a service entry: %v", e)
			}
		}
		if routes != 4 || edges != 4 {
			t.Fatalf("routes %d, edges %d requests, want 4 each", routes, edges)
		}
	})
}
