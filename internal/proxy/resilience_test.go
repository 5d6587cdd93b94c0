package proxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/lb"
)

// flakyApp answers with the status in status (200 when 0) after reading
// the whole request body, and counts requests and the bodies it saw.
type flakyApp struct {
	status atomic.Int32
	grpc   atomic.Int32 // a Grpc-Status header when non-zero
	delay  atomic.Int64 // ns to wait before answering
	hits   atomic.Int64
	mu     sync.Mutex
	bodies []string
}

func (a *flakyApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	a.hits.Add(1)
	a.mu.Lock()
	a.bodies = append(a.bodies, string(b))
	a.mu.Unlock()
	if d := a.delay.Load(); d > 0 {
		select {
		case <-time.After(time.Duration(d)):
		case <-r.Context().Done():
			return
		}
	}
	if g := a.grpc.Load(); g != 0 {
		w.Header().Set("Grpc-Status", strconv.Itoa(int(g)))
	}
	if s := a.status.Load(); s != 0 {
		w.WriteHeader(int(s))
	}
	_, _ = io.WriteString(w, "body:"+string(b))
}

// flakyReplicas starts one proxy and flakyApp per replica of service name.
func flakyReplicas(t *testing.T, ca *testCA, name string, n int) (*meshv1.Service, []*flakyApp, []*server) {
	t.Helper()
	svc := &meshv1.Service{Name: name, Namespace: "default"}
	var apps []*flakyApp
	var ss []*server
	for range n {
		a := &flakyApp{}
		addr := startApp(t, a)
		s := startServer(t, ca, name, addr, port(80, addr, meshv1.Protocol_HTTP))
		svc.Ports = s.svc.Ports
		svc.Endpoints = append(svc.Endpoints, s.svc.Endpoints...)
		apps = append(apps, a)
		ss = append(ss, s)
	}
	return svc, apps, ss
}

// testRetry is a defaulted retry policy (as the compiler sends one) with
// short backoff.
func testRetry(attempts uint32) *meshv1.RetryPolicy {
	return &meshv1.RetryPolicy{
		Attempts:     attempts,
		StatusCodes:  []uint32{503},
		BackoffBase:  durationpb.New(time.Millisecond),
		BackoffMax:   durationpb.New(5 * time.Millisecond),
		Budget:       &meshv1.RetryBudget{RetryRatio: 0.2, MinRetriesPerSecond: 10, Ttl: durationpb.New(10 * time.Second)},
		MaxBodyBytes: 64 << 10,
	}
}

// metricValue sums the samples of metric whose labels contain every one of
// labels (`name="value"`).
func metricValue(t *testing.T, p *Proxy, metric string, labels ...string) float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	p.adminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	var sum float64
lines:
	for l := range strings.SplitSeq(rec.Body.String(), "\n") {
		rest, ok := strings.CutPrefix(l, metric+"{")
		if !ok {
			continue
		}
		for _, want := range labels {
			if !strings.Contains(rest, want) {
				continue lines
			}
		}
		_, v, _ := strings.Cut(rest, "} ")
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", l, err)
		}
		sum += f
	}
	return sum
}

func clientFor(t *testing.T, ca *testCA, svc *meshv1.Service, bp *meshv1.BackendPolicy) (*Proxy, *http.Client) {
	t.Helper()
	svc.BackendPolicy = bp
	client := startClient(t, ca, Options{Balancer: lb.RoundRobin})
	if err := client.Update(snapshot("1", svc)); err != nil {
		t.Fatal(err)
	}
	return client, proxyClient(client)
}

func send(t *testing.T, c *http.Client, method, url string, body io.Reader) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b)
}

// TestRetryBudgetBoundsLoad: a backend answering 503 to every request,
// under concurrent load, with 3 retries allowed per request, sees at most
// (1 + ratio) × requests + minRetriesPerSecond × ttl attempts: the budget,
// not the attempts, decides.
func TestRetryBudgetBoundsLoad(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	svc, apps, _ := flakyReplicas(t, ca, "orders", 1)
	apps[0].status.Store(http.StatusServiceUnavailable)
	client, c := clientFor(t, ca, svc, &meshv1.BackendPolicy{Retry: testRetry(3)})
	const workers, each = 8, 60
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				if code, _ := send(t, c, "GET", "http://orders/x", nil); code != http.StatusServiceUnavailable {
					t.Errorf("status %d, want the backend's 503", code)
					return
				}
			}
		})
	}
	wg.Wait()
	requests := workers * each
	limit := int(1.2*float64(requests)) + 10*10
	hits := int(apps[0].hits.Load())
	t.Logf("%d requests, %d attempts reached the backend (budget limit %d; without a budget %d)", requests, hits, limit, 4*requests)
	if hits > limit {
		t.Fatalf("backend saw %d attempts for %d requests, over the budget's %d", hits, requests, limit)
	}
	if hits < requests+100 {
		t.Fatalf("backend saw %d attempts for %d requests: the budget's minimum of 100 retries was not used", hits, requests)
	}
	if got := metricValue(t, client, "trellis_proxy_retries_total", `result="budget_exhausted"`); got == 0 {
		t.Error("no retry counted as refused by the budget")
	}
	if got := metricValue(t, client, "trellis_proxy_retries_total", `result="sent"`); int(got) != hits-requests {
		t.Errorf("retries_total{sent} = %v, want %d", got, hits-requests)
	}
}

// TestRetryPolicyMethodsAndBodies: with one replica answering 503 and
// round-robin, every retried request succeeds on the other. POST is not
// retried unless the policy allows it; then its body, fixed-length or
// chunked, is replayed intact; a body over the bound is sent once.
func TestRetryPolicyMethodsAndBodies(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	svc, apps, _ := flakyReplicas(t, ca, "orders", 2)
	apps[0].status.Store(http.StatusServiceUnavailable)
	pol := testRetry(1)
	pol.MaxBodyBytes = 32
	_, c := clientFor(t, ca, svc, &meshv1.BackendPolicy{Retry: pol})
	for i := range 6 {
		if code, _ := send(t, c, "GET", "http://orders/x", nil); code != http.StatusOK {
			t.Fatalf("GET %d: %d, want 200 after a retry", i, code)
		}
		if code, _ := send(t, c, "PUT", "http://orders/x", strings.NewReader("put-body")); code != http.StatusOK {
			t.Fatalf("PUT %d: %d, want 200 after a retry (PUT is idempotent)", i, code)
		}
	}
	failed := 0
	for range 6 {
		if code, _ := send(t, c, "POST", "http://orders/x", strings.NewReader("pay")); code == http.StatusServiceUnavailable {
			failed++
		}
	}
	if failed == 0 {
		t.Fatal("a POST was retried though the policy does not allow non-idempotent retries")
	}

	pol = testRetry(1)
	pol.MaxBodyBytes = 32
	pol.RetryNonIdempotent = true
	_, c = clientFor(t, ca, svc, &meshv1.BackendPolicy{Retry: pol})
	for i := range 6 {
		body := "charge " + strconv.Itoa(i)
		code, got := send(t, c, "POST", "http://orders/x", strings.NewReader(body))
		if code != http.StatusOK || got != "body:"+body {
			t.Fatalf("POST %d: %d %q, want 200 with the body replayed", i, code, got)
		}
		// No Content-Length: a chunked body, copied as the first attempt sends it.
		code, got = send(t, c, "POST", "http://orders/x", io.MultiReader(strings.NewReader("chunk "), strings.NewReader(strconv.Itoa(i))))
		if code != http.StatusOK || got != "body:chunk "+strconv.Itoa(i) {
			t.Fatalf("chunked POST %d: %d %q, want 200 with the body replayed", i, code, got)
		}
	}
	big := strings.Repeat("x", 33)
	failed = 0
	for range 6 {
		if code, _ := send(t, c, "POST", "http://orders/x", strings.NewReader(big)); code == http.StatusServiceUnavailable {
			failed++
		}
	}
	if failed == 0 {
		t.Fatal("a body over max_body_bytes was retried")
	}
}

// TestRetryGRPCStatusAndPerTryTimeout: a trailers-only gRPC answer with a
// listed status is retried, an unlisted one is not; an attempt slower than
// the per-try timeout is abandoned and retried on the other replica.
func TestRetryGRPCStatusAndPerTryTimeout(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	svc, apps, _ := flakyReplicas(t, ca, "orders", 2)
	apps[0].grpc.Store(14) // UNAVAILABLE
	pol := testRetry(1)
	pol.GrpcStatuses = []uint32{14}
	pol.PerTryTimeout = durationpb.New(200 * time.Millisecond)
	_, c := clientFor(t, ca, svc, &meshv1.BackendPolicy{Retry: pol})
	for i := range 4 {
		req, _ := http.NewRequest("GET", "http://orders/x", nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.Header.Get("Grpc-Status") != "" {
			t.Fatalf("request %d: got grpc-status %s, want the retry's clean answer", i, resp.Header.Get("Grpc-Status"))
		}
	}
	apps[0].grpc.Store(5) // NOT_FOUND: not listed
	seen := false
	for range 4 {
		req, _ := http.NewRequest("GET", "http://orders/x", nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		seen = seen || resp.Header.Get("Grpc-Status") == "5"
	}
	if !seen {
		t.Fatal("an unlisted gRPC status was retried")
	}
	apps[0].grpc.Store(0)
	apps[0].delay.Store(int64(5 * time.Second))
	for i := range 4 {
		start := time.Now()
		code, _ := send(t, c, "GET", "http://orders/x", nil)
		if code != http.StatusOK || time.Since(start) > 2*time.Second {
			t.Fatalf("request %d: %d after %v, want 200 from the other replica after the 200ms per-try timeout", i, code, time.Since(start))
		}
	}
}

// TestCircuitBreakerOverflow: over max_requests a request fails fast with
// 503 UO, counted; once the slow request finishes, requests pass again.
func TestCircuitBreakerOverflow(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	svc, apps, _ := flakyReplicas(t, ca, "orders", 1)
	apps[0].delay.Store(int64(500 * time.Millisecond))
	client, c := clientFor(t, ca, svc, &meshv1.BackendPolicy{CircuitBreaker: &meshv1.CircuitBreaker{MaxConnections: 100, MaxPendingRequests: 100, MaxRequests: 1}})
	slow := make(chan int, 1)
	go func() { code, _ := send(t, c, "GET", "http://orders/slow", nil); slow <- code }()
	for apps[0].hits.Load() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	req, _ := http.NewRequest("GET", "http://orders/x", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get(headerError) != "UO" || time.Since(start) > 300*time.Millisecond {
		t.Fatalf("second request: %d %s after %v, want 503 UO at once", resp.StatusCode, resp.Header.Get(headerError), time.Since(start))
	}
	if code := <-slow; code != http.StatusOK {
		t.Fatalf("the admitted request: %d", code)
	}
	apps[0].delay.Store(0)
	if code, _ := send(t, c, "GET", "http://orders/x", nil); code != http.StatusOK {
		t.Fatalf("after the slot freed: %d", code)
	}
	if got := metricValue(t, client, "trellis_proxy_circuit_breaker_overflows_total", `destination_service="orders.default"`, `limit="max_requests"`); got != 1 {
		t.Errorf("overflows_total = %v, want 1", got)
	}
	if got := metricValue(t, client, "trellis_requests_total", `response_flags="UO"`); got != 1 {
		t.Errorf("requests_total{UO} = %v, want 1", got)
	}
}

// TestOutlierEjectsFailingReplica: one of three replicas starts answering
// 503 to everything; under steady traffic it is ejected within a second and
// then draws no traffic, while retries keep every request successful.
func TestOutlierEjectsFailingReplica(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	svc, apps, _ := flakyReplicas(t, ca, "orders", 3)
	client, c := clientFor(t, ca, svc, &meshv1.BackendPolicy{
		Retry: testRetry(2),
		OutlierDetection: &meshv1.OutlierDetection{
			Consecutive_5Xx: 5, ConsecutiveGatewayErrors: 5,
			BaseEjectionTime: durationpb.New(30 * time.Second), MaxEjectionTime: durationpb.New(300 * time.Second), MaxEjectionPercent: 10,
		},
	})
	for range 30 {
		send(t, c, "GET", "http://orders/warm", nil)
	}
	apps[1].status.Store(http.StatusServiceUnavailable)
	flipped := time.Now()
	var ejectedAt time.Duration
	for i := 0; time.Since(flipped) < 3*time.Second; i++ {
		if code, _ := send(t, c, "GET", "http://orders/x", nil); code != http.StatusOK {
			t.Fatalf("request %d: %d, want 200 (retried on a healthy replica)", i, code)
		}
		if ejectedAt == 0 && metricValue(t, client, "trellis_proxy_outlier_ejections_total") == 1 {
			ejectedAt = time.Since(flipped)
			break
		}
		time.Sleep(2 * time.Millisecond) // ~500 req/s
	}
	if ejectedAt == 0 || ejectedAt > time.Second {
		t.Fatalf("failing replica not ejected within 1s (ejected after %v)", ejectedAt)
	}
	t.Logf("ejected %v after it started failing", ejectedAt)
	before := apps[1].hits.Load()
	for i := range 60 {
		if code, _ := send(t, c, "GET", "http://orders/x", nil); code != http.StatusOK {
			t.Fatalf("request %d after ejection: %d", i, code)
		}
	}
	if got := apps[1].hits.Load() - before; got != 0 {
		t.Fatalf("the ejected replica drew %d of 60 requests", got)
	}
}
