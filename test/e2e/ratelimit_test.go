package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

const rateLimitFeatures = `
apiVersion: trellis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: orders}
spec:
  targetRefs: [{kind: Service, name: orders}]
  rate: {requests: 3, per: 1m}
  scope: SourceIdentity
  overrides:
  - identities: [spiffe://trellis.local/ns/default/sa/batch]
    rate: {requests: 6, per: 1m}
---
apiVersion: trellis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: tenants}
spec:
  targetRefs: [{kind: Service, name: tenants}]
  rate: {requests: 2, per: 1m}
  scope: Header
  header: x-tenant
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: catalog-search}
spec:
  parentRefs: [{group: "", kind: Service, name: catalog}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /search}}]
    backendRefs: [{name: catalog, port: 80}]
  - backendRefs: [{name: catalog, port: 80}]
---
apiVersion: trellis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: catalog-search}
spec:
  targetRefs: [{kind: HTTPRoute, name: catalog-search}]
  algorithm: LeakyBucket
  rate: {requests: 2, per: 1m}
  queue: 0
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: greeter}
spec:
  ports: [{name: grpc, port: 9090, protocol: grpc}]
---
apiVersion: trellis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: greeter}
spec:
  targetRefs: [{kind: Service, name: greeter}]
  rate: {requests: 1, per: 1m}
`

// statusOf sends one GET with headers through c.
func statusOf(t *testing.T, c *http.Client, url string, hdr map[string]string) *http.Response {
	t.Helper()
	req := must(http.NewRequest("GET", url, nil))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	resp.Body.Close()
	return resp
}

// admitted counts the 200s of n GETs.
func admitted(t *testing.T, c *http.Client, url string, n int, hdr map[string]string) int {
	t.Helper()
	ok := 0
	for range n {
		if statusOf(t, c, url, hdr).StatusCode == 200 {
			ok++
		}
	}
	return ok
}

// TestRateLimitFeatures: through real proxies, a Service's per-identity
// limit with an override, a per-header limit, a route's leaky bucket on
// the sending proxy, the 429's fields and a gRPC call's
// RESOURCE_EXHAUSTED.
func TestRateLimitFeatures(t *testing.T) {
	cp := startControl(t, "")
	cp.apply(t, rateLimitFeatures)
	l := listen(t)
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go gs.Serve(l)
	t.Cleanup(gs.Stop)

	orders := cp.proxy(t, proxyConfig{service: "orders", app: appServer(t, "orders", nil)})
	cp.proxy(t, proxyConfig{service: "tenants", app: appServer(t, "tenants", nil)})
	cp.proxy(t, proxyConfig{service: "catalog", app: appServer(t, "catalog", nil)})
	cp.proxy(t, proxyConfig{service: "greeter", app: l.Addr().String()})
	web := cp.proxy(t, proxyConfig{service: "web", upstreams: []string{"greeter"}})
	batch := cp.proxy(t, proxyConfig{service: "batch"})
	eventually(t, 10*time.Second, "the orders proxy to get its rate limit", func() bool {
		return strings.Contains(fmt.Sprint(orders.config(t)), "default/orders")
	})
	wc, bc := web.client(), batch.client()

	t.Run("per identity with an override", func(t *testing.T) {
		if n := admitted(t, wc, "http://orders/", 5, nil); n != 3 {
			t.Errorf("web: %d of 5 admitted, want its own 3", n)
		}
		if n := admitted(t, bc, "http://orders/", 8, nil); n != 6 {
			t.Errorf("batch: %d of 8 admitted, want its override's 6", n)
		}
	})
	t.Run("429 fields", func(t *testing.T) {
		resp := statusOf(t, wc, "http://orders/", nil)
		if resp.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("status %d, want 429", resp.StatusCode)
		}
		want := map[string]string{"Ratelimit-Policy": `"default/orders";q=3;w=60`, "X-Trellis-Error": "RL"}
		for h, v := range want {
			if got := resp.Header.Get(h); got != v {
				t.Errorf("%s: %q, want %q", h, got, v)
			}
		}
		if ra := resp.Header.Get("Retry-After"); ra == "" || ra == "0" {
			t.Errorf("Retry-After %q", ra)
		}
		if rl := resp.Header.Get("Ratelimit"); !strings.HasPrefix(rl, `"default/orders";r=0;t=`) {
			t.Errorf("RateLimit %q", rl)
		}
	})
	t.Run("per header", func(t *testing.T) {
		a := admitted(t, wc, "http://tenants/", 4, map[string]string{"X-Tenant": "a"})
		b := admitted(t, wc, "http://tenants/", 4, map[string]string{"X-Tenant": "b"})
		if a != 2 || b != 2 {
			t.Errorf("tenants a, b admitted %d, %d of 4 each, want 2 each", a, b)
		}
	})
	t.Run("per route on the sending proxy", func(t *testing.T) {
		// A leaky bucket with no queue spaces requests 30 s apart: the
		// first passes, the next three are refused; the route's other
		// rule shares its bucket (the policy targets the whole route).
		if n := admitted(t, wc, "http://catalog/search", 3, nil); n != 1 {
			t.Errorf("/search: %d of 3 admitted, want 1", n)
		}
		if n := admitted(t, wc, "http://catalog/other", 1, nil); n != 0 {
			t.Errorf("the route's other rule: %d admitted, want 0 (one bucket per route)", n)
		}
		resp := must(http.Get("http://" + web.admin + "/metrics"))
		b := new(strings.Builder)
		_, _ = fmt.Fprint(b, readAll(resp))
		if !strings.Contains(b.String(), `trellis_proxy_ratelimit_decisions_total{decision="limited",direction="outbound",policy="default/catalog-search"} 3`) {
			t.Errorf("web's metrics lack the route's limited decisions:\n%s", grepLines(b.String(), "ratelimit"))
		}
	})
	t.Run("gRPC", func(t *testing.T) {
		conn := must(grpc.NewClient(web.upstreams["greeter"], grpc.WithTransportCredentials(insecure.NewCredentials())))
		defer conn.Close()
		hc := healthpb.NewHealthClient(conn)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatalf("first call: %v", err)
		}
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("second call: %v, want RESOURCE_EXHAUSTED", err)
		}
	})
}

func readAll(resp *http.Response) string {
	defer resp.Body.Close()
	b := new(strings.Builder)
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			return b.String()
		}
	}
}

func grepLines(s, sub string) string {
	var out []string
	for l := range strings.SplitSeq(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// relaunch starts the control plane again, as start does, without
// waiting for it: the load goes on meanwhile.
func (cp *controlPlane) relaunch(t *testing.T) {
	t.Helper()
	os.Remove(filepath.Join(cp.dir, "control.json"))
	args := append([]string{"control", "--data-dir", cp.dir, "--grpc-addr", cp.grpc, "--admin-addr", cp.admin, "--metrics-addr", cp.metrics}, cp.extra...)
	cp.proc = start(t, "control", args...)
}

// ---- accuracy ----

// shot is one request of a load run: when it was due (from the run's
// start), where it went, what came back.
type shot struct {
	due, sent time.Duration
	target    int
	code      int
}

// drive offers rates[i] requests a second to urls[i] through c for d, on
// a fixed schedule: the requests due in each 5 ms tick are handed to a
// pool of workers (so a slow answer delays no later request's start
// beyond the pool's size). It returns every shot, after the last answer
// (or a 10 s client timeout).
func drive(c *http.Client, urls []string, rates []int, d time.Duration, onTick func(time.Duration)) []shot {
	var total int
	for _, r := range rates {
		total += int(float64(r) * d.Seconds())
	}
	shots := make([]shot, 0, total)
	work := make(chan int, total)
	// Schedule: request k of target i is due at k/rate.
	for i, r := range rates {
		n := int(float64(r) * d.Seconds())
		for k := range n {
			shots = append(shots, shot{due: time.Duration(float64(k) / float64(r) * float64(time.Second)), target: i})
		}
	}
	slices.SortStableFunc(shots, func(a, b shot) int { return int(a.due - b.due) })
	var wg sync.WaitGroup
	start := time.Now()
	for range 256 {
		wg.Go(func() {
			for j := range work {
				shots[j].sent = time.Since(start)
				resp, err := c.Get(urls[shots[j].target])
				if err != nil {
					shots[j].code = -1
					continue
				}
				resp.Body.Close()
				shots[j].code = resp.StatusCode
			}
		})
	}
	next := 0
	tick := time.NewTicker(5 * time.Millisecond)
	for next < len(shots) {
		<-tick.C
		now := time.Since(start)
		if onTick != nil {
			onTick(now)
		}
		for next < len(shots) && shots[next].due <= now {
			work <- next
			next++
		}
	}
	tick.Stop()
	close(work)
	wg.Wait()
	return shots
}

// admittedRate is the rate of 200s among the shots of target (-1: all)
// sent in [from, to), and the rate offered (all shots sent then).
func admittedRate(shots []shot, target int, from, to time.Duration) (admitted, offered float64, codes map[int]int) {
	codes = map[int]int{}
	n := 0
	for _, s := range shots {
		if s.sent >= from && s.sent < to && (target < 0 || s.target == target) {
			codes[s.code]++
			n++
		}
	}
	secs := (to - from).Seconds()
	return float64(codes[200]) / secs, float64(n) / secs, codes
}

// lateness is the largest delay between a shot's due and sent times: how
// far the generator fell behind its schedule.
func lateness(shots []shot) time.Duration {
	var worst time.Duration
	for _, s := range shots {
		worst = max(worst, s.sent-s.due)
	}
	return worst
}

func within(got, want, frac float64) bool { return got >= want*(1-frac) && got <= want*(1+frac) }

func loadClient(s *sidecar) *http.Client {
	c := s.client()
	tr := c.Transport.(*http.Transport)
	tr.MaxIdleConnsPerHost, tr.MaxConnsPerHost = 256, 256
	return c
}

// TestRateLimitAccuracyLocal: 2,000 requests a second for 10 s against a
// 500/s limit, token bucket then leaky bucket, each on its own service.
// Burst and queue are 100 (200 ms at the rate): enough slack that a proxy
// descheduled for a moment on a busy machine does not lose tokens or slots,
// little enough to add at most 2% to 10 s. Then:
// the admitted rate is within 5% of 500/s; the leaky bucket's output, as
// the app sees it, never bursts above its rate (the most admitted in any
// 100 ms window is reported and bounded).
func TestRateLimitAccuracyLocal(t *testing.T) {
	if testing.Short() {
		t.Skip("20 s of load")
	}
	cp := startControl(t, "")
	cp.apply(t, `
apiVersion: trellis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: tb}
spec:
  targetRefs: [{kind: Service, name: tb}]
  rate: {requests: 500, per: 1s}
  burst: 100
---
apiVersion: trellis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: lb}
spec:
  targetRefs: [{kind: Service, name: lb}]
  algorithm: LeakyBucket
  rate: {requests: 500, per: 1s}
  queue: 100
`)
	apps := map[string]*arrivals{"tb": {}, "lb": {}}
	tb := cp.proxy(t, proxyConfig{service: "tb", app: apps["tb"].app(t, "tb")})
	lb := cp.proxy(t, proxyConfig{service: "lb", app: apps["lb"].app(t, "lb")})
	client := cp.proxy(t, proxyConfig{service: "load"})
	eventually(t, 10*time.Second, "both limits in their proxies", func() bool {
		return strings.Contains(fmt.Sprint(tb.config(t)), "default/tb") && strings.Contains(fmt.Sprint(lb.config(t)), "default/lb")
	})
	c := loadClient(client)
	for _, name := range []string{"tb", "lb"} {
		a := apps[name]
		a.begin()
		shots := drive(c, []string{"http://" + name + "/"}, []int{2000}, 10*time.Second, nil)
		_, offered, _ := admittedRate(shots, -1, 0, 10*time.Second)
		codes := codesOf(shots)
		// What the limit let through, as the app saw it, over the 10 s.
		rate := a.rate(0, 10*time.Second)
		maxIn := a.maxIn(100 * time.Millisecond)
		t.Logf("%s: offered %.1f/s for 10 s (schedule 2000/s; at most %v late), admitted %.1f/s at the app; at most %d in any 100 ms; answers %v",
			name, offered, lateness(shots), rate, maxIn, codes)
		if codes[200]+codes[429] != len(shots) {
			t.Errorf("%s: answers other than 200 and 429: %v", name, codes)
		}
		if offered < 1000 {
			t.Logf("%s: this machine offered only %.0f/s of the 2000/s schedule, under 2× the limit: rates not checked", name, offered)
			continue
		}
		if !within(rate, 500, 0.05) {
			t.Errorf("%s: admitted %.1f/s, want 500/s ± 5%%", name, rate)
		}
		// The leaky bucket releases exactly 50 per 100 ms (in fake time,
		// TestLeakyBucketSynctestRate); what reaches the app adds the
		// hop's scheduling jitter, which bunches some (64 measured on an
		// idle 2-core machine, against 114 for the token bucket's run).
		// Only when the machine kept the schedule: a starved one bunches
		// the hop's deliveries whatever the bucket released.
		if late := lateness(shots); name == "lb" && late > 500*time.Millisecond {
			t.Logf("lb: the generator ran up to %v late (a busy machine): the 100 ms window is not checked", late)
		} else if name == "lb" && maxIn > 75 {
			t.Errorf("leaky bucket: %d reached the app in a 100 ms window, want ≤ 75 (rate 50 and the hop's jitter)", maxIn)
		}
	}
}

// arrivals records when requests reached an app, from a load run's start.
type arrivals struct {
	mu    sync.Mutex
	start time.Time
	at    []time.Duration
}

func (a *arrivals) app(t *testing.T, name string) string {
	return appServer(t, name, func(http.ResponseWriter, *http.Request) {
		a.mu.Lock()
		if !a.start.IsZero() {
			a.at = append(a.at, time.Since(a.start))
		}
		a.mu.Unlock()
	})
}

// begin starts recording, from now.
func (a *arrivals) begin() {
	a.mu.Lock()
	a.start, a.at = time.Now(), a.at[:0]
	a.mu.Unlock()
}

// rate is the arrivals per second in [from, to).
func (a *arrivals) rate(from, to time.Duration) float64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, x := range a.at {
		if x >= from && x < to {
			n++
		}
	}
	return float64(n) / (to - from).Seconds()
}

// maxIn is the most arrivals in any window of length w.
func (a *arrivals) maxIn(w time.Duration) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	ts := slices.Clone(a.at)
	slices.Sort(ts)
	best, j := 0, 0
	for i := range ts {
		for ts[i]-ts[j] >= w {
			j++
		}
		best = max(best, i-j+1)
	}
	return best
}

// codesOf counts every shot's answer.
func codesOf(shots []shot) map[int]int {
	codes := map[int]int{}
	for _, s := range shots {
		codes[s.code]++
	}
	return codes
}

// TestRateLimitGlobal: one 500/s limit across three replicas of inventory,
// offered 2,000/s split 70/20/10 (each replica addressed through a Service
// selecting it). Granted: the total is within 5% of 500/s and the busy
// replica holds most of it. The control plane is then killed: each replica
// falls back to 500 ÷ 3; when it is back, the shares follow demand again.
func TestRateLimitGlobal(t *testing.T) {
	if testing.Short() {
		t.Skip("20 s of load")
	}
	cp := startControl(t, "")
	res := `
apiVersion: trellis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: inventory}
spec:
  targetRefs: [{kind: Service, name: inventory}]
  rate: {requests: 500, per: 1s}
  burst: 25
  mode: Global
`
	for _, v := range []string{"a", "b", "c"} {
		res += fmt.Sprintf("---\napiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata: {name: inv-%s}\nspec:\n  selector: {app: inventory, replica: %s}\n  ports: [{name: http, port: 80}]\n", v, v)
	}
	cp.apply(t, res)
	var reps []*sidecar
	apps := []*arrivals{{}, {}, {}}
	for i, v := range []string{"a", "b", "c"} {
		reps = append(reps, cp.proxy(t, proxyConfig{service: "inventory", labels: "replica=" + v, app: apps[i].app(t, v)}))
	}
	client := cp.proxy(t, proxyConfig{service: "load"})
	eventually(t, 15*time.Second, "three inventory endpoints in every replica's snapshot", func() bool {
		for _, r := range reps {
			if r.endpointCount(t, "inventory") != 3 {
				return false
			}
		}
		return true
	})
	c := loadClient(client)
	urls := []string{"http://inv-a/", "http://inv-b/", "http://inv-c/"}
	rates := []int{1400, 400, 200}
	const (
		measureFrom, measureTo = 1 * time.Second, 11 * time.Second
		killAt, restartAt      = 11 * time.Second, 15 * time.Second
		degradedFrom           = 12 * time.Second
		// Back: the control plane starts (~1 s), proxies re-register
		// (a heartbeat, up to 5 s), the quota stream reconnects (backoff
		// ≤ 2 s) and reports once (0.5 s) before the first grant.
		recoveredFrom, end = 23 * time.Second, 26 * time.Second
	)
	var killed, restarted bool
	for _, a := range apps {
		a.begin()
	}
	shots := drive(c, urls, rates, end, func(now time.Duration) {
		switch {
		case !killed && now >= killAt:
			killed = true
			cp.kill(t)
		case !restarted && now >= restartAt:
			restarted = true
			cp.relaunch(t)
		}
	})
	_, offered, _ := admittedRate(shots, -1, measureFrom, measureTo)
	t.Logf("offered %.1f/s (schedule 2000/s split 70/20/10; at most %v late); answers %v", offered, lateness(shots), codesOf(shots))
	// Admitted: as each replica's app saw it.
	phase := func(name string, from, to time.Duration) []float64 {
		var out []float64
		for _, a := range apps {
			out = append(out, a.rate(from, to))
		}
		t.Logf("%s [%v, %v): admitted per replica a/b/c %.1f / %.1f / %.1f per s, total %.1f", name, from, to, out[0], out[1], out[2], out[0]+out[1]+out[2])
		return out
	}
	granted := phase("granted", measureFrom, measureTo)
	degraded := phase("control plane down", degradedFrom, restartAt)
	recovered := phase("recovered", recoveredFrom, end)
	if offered < 1000 {
		t.Logf("this machine offered only %.0f/s of the 2000/s schedule, under 2× the limit: rates not checked", offered)
		return
	}
	if total := granted[0] + granted[1] + granted[2]; !within(total, 500, 0.05) {
		t.Errorf("granted: admitted %.1f/s in all, want 500/s ± 5%%", total)
	}
	// Granted: a ≈ 500 × (0.1/3 + 0.9 × 0.7) ≈ 332.
	if granted[0] < 300 {
		t.Errorf("granted: the 70%% replica admitted %.1f/s, want most of the limit (≈ 332)", granted[0])
	}
	// Down: the safe local share, 500/3 each (the quiet replica offers only 200).
	if !within(degraded[0], 500.0/3, 0.1) {
		t.Errorf("control plane down: the busy replica admitted %.1f/s, want its local share 167 ± 10%%", degraded[0])
	}
	// Whoever has reconnected, replicas on their safe share and granted
	// ones together stay within the limit.
	if total := recovered[0] + recovered[1] + recovered[2]; total > 500*1.05 {
		t.Errorf("recovered: admitted %.1f/s in all, over the 500/s limit", total)
	}
	if recovered[0] < 300 {
		t.Errorf("recovered: the busy replica admitted %.1f/s, want its granted ≈ 332 again", recovered[0])
	}
}
