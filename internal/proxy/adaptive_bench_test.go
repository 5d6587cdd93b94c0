package proxy

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// poolApp is an app of fixed capacity: workers serve one request each for
// service; the others wait their turn (as a thread pool's queue does) until
// their client gives up.
type poolApp struct {
	workers chan struct{}
	service time.Duration
}

func (a *poolApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	select {
	case a.workers <- struct{}{}:
	case <-r.Context().Done():
		return
	}
	time.Sleep(a.service)
	<-a.workers
	_, _ = w.Write([]byte("ok"))
}

// overloadStep is one time step of a run.
type overloadStep struct {
	offered, admitted, shed, failed int
	lat                             []time.Duration // of admitted requests
	// open are the ages of the requests still unanswered when the run
	// ended (abandoned): lower bounds of their latency.
	open  []time.Duration
	limit uint32
}

// pct is the p-th percentile of the admitted requests' latency, the
// unanswered ones counted at their age (so, with any, a lower bound).
func (s *overloadStep) pct(p float64) time.Duration {
	all := append(slices.Clone(s.lat), s.open...)
	if len(all) == 0 {
		return 0
	}
	slices.Sort(all)
	return all[min(len(all)-1, int(p*float64(len(all))))]
}

// pctString is pct, marked ">=" when it is a lower bound.
func (s *overloadStep) pctString(p float64) string {
	v := s.pct(p).Round(100 * time.Microsecond).String()
	if len(s.open) > 0 && p*float64(len(s.lat)+len(s.open)) >= float64(len(s.lat)) {
		v = ">=" + v
	}
	return v
}

// offer sends rate req/s (open loop: on schedule, whatever the answers)
// for d through c, and returns one overloadStep per step, each request
// counted in the step it was sent in. Requests still unanswered at the end
// are abandoned.
func offer(c *http.Client, target string, rate int, d, step time.Duration, limit func() uint32) []overloadStep {
	steps := make([]overloadStep, int(d/step))
	var mu sync.Mutex
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	start := time.Now()
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	nextStep := start.Add(step)
	for i := 0; i < len(steps); {
		now := <-tick.C
		if !now.Before(nextStep) {
			mu.Lock()
			steps[i].limit = limit()
			mu.Unlock()
			i++
			nextStep = nextStep.Add(step)
			continue
		}
		k := i
		mu.Lock()
		steps[k].offered++
		mu.Unlock()
		wg.Go(func() {
			req, _ := http.NewRequestWithContext(ctx, "GET", target, nil)
			sent := time.Now()
			resp, err := c.Do(req)
			if err != nil {
				mu.Lock()
				if ctx.Err() != nil {
					steps[k].open = append(steps[k].open, time.Since(sent))
				} else {
					steps[k].failed++
				}
				mu.Unlock()
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			el := time.Since(sent)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case resp.StatusCode == 200:
				steps[k].admitted++
				steps[k].lat = append(steps[k].lat, el)
			case resp.Header.Get("X-Trellis-Error") == "CL":
				steps[k].shed++
			default:
				steps[k].failed++
			}
		})
	}
	// Give the last step's requests their service time, then abandon what
	// is left (the run without a limit leaves thousands queued).
	time.Sleep(time.Second)
	cancel()
	wg.Wait()
	return steps
}

func printSteps(w io.Writer, title string, steps []overloadStep, step time.Duration) {
	fmt.Fprintf(w, "\n%s\n%6s %8s %8s %8s %8s %10s %10s %12s %12s %6s\n", title, "t", "offered", "admitted", "shed", "failed", "unanswered", "goodput/s", "p50", "p99", "limit")
	for i, s := range steps {
		fmt.Fprintf(w, "%6s %8d %8d %8d %8d %10d %10.0f %12s %12s %6d\n", time.Duration(i+1)*step, s.offered, s.admitted, s.shed, s.failed, len(s.open),
			float64(s.admitted)/step.Seconds(), s.pctString(0.5), s.pctString(0.99), s.limit)
	}
}

// merged is the steps from..to as one.
func merged(steps []overloadStep) overloadStep {
	var m overloadStep
	for _, s := range steps {
		m.offered += s.offered
		m.admitted += s.admitted
		m.shed += s.shed
		m.failed += s.failed
		m.lat = append(m.lat, s.lat...)
		m.open = append(m.open, s.open...)
	}
	return m
}

// BenchmarkAdaptiveConcurrencyOverload is issue 7's adaptive concurrency
// benchmark, one run of ~40 s (run it with -benchtime 1x):
//
//	go test -run '^$' -bench AdaptiveConcurrencyOverload -benchtime 1x ./internal/proxy/
//
// An app with 16 workers × 50 ms (capacity 320 req/s) behind a real
// inbound proxy (mTLS from a real client proxy, all on loopback). First
// its unloaded p99 (20% of capacity); then 3× its capacity, open loop,
// without a limit (the queue, and p99, grow for as long as the overload
// lasts) and with a ConcurrencyPolicy (defaults; the limit settles near
// the app's concurrency, the excess is shed with 503 CL), then back to
// half its capacity (the limit climbs again). It prints both curves per
// second and reports the admitted p99 over the unloaded p99 and the
// goodput over capacity of the limited run's last 10 s (targets: ≤ 2,
// ≥ 0.9).
func BenchmarkAdaptiveConcurrencyOverload(b *testing.B) {
	const (
		workers  = 16
		service  = 50 * time.Millisecond
		capacity = int(workers * time.Second / service)
		step     = time.Second
	)
	ca := newTestCA(b, "trellis.local")
	run := func(policy *meshv1.InboundPolicy, phases ...struct {
		rate int
		d    time.Duration
	}) [][]overloadStep {
		app := &poolApp{workers: make(chan struct{}, workers), service: service}
		srv := startServer(b, ca, "api", startApp(b, app))
		if policy != nil {
			if err := srv.proxy.Update(&meshv1.Snapshot{Version: "2", Inbound: &meshv1.Service{Name: "api", Namespace: "default"}, InboundPolicy: policy}); err != nil {
				b.Fatal(err)
			}
		}
		client := startClient(b, ca, Options{})
		if err := client.Update(snapshot("1", srv.svc)); err != nil {
			b.Fatal(err)
		}
		c := &http.Client{Transport: &http.Transport{
			Proxy:               http.ProxyURL(&url.URL{Scheme: "http", Host: client.OutboundAddr()}),
			MaxIdleConnsPerHost: 4096,
		}}
		limit := func() uint32 { l, _ := srv.proxy.ConcurrencyStatus(); return l }
		var out [][]overloadStep
		for _, ph := range phases {
			out = append(out, offer(c, "http://api/", ph.rate, ph.d, step, limit))
		}
		c.CloseIdleConnections()
		return out
	}
	type phase = struct {
		rate int
		d    time.Duration
	}
	for b.Loop() {
		w := os.Stdout
		base := run(nil, phase{capacity / 5, 3 * time.Second})[0]
		all := merged(base)
		unloaded := all.pct(0.99)
		fmt.Fprintf(w, "\napp: %d workers x %v = %d req/s; unloaded (at %d req/s) p50 %v, p99 %v\n", workers, service, capacity, capacity/5,
			all.pct(0.5).Round(100*time.Microsecond), unloaded.Round(100*time.Microsecond))
		none := run(nil, phase{3 * capacity, 8 * time.Second})[0]
		printSteps(w, fmt.Sprintf("without a limit, %d req/s offered (3x capacity):", 3*capacity), none, step)
		pol := &meshv1.InboundPolicy{Concurrency: &meshv1.ConcurrencyPolicy{}}
		limited := run(pol, phase{3 * capacity, 15 * time.Second}, phase{capacity / 2, 4 * time.Second})
		printSteps(w, fmt.Sprintf("with a ConcurrencyPolicy (defaults), %d req/s offered (3x capacity):", 3*capacity), limited[0], step)
		printSteps(w, fmt.Sprintf("then %d req/s (half capacity):", capacity/2), limited[1], step)
		steady := merged(limited[0][5:])
		ratio := float64(steady.pct(0.99)) / float64(unloaded)
		goodput := float64(steady.admitted) / (float64(len(limited[0][5:])) * step.Seconds()) / float64(capacity)
		fmt.Fprintf(w, "\nlimited, last 10 s: admitted p99 %v = %.2fx unloaded p99 (target <= 2); goodput %.0f%% of capacity (target >= 90%%)\n",
			steady.pct(0.99), ratio, 100*goodput)
		last := &none[len(none)-1]
		fmt.Fprintf(w, "unlimited, last second: p99 %s = %.1fx unloaded p99 (and growing for as long as the overload lasts)\n", last.pctString(0.99), float64(last.pct(0.99))/float64(unloaded))
		b.ReportMetric(ratio, "p99/unloaded")
		b.ReportMetric(goodput, "goodput/capacity")
	}
}
