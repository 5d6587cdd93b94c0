package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// resilientWeb is a Service with retries and outlier detection on.
const resilientWeb = `
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: web}
spec:
  ports: [{name: http, port: 80, protocol: http}]
---
apiVersion: trellis.dev/v1alpha1
kind: BackendPolicy
metadata: {name: web}
spec:
  targetRefs: [{kind: Service, name: web}]
  retry: {attempts: 2}
  outlierDetection: {consecutiveGatewayErrors: 3}
`

// TestKillOneOfThreeUnderLoad: 500 GETs a second to three endpoints with
// retries and outlier detection on; one endpoint's proxy is killed with
// SIGKILL mid-way. At most 0.1% of the requests may fail (the issue's
// acceptance figure; the test logs the one measured).
func TestKillOneOfThreeUnderLoad(t *testing.T) {
	cp := startControl(t, "")
	cp.apply(t, resilientWeb)
	// 20ms per request: at 500/s some ten requests are in flight, a few
	// of them on the endpoint killed, so resets are retried too, not only
	// connection failures.
	slow := func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(20 * time.Millisecond)
		fmt.Fprint(w, "ok")
	}
	var webs []*sidecar
	for range 3 {
		webs = append(webs, cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "web", slow)}))
	}
	client := cp.proxy(t, proxyConfig{service: "client", upstreams: []string{"web"}})
	eventually(t, 10*time.Second, "three web endpoints and the policy in the client's config", func() bool {
		return client.endpointCount(t, "web") == 3 && strings.Contains(fmt.Sprint(client.config(t)), "outlier")
	})
	c := client.client()
	c.Transport.(*http.Transport).MaxIdleConnsPerHost = 128

	const rate, before, after = 500, 2 * time.Second, 4 * time.Second
	var sent, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	work := make(chan struct{}, rate)
	for range 32 {
		wg.Go(func() {
			for range work {
				sent.Add(1)
				code, body, err := get(c, "http://web/x")
				if err != nil || code != 200 {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("%d %q %v", code, body, err))
				}
			}
		})
	}
	tick := time.NewTicker(time.Second / rate)
	deadline := time.Now().Add(before + after)
	killAt := time.Now().Add(before)
	killed := false
	for now := range tick.C {
		if now.After(deadline) {
			break
		}
		if !killed && now.After(killAt) {
			if err := webs[1].proc.cmd.Process.Kill(); err != nil { // SIGKILL
				t.Fatal(err)
			}
			killed = true
		}
		select {
		case work <- struct{}{}:
		default: // the workers are behind: the request is not sent, nor counted
		}
	}
	tick.Stop()
	close(work)
	wg.Wait()
	n, f := sent.Load(), failed.Load()
	t.Logf("%d requests over %v at %d/s, one of three endpoints killed after %v: %d failed (%.3f%%)", n, before+after, rate, before, f, 100*float64(f)/float64(n))
	if n < int64(rate*(before+after)/time.Second)*8/10 {
		t.Fatalf("only %d requests sent: the load did not reach %d/s", n, rate)
	}
	if float64(f) > 0.001*float64(n) {
		t.Fatalf("%d of %d requests failed (over 0.1%%); first: %v", f, n, firstErr.Load())
	}
}

// TestFailingEndpointEjected: one of three endpoints starts answering 503 to
// every request; under load (~450 req/s) it is ejected by outlier detection
// and draws no more traffic, and retries keep every request successful.
// Round-robin sends it a third of the requests, so five 503s in a row come
// at once and it must be out within 1 s. P2C-EWMA (the default) moves
// traffic away from it after its first failure, before a fifth 503 in a
// row could eject it, and probes it now and then as its failure score
// decays (measured: 2 to 5 requests in 5 s, of ~1,500): there the test
// checks it draws under 1% of the requests.
func TestFailingEndpointEjected(t *testing.T) {
	t.Run("round-robin", func(t *testing.T) { failingEndpointEjected(t, "round-robin", time.Second) })
	t.Run("p2c-ewma", func(t *testing.T) { failingEndpointEjected(t, "p2c-ewma", 0) })
}

// failingEndpointEjected checks the failing endpoint's last request came
// within `within` of its first 503, or, when within is 0, that it drew
// under 1% of the requests.
func failingEndpointEjected(t *testing.T, balancer string, within time.Duration) {
	cp := startControl(t, "")
	cp.apply(t, `
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: web}
spec:
  ports: [{name: http, port: 80, protocol: http}]
---
apiVersion: trellis.dev/v1alpha1
kind: BackendPolicy
metadata: {name: web}
spec:
  targetRefs: [{kind: Service, name: web}]
  loadBalancer: {type: `+balancer+`}
  retry: {attempts: 2}
  outlierDetection: {}
`)
	var failing atomic.Bool
	var badHits atomic.Int64
	var lastBad atomic.Int64 // unix ns of the failing endpoint's last request
	bad := func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			badHits.Add(1)
			lastBad.Store(time.Now().UnixNano())
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, "ok")
	}
	cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "a", nil)})
	cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "b", bad)})
	cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "c", nil)})
	client := cp.proxy(t, proxyConfig{service: "client", upstreams: []string{"web"}})
	eventually(t, 10*time.Second, "three web endpoints and the policy in the client's config", func() bool {
		return client.endpointCount(t, "web") == 3 && strings.Contains(fmt.Sprint(client.config(t)), "outlier")
	})
	c := client.client()
	load := func(d time.Duration) (n, failed int64) {
		var wg sync.WaitGroup
		var sent, bad atomic.Int64
		stop := time.Now().Add(d)
		for range 4 {
			wg.Go(func() {
				for time.Now().Before(stop) {
					sent.Add(1)
					if code, _, err := get(c, "http://web/x"); err != nil || code != 200 {
						bad.Add(1)
					}
					time.Sleep(8 * time.Millisecond) // 4 workers: some 400-500 req/s
				}
			})
		}
		wg.Wait()
		return sent.Load(), bad.Load()
	}
	load(time.Second) // warm up
	flipped := time.Now()
	failing.Store(true)
	n, failed := load(3 * time.Second)
	last := time.Unix(0, lastBad.Load())
	t.Logf("%s: %d requests, %d failed; the failing endpoint drew %d, the last %v after it started failing",
		balancer, n, failed, badHits.Load(), last.Sub(flipped).Round(time.Millisecond))
	if lastBad.Load() == 0 {
		t.Fatal("the failing endpoint drew no request at all: the test proves nothing")
	}
	if within > 0 && last.Sub(flipped) > within {
		t.Fatalf("the failing endpoint still drew traffic %v after it started failing, want ejection within %v", last.Sub(flipped), within)
	}
	if within == 0 && badHits.Load()*100 > n {
		t.Fatalf("the failing endpoint drew %d of %d requests, want under 1%%", badHits.Load(), n)
	}
	if failed > 0 {
		t.Fatalf("%d of %d requests failed; retries should have sent them to healthy endpoints", failed, n)
	}
}
