package tap

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

func TestFilterOf(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  *meshv1.TapRequest
		err  string
	}{
		{"empty matches all", &meshv1.TapRequest{}, ""},
		{"all fields", &meshv1.TapRequest{PathPrefix: "/api", Method: "get", To: "orders.default"}, ""},
		{"relative path", &meshv1.TapRequest{PathPrefix: "api"}, "path_prefix \"api\" must start with /"},
		{"long path", &meshv1.TapRequest{PathPrefix: "/" + strings.Repeat("a", maxPath)}, "over 1024"},
		{"method with space", &meshv1.TapRequest{Method: "GE T"}, "not an HTTP method token"},
		{"to without namespace", &meshv1.TapRequest{To: "orders"}, "want a service as name.namespace"},
		{"to upper case", &meshv1.TapRequest{To: "Orders.default"}, "want a service as name.namespace"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := FilterOf(tc.req)
			if tc.err == "" {
				if err != nil {
					t.Fatalf("FilterOf: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("FilterOf: %v, want an ErrInvalid containing %q", err, tc.err)
			}
		})
	}
}

func TestFilterMatch(t *testing.T) {
	f, err := FilterOf(&meshv1.TapRequest{PathPrefix: "/api/", Method: "post", To: "orders.default"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		method, path, dest string
		want               bool
	}{
		{"POST", "/api/orders", "orders.default", true},
		{"POST", "/api/", "orders.default", true},
		{"GET", "/api/orders", "orders.default", false},
		{"POST", "/apix", "orders.default", false},
		{"POST", "/", "orders.default", false},
		{"POST", "/api/orders", "payments.default", false},
		{"POST", "/api/orders", "orders.shop", false},
	} {
		got := f.MatchRequest(tc.method, tc.path) && f.MatchTo(tc.dest)
		if got != tc.want {
			t.Errorf("%s %s to %s: match %v, want %v", tc.method, tc.path, tc.dest, got, tc.want)
		}
	}
	var all Filter
	if !all.MatchRequest("DELETE", "/x") || !all.MatchTo("anything.ns") {
		t.Error("the zero filter must match everything")
	}
}

// TestSamplerBound: a burst gets one second's worth, the rest is counted
// skipped; then the rate refills at rps per second.
func TestSamplerBound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := NewSampler(10)
		admitted := 0
		for range 100 {
			if s.Admit(time.Now().UnixNano()) {
				admitted++
			}
		}
		if admitted != 10 {
			t.Fatalf("burst: admitted %d of 100, want 10", admitted)
		}
		if n := s.TakeSkipped(); n != 90 {
			t.Fatalf("skipped %d, want 90", n)
		}
		if n := s.TakeSkipped(); n != 0 {
			t.Fatalf("skipped after take %d, want 0", n)
		}
		// A steady offer of 100/s for 2 s: about 10/s get through.
		admitted = 0
		for range 200 {
			time.Sleep(10 * time.Millisecond)
			if s.Admit(time.Now().UnixNano()) {
				admitted++
			}
		}
		if admitted < 19 || admitted > 21 {
			t.Fatalf("steady: admitted %d in 2 s at 10/s", admitted)
		}
		if n := s.TakeSkipped(); n != uint64(200-admitted) {
			t.Fatalf("steady: skipped %d, want %d", n, 200-admitted)
		}
		s.Skip()
		if n := s.TakeSkipped(); n != 1 {
			t.Fatalf("Skip: skipped %d, want 1", n)
		}
	})
}

func TestTapsApply(t *testing.T) {
	m := &testMetrics{}
	ts := NewTaps(m)
	if ts.Load() != nil {
		t.Fatal("a new Taps must be idle (nil set)")
	}
	if err := ts.Apply(&meshv1.TapRequest{TapId: "a", Method: "get"}); err != nil {
		t.Fatal(err)
	}
	if err := ts.Apply(&meshv1.TapRequest{TapId: "b", PathPrefix: "/x"}); err != nil {
		t.Fatal(err)
	}
	s := ts.Load()
	if s == nil || len(s.Taps()) != 2 {
		t.Fatalf("two taps started, set %v", s)
	}
	if !s.MatchRequest("POST", "/x/1") || !s.MatchRequest("GET", "/y") || s.MatchRequest("POST", "/y") {
		t.Error("set match wrong")
	}
	if err := ts.Apply(&meshv1.TapRequest{TapId: "a", Stop: true}); err != nil {
		t.Fatal(err)
	}
	if err := ts.Apply(&meshv1.TapRequest{TapId: "b", Stop: true}); err != nil {
		t.Fatal(err)
	}
	if ts.Load() != nil {
		t.Fatal("every tap stopped: the set must be nil again (the idle fast path)")
	}
	for _, bad := range []*meshv1.TapRequest{{}, {TapId: "c", MaxRps: MaxMaxRPS + 1}, {TapId: "c", PathPrefix: "x"}} {
		if err := ts.Apply(bad); err == nil {
			t.Errorf("Apply(%v): no error", bad)
		}
	}
	for i := range MaxTaps {
		if err := ts.Apply(&meshv1.TapRequest{TapId: string(rune('a' + i))}); err != nil {
			t.Fatal(err)
		}
	}
	if err := ts.Apply(&meshv1.TapRequest{TapId: "z"}); err == nil {
		t.Fatalf("tap %d of %d started", MaxTaps+1, MaxTaps)
	}
	ts.Clear()
	if ts.Load() != nil {
		t.Fatal("Clear left taps running")
	}
	if gauge := m.running; len(gauge) < 4 || !slices.Equal(gauge[:4], []int{1, 2, 1, 0}) || gauge[len(gauge)-1] != 0 {
		t.Fatalf("gauge calls %v", gauge)
	}
}

// TestTapsQueue: a full queue drops events and counts them as skipped,
// reported by Take with the tap's id.
func TestTapsQueue(t *testing.T) {
	m := &testMetrics{}
	ts := NewTaps(m)
	if err := ts.Apply(&meshv1.TapRequest{TapId: "a"}); err != nil {
		t.Fatal(err)
	}
	tp := ts.Load().Taps()[0]
	for range QueueSize + 5 {
		ts.Emit(tp, &meshv1.TapEvent{Path: "/"})
	}
	msg := ts.Take(maxBatch)
	if len(msg.Events) != maxBatch || msg.Events[0].GetTapId() != "a" {
		t.Fatalf("took %d events (tap %q), want %d of tap a", len(msg.Events), msg.Events[0].GetTapId(), maxBatch)
	}
	if len(msg.Skipped) != 1 || msg.Skipped[0].GetCount() != 5 || msg.Skipped[0].GetTapId() != "a" {
		t.Fatalf("skipped %v, want 5 of tap a", msg.Skipped)
	}
	if m.sent != QueueSize || m.skipped != 5 {
		t.Fatalf("metrics: %d sent, %d skipped; want %d, 5", m.sent, m.skipped, QueueSize)
	}
	ts.Clear()
	if m := ts.Take(maxBatch); len(m.Events) != 0 || !ts.idle() {
		t.Fatalf("after Clear: %d events queued", len(m.Events))
	}
}

func TestHubRelays(t *testing.T) {
	h := NewHub(nil)
	reqA, _, leaveA := h.Join("orders-1", "orders.default")
	reqB, _, leaveB := h.Join("payments-1", "payments.default")
	defer leaveB()
	s, err := h.Start("orders.default", &meshv1.TapRequest{PathPrefix: "/api", MaxRps: 5})
	if err != nil {
		t.Fatal(err)
	}
	if s.Proxies() != 1 {
		t.Fatalf("started on %d proxies, want 1", s.Proxies())
	}
	r := <-reqA
	if r.GetTapId() != s.ID() || r.GetPathPrefix() != "/api" || r.GetMaxRps() != 5 || r.GetStop() {
		t.Fatalf("orders-1 got %v", r)
	}
	select {
	case r := <-reqB:
		t.Fatalf("payments-1 got a tap of orders: %v", r)
	default:
	}
	// A proxy joining later gets the running tap.
	reqA2, _, leaveA2 := h.Join("orders-2", "orders.default")
	defer leaveA2()
	if r := <-reqA2; r.GetTapId() != s.ID() {
		t.Fatalf("orders-2 got %v", r)
	}
	h.Deliver("orders-1", &meshv1.TapEvents{Events: []*meshv1.TapEvent{{TapId: s.ID(), Path: "/api/x"}}, Skipped: []*meshv1.TapSkipped{{TapId: s.ID(), Count: 7}}})
	// Another service's proxy cannot write into this tap.
	h.Deliver("payments-1", &meshv1.TapEvents{Events: []*meshv1.TapEvent{{TapId: s.ID(), Path: "/forged"}}})
	if it := <-s.Items(); it.Node != "orders-1" || it.Event.GetPath() != "/api/x" {
		t.Fatalf("item %+v", it)
	}
	if it := <-s.Items(); it.Skipped != 7 {
		t.Fatalf("item %+v, want 7 skipped", it)
	}
	select {
	case it := <-s.Items():
		t.Fatalf("forged item delivered: %+v", it)
	default:
	}
	s.Stop()
	if r := <-reqA; !r.GetStop() || r.GetTapId() != s.ID() {
		t.Fatalf("orders-1 got %v, want stop", r)
	}
	if r := <-reqA2; !r.GetStop() {
		t.Fatalf("orders-2 got %v, want stop", r)
	}
	leaveA()
	h.Deliver("orders-1", &meshv1.TapEvents{Events: []*meshv1.TapEvent{{TapId: s.ID()}}})
}

func TestHubBounds(t *testing.T) {
	h := NewHub(nil)
	if _, err := h.Start("a.b", &meshv1.TapRequest{MaxRps: MaxMaxRPS + 1}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("max_rps over the bound: %v", err)
	}
	if _, err := h.Start("a.b", &meshv1.TapRequest{Method: "A B"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad method: %v", err)
	}
	for range MaxSessions {
		if _, err := h.Start("a.b", &meshv1.TapRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := h.Start("a.b", &meshv1.TapRequest{}); !errors.Is(err, ErrTooManyTaps) {
		t.Fatalf("session %d: %v", MaxSessions+1, err)
	}
	// A proxy that cannot take requests is kicked, not waited for.
	_, kicked, leave := h.Join("n", "c.d")
	defer leave()
	for range memberQueue + 1 {
		h.mu.Lock()
		h.members["n"].send(&meshv1.TapRequest{TapId: "x"})
		h.mu.Unlock()
	}
	select {
	case <-kicked:
	default:
		t.Fatal("a stream over its queue was not kicked")
	}
	// The same node reconnecting kicks its old stream.
	_, kicked2, leave2 := h.Join("m", "c.d")
	_, _, leave3 := h.Join("m", "c.d")
	defer leave3()
	leave2()
	select {
	case <-kicked2:
	default:
		t.Fatal("the old stream of a reconnected node was not kicked")
	}
	h.mu.Lock()
	_, still := h.members["m"]
	h.mu.Unlock()
	if !still {
		t.Fatal("the old stream's leave removed the new one")
	}
}

// FuzzFilterOf: any request either fails with ErrInvalid or gives a
// filter whose method is upper case and whose match does not panic.
func FuzzFilterOf(f *testing.F) {
	f.Add("/api", "get", "orders.default", "GET", "/api/x")
	f.Add("", "", "", "", "")
	f.Add("x", "G T", "a", "POST", "/")
	f.Fuzz(func(t *testing.T, prefix, method, to, reqMethod, reqPath string) {
		fl, err := FilterOf(&meshv1.TapRequest{PathPrefix: prefix, Method: method, To: to})
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error not ErrInvalid: %v", err)
			}
			return
		}
		if fl.Method != strings.ToUpper(fl.Method) {
			t.Fatalf("method %q not upper case", fl.Method)
		}
		if fl.PathPrefix != "" && fl.PathPrefix[0] != '/' {
			t.Fatalf("prefix %q accepted", fl.PathPrefix)
		}
		_ = fl.MatchRequest(reqMethod, reqPath)
		_ = fl.MatchTo(to)
	})
}

type testMetrics struct {
	running       []int
	sent, skipped int
}

func (m *testMetrics) Running(n int) { m.running = append(m.running, n) }
func (m *testMetrics) Sent()         { m.sent++ }
func (m *testMetrics) Skipped()      { m.skipped++ }
