package quota

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"trellis.dev/trellis/internal/ratelimit"
)

// TestGlobalAccuracySynctest is the acceptance run in fake time, where no
// scheduler can skew it: three replicas of a 500/s token-bucket limit
// (burst 25) offered 2,000/s split 70/20/10 on a fixed 1 ms schedule, each
// reporting to one allocator. 10 s granted: the total within 5% of 500/s,
// the busy replica holding most; then the control plane down for 4 s: each
// on 500/3; then back for 5 s: granted shares again.
func TestGlobalAccuracySynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		epoch := time.Now()
		clock := func() int64 { return int64(time.Since(epoch)) }
		cp := &controlPlane{a: NewAllocator(AllocatorOptions{})}
		ctx, cancel := context.WithCancel(context.Background())
		spec := ratelimit.Spec{Limit: ratelimit.Limit{Requests: 500, Period: time.Second, Burst: 25}}
		offered := []int{1400, 400, 200}
		entries := make([]*ratelimit.Entry, 3)
		var wg sync.WaitGroup
		for i := range entries {
			reg := ratelimit.NewRegistry(clock)
			reg.SetReplicas(3)
			entries[i] = reg.Bind("inbound service default/inventory", spec, true)
			wg.Go(func() { _ = Run(ctx, ClientOptions{NodeID: string(rune('a' + i)), Open: cp.open, Limits: reg}) })
		}
		// run offers the load for d and returns each replica's admitted rate.
		run := func(d time.Duration) []float64 {
			counts := make([]int, 3)
			sent := make([]int, 3)
			start := time.Now()
			for tick := time.Duration(0); tick < d; tick += time.Millisecond {
				for i, r := range offered {
					// Fixed schedule: request k of replica i is due at k/r.
					for due := int(float64(tick+time.Millisecond) * float64(r) / float64(time.Second)); sent[i] < due; sent[i]++ {
						if entries[i].Decide("", "", clock()).Allowed {
							counts[i]++
						}
					}
				}
				time.Sleep(time.Until(start.Add(tick + time.Millisecond)))
			}
			out := make([]float64, 3)
			for i, c := range counts {
				out[i] = float64(c) / d.Seconds()
			}
			return out
		}
		sum := func(r []float64) float64 { return r[0] + r[1] + r[2] }
		granted := run(10 * time.Second)
		cp.setDown(true)
		run(500 * time.Millisecond) // the stream breaks; shares fall back
		degraded := run(3500 * time.Millisecond)
		cp.setDown(false)
		run(3 * time.Second) // reconnect (backoff ≤ 2 s, then a report interval) and first grant
		recovered := run(3 * time.Second)
		t.Logf("granted 10 s: a/b/c %.1f / %.1f / %.1f, total %.1f/s", granted[0], granted[1], granted[2], sum(granted))
		t.Logf("control plane down: a/b/c %.1f / %.1f / %.1f, total %.1f/s", degraded[0], degraded[1], degraded[2], sum(degraded))
		t.Logf("recovered: a/b/c %.1f / %.1f / %.1f, total %.1f/s", recovered[0], recovered[1], recovered[2], sum(recovered))
		if tot := sum(granted); tot < 475 || tot > 525 {
			t.Errorf("granted: %.1f/s in all, want 500 ± 5%%", tot)
		}
		if granted[0] < 300 {
			t.Errorf("granted: the 70%% replica admitted %.1f/s, want most of the limit", granted[0])
		}
		for i, r := range degraded {
			if want := min(500.0/3, float64(offered[i])); r < want*0.95 || r > want*1.05+1 {
				t.Errorf("down: replica %d admitted %.1f/s, want its safe share %.1f", i, r, want)
			}
		}
		if tot := sum(recovered); tot < 475 || tot > 525 || recovered[0] < 300 {
			t.Errorf("recovered: %v (total %.1f), want granted shares again", recovered, tot)
		}
		cancel()
		wg.Wait()
	})
}
