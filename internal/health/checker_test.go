package health

import (
	"context"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// scripted is a probe whose results a test gives in order; after the
// script it repeats the last result. It records when each check ran.
type scripted struct {
	mu      sync.Mutex
	results []string
	at      []time.Duration
	start   time.Time
}

func (s *scripted) check(context.Context) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.at = append(s.at, time.Since(s.start))
	r := s.results[0]
	if len(s.results) > 1 {
		s.results = s.results[1:]
	}
	return r
}

func (s *scripted) close() {}

func newScripted(t *testing.T, spec Spec, results ...string) (*Checker, *scripted, *[]Status) {
	t.Helper()
	var changes []Status
	c, err := New(spec, Options{OnChange: func(st Status) { changes = append(changes, st) }})
	if err != nil {
		t.Fatal(err)
	}
	pr := &scripted{results: results, start: time.Now()}
	c.probe = pr
	return c, pr, &changes
}

func testSpec() Spec {
	return Spec{Type: TCP, Addr: "127.0.0.1:1", Interval: 5 * time.Second, Timeout: time.Second, HealthyThreshold: 2, UnhealthyThreshold: 3}
}

// TestThresholds walks the verdict through start, a first pass, failures
// below and at the unhealthy threshold, and passes back to healthy.
func TestThresholds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, _, changes := newScripted(t, testSpec(),
			"connect refused", "connect refused", "", // the first pass is enough
			"", "HTTP 503", "HTTP 503", // two failures: still healthy
			"", "HTTP 503", "HTTP 503", "HTTP 500", // third in a row: unhealthy
			"", "", // two passes: healthy again
		)
		if st := c.Status(); st.Healthy || st.Reason != ReasonStarting {
			t.Fatalf("before any check: %+v, want unhealthy %q", st, ReasonStarting)
		}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go c.Run(ctx)
		want := []struct {
			after time.Duration
			st    Status
		}{
			{0, Status{Reason: "connect refused"}},
			{1 * time.Second, Status{Reason: "connect refused"}},
			{2 * time.Second, Status{Healthy: true}},
			{7 * time.Second, Status{Healthy: true}},
			{12 * time.Second, Status{Healthy: true}},
			{17 * time.Second, Status{Healthy: true}},
			{22 * time.Second, Status{Healthy: true}},
			{27 * time.Second, Status{Healthy: true}},
			{32 * time.Second, Status{Healthy: true}},
			{37 * time.Second, Status{Reason: "HTTP 500"}},
			{42 * time.Second, Status{Reason: "HTTP 500"}},
			{47 * time.Second, Status{Healthy: true}},
		}
		start := time.Now()
		for i, w := range want {
			time.Sleep(w.after - time.Since(start))
			synctest.Wait()
			if st := c.Status(); st != w.st {
				t.Fatalf("check %d at %s: %+v, want %+v", i, w.after, st, w.st)
			}
		}
		wantChanges := []Status{{Reason: "connect refused"}, {Healthy: true}, {Reason: "HTTP 500"}, {Healthy: true}}
		if len(*changes) != len(wantChanges) {
			t.Fatalf("changes %+v, want %+v", *changes, wantChanges)
		}
		for i := range wantChanges {
			if (*changes)[i] != wantChanges[i] {
				t.Fatalf("changes %+v, want %+v", *changes, wantChanges)
			}
		}
	})
}

// TestStartPace: until a check passes, checks run every StartInterval,
// then every interval.
func TestStartPace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, pr, _ := newScripted(t, testSpec(), "connect refused", "connect refused", "connect refused", "")
		ctx, cancel := context.WithCancel(t.Context())
		go c.Run(ctx)
		time.Sleep(14 * time.Second)
		synctest.Wait()
		cancel()
		want := []time.Duration{0, time.Second, 2 * time.Second, 3 * time.Second, 8 * time.Second, 13 * time.Second}
		pr.mu.Lock()
		defer pr.mu.Unlock()
		if len(pr.at) != len(want) {
			t.Fatalf("checks at %v, want %v", pr.at, want)
		}
		for i := range want {
			if pr.at[i] != want[i] {
				t.Fatalf("checks at %v, want %v", pr.at, want)
			}
		}
	})
}

// TestConfigureKeepsVerdict: a new spec keeps the verdict and checks at
// once with the new probe.
func TestConfigureKeepsVerdict(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, _, _ := newScripted(t, testSpec(), "")
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go c.Run(ctx)
		synctest.Wait()
		if !c.Status().Healthy {
			t.Fatal("not healthy after a pass")
		}
		s := testSpec()
		s.Interval = 10 * time.Second
		next := &scripted{results: []string{"HTTP 503"}, start: time.Now()}
		c.makeProbe = func(Spec) (probe, error) { return next, nil }
		if err := c.Configure(s); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond) // the reconfigured loop checks at once
		synctest.Wait()
		if st := c.Status(); !st.Healthy {
			t.Fatalf("one failure after a reconfigure: %+v, want still healthy", st)
		}
		next.mu.Lock()
		n := len(next.at)
		next.mu.Unlock()
		if n != 1 {
			t.Fatalf("%d checks right after Configure, want 1", n)
		}
	})
}

func TestSpecValidate(t *testing.T) {
	for _, tc := range []struct {
		s    Spec
		want string
	}{
		{Spec{Addr: "nohost"}, "address"},
		{Spec{Type: HTTP, Addr: "127.0.0.1:1", Path: "x"}, "must start with /"},
		{Spec{Addr: "127.0.0.1:1", Interval: time.Second, Timeout: 2 * time.Second}, "must not exceed"},
	} {
		_, err := New(tc.s, Options{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want error with %q", tc.s, err, tc.want)
		}
	}
}
