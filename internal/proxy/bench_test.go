package proxy

import (
	"io"
	"net/http"
	"runtime/metrics"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// BenchmarkHop measures one request through an outbound+inbound proxy pair
// over loopback mTLS to a tiny HTTP/1.1 app, with parallel keep-alive
// clients, for each proxy-to-proxy transport of HTTP/1.1 traffic, and over
// HTTP/2 with both proxies' per-request metrics off (--disable-metrics), so
// metrics' cost is the difference with hop=h2; hop=http1,features is the
// HTTP/1.1 hop with a route's timeouts and retries, a rate limit and an
// authorization policy on (what make bench's trellis path runs). "direct" is the app without
// the mesh. Allocations count the whole process: the
// client, both proxies and the app.
func BenchmarkHop(b *testing.B) {
	ca := newTestCA(b, "trellis.local")
	body := []byte("ok")
	app := startApp(b, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header()["Content-Type"] = textPlain
		_, _ = w.Write(body)
	}))
	srv := startServer(b, ca, "orders", app, port(80, app, meshv1.Protocol_HTTP))
	srvOff := startServerOpts(b, ca, "orders", app, Options{DisableMetrics: true}, port(80, app, meshv1.Protocol_HTTP))
	// The hop a user runs (issue 13): a route with both timeouts, retries
	// within a budget, and on the server a rate limit that admits
	// everything and an ALLOW policy naming the caller.
	srvFeat := startServer(b, ca, "orders", app, port(80, app, meshv1.Protocol_HTTP))
	if err := srvFeat.proxy.Update(&meshv1.Snapshot{Version: "2",
		Inbound: &meshv1.Service{Name: "orders", Namespace: "default", Ports: srvFeat.svc.GetPorts()},
		InboundPolicy: &meshv1.InboundPolicy{
			Authorization: &meshv1.Authorization{Policies: []*meshv1.AuthzPolicy{allowPolicy("default/bench",
				&meshv1.AuthzRule{From: azSrc(spiffeFor("frontend"))})}},
			RateLimits: []*meshv1.RateLimit{{Name: "default/bench", Algorithm: meshv1.RateLimit_TOKEN_BUCKET, Scope: meshv1.RateLimit_WHOLE,
				Limit: &meshv1.RateLimitValue{Requests: 1_000_000, Period: durationpb.New(time.Second), Burst: 100_000}}},
		}}); err != nil {
		b.Fatal(err)
	}
	featSvc := withRoutes(srvFeat.svc, &meshv1.Route{
		Backends: []*meshv1.Backend{{Service: "orders", Weight: 1}},
		Timeouts: &meshv1.RouteTimeouts{Request: durationpb.New(10 * time.Second), BackendRequest: durationpb.New(3 * time.Second)},
	})
	featSvc.BackendPolicy = &meshv1.BackendPolicy{Retry: testRetry(2)}
	run := func(b *testing.B, addr, host string) {
		tr := &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}
		defer tr.CloseIdleConnections()
		b.ReportAllocs()
		b.SetParallelism(8)
		cpu0, g0 := processCPU(b), goroutinesCreated()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			req, _ := http.NewRequest("GET", "http://"+addr+"/bench", nil)
			req.Host = host
			for pb.Next() {
				resp, err := tr.RoundTrip(req)
				if err != nil {
					b.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Errorf("status %d", resp.StatusCode)
					return
				}
			}
		})
		b.StopTimer()
		// CPU time of the whole process (client, proxies, app) per
		// request: steadier than ns/op on a shared machine.
		b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N)/1e3, "cpu-µs/op")
		// Goroutines started per request, whole process: each one is a
		// stack to grow and a scheduling round.
		b.ReportMetric(float64(goroutinesCreated()-g0)/float64(b.N), "goroutines/op")
	}
	b.Run("direct", func(b *testing.B) { run(b, app, "orders") })
	for _, tc := range []struct {
		name      string
		hopH2     bool
		noMetrics bool
		features  bool
	}{{"hop=http1", false, false, false}, {"hop=http1,features", false, false, true},
		{"hop=h2", true, false, false}, {"hop=h2,metrics=off", true, true, false}} {
		b.Run(tc.name, func(b *testing.B) {
			client := startClient(b, ca, Options{DisableMetrics: tc.noMetrics, Identity: spiffeFor("frontend")})
			client.hopH2 = tc.hopH2
			svc := srv.svc
			switch {
			case tc.noMetrics:
				svc = srvOff.svc // both proxies of the hop without metrics
			case tc.features:
				svc = featSvc
			}
			if err := client.Update(snapshot("1", svc)); err != nil {
				b.Fatal(err)
			}
			run(b, client.OutboundAddr(), "orders")
		})
	}
}

// goroutinesCreated is the number of goroutines the process has started.
func goroutinesCreated() uint64 {
	s := []metrics.Sample{{Name: "/sched/goroutines-created:goroutines"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

// processCPU is the process's user+system CPU time so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
