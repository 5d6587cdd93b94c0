package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"image/color"
	"image/png"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"google.golang.org/grpc"

	"trellis.dev/trellis/internal/config"
)

func TestParseFortioRealOutput(t *testing.T) {
	b, err := os.ReadFile("testdata/fortio.json") // fortio 1.66.5 load -json
	if err != nil {
		t.Fatal(err)
	}
	r, err := parseFortio(b, okHTTP)
	if err != nil {
		t.Fatal(err)
	}
	if r.requests != 94 || r.errors != 0 {
		t.Fatalf("requests, errors = %d, %d; want 94, 0", r.requests, r.errors)
	}
	if r.qps < 75.4 || r.qps > 75.5 {
		t.Fatalf("qps = %v, want 75.42", r.qps)
	}
	// Fortio reports seconds; the harness keeps milliseconds.
	want := map[float64]float64{50: 0.5348, 90: 0.9235, 99: 2.2490, 99.9: 2.4477}
	for p, w := range want {
		if got := r.pctMS[p]; got < w-0.001 || got > w+0.001 {
			t.Errorf("p%v = %v ms, want %v", p, got, w)
		}
	}
}

func TestParseFortio(t *testing.T) {
	pct := `"Percentiles":[{"Percentile":50,"Value":0.001},{"Percentile":90,"Value":0.002},{"Percentile":99,"Value":0.003},{"Percentile":99.9,"Value":0.004}]`
	tests := []struct {
		name       string
		in         string
		wantErr    string
		wantErrors int64
	}{
		{"ok", `{"ActualQPS":10,"DurationHistogram":{"Count":100,` + pct + `},"RetCodes":{"200":100}}`, "", 0},
		{"non-200 counted", `{"ActualQPS":10,"DurationHistogram":{"Count":100,` + pct + `},"RetCodes":{"200":88,"503":10,"-1":2}}`, "", 12},
		{"not json", `Code 200 : 94`, "fortio json", 0},
		{"no requests", `{"ActualQPS":10,"DurationHistogram":{"Count":0,` + pct + `}}`, "no requests completed", 0},
		{"zero qps", `{"ActualQPS":0,"DurationHistogram":{"Count":1,` + pct + `}}`, "ActualQPS", 0},
		{"missing p99.9", `{"ActualQPS":1,"DurationHistogram":{"Count":1,"Percentiles":[{"Percentile":50,"Value":0.001},{"Percentile":90,"Value":0.002},{"Percentile":99,"Value":0.003}]}}`, "no p99.9", 0},
		{"negative latency", `{"ActualQPS":1,"DurationHistogram":{"Count":1,"Percentiles":[{"Percentile":50,"Value":-1}]}}`, "bad value", 0},
		{"negative code count", `{"ActualQPS":1,"DurationHistogram":{"Count":1,` + pct + `},"RetCodes":{"200":-5}}`, "negative count", 0},
		{"wrong type", `{"ActualQPS":"fast"}`, "fortio json", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := parseFortio([]byte(tt.in), okHTTP)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.errors != tt.wantErrors {
				t.Fatalf("errors = %d, want %d", r.errors, tt.wantErrors)
			}
			if r.pctMS[99.9] != 4 {
				t.Fatalf("p99.9 = %v ms, want 4", r.pctMS[99.9])
			}
		})
	}
}

func FuzzParseFortio(f *testing.F) {
	if b, err := os.ReadFile("testdata/fortio.json"); err == nil {
		f.Add(b)
	}
	f.Add([]byte(`{"ActualQPS":1,"DurationHistogram":{"Count":1}}`))
	f.Add([]byte(`{"RetCodes":{"x":1}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseFortio(b, okHTTP)
		if err != nil {
			return
		}
		if r.requests <= 0 || r.qps <= 0 || r.errors < 0 {
			t.Fatalf("accepted a result with requests=%d qps=%v errors=%d", r.requests, r.qps, r.errors)
		}
		for _, p := range wantPercentiles {
			if v, ok := r.pctMS[p]; !ok || v < 0 {
				t.Fatalf("accepted a result with p%v = %v, %v", p, v, ok)
			}
		}
	})
}

func TestParseStat(t *testing.T) {
	tail := " 100 100 0 -1 4194304 98 0 0 0 12 34 0 0 20 0 1 0 136180 3133440 381"
	tests := []struct {
		name    string
		in      string
		want    procStat
		wantErr string
	}{
		{"plain", "4242 (nginx) S 77" + tail, procStat{'S', 77, 12, 34}, ""},
		{"name with spaces and parens", "4242 (a) b (c)) R 1" + tail, procStat{'R', 1, 12, 34}, ""},
		{"zombie", "9 (x) Z 1" + tail, procStat{'Z', 1, 12, 34}, ""},
		{"no name", "4242 nginx S 77" + tail, procStat{}, "no command name"},
		{"truncated", "4242 (nginx) S 77 100 100 0", procStat{}, "fields after the name"},
		{"bad utime", "4242 (nginx) S 77 100 100 0 -1 4194304 98 0 0 0 x 34", procStat{}, "utime"},
		{"bad ppid", "4242 (nginx) S -3 100 100 0 -1 4194304 98 0 0 0 1 34", procStat{}, "ppid"},
		{"empty", "", procStat{}, "no command name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStat([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("parseStat = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func FuzzParseStat(f *testing.F) {
	if b, err := os.ReadFile("/proc/self/stat"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("1 ((x)) S 0 0 0 0 0 0 0 0 0 0 5 6"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := parseStat(b)
		if err == nil && s.ppid < 0 {
			t.Fatalf("accepted ppid %d", s.ppid)
		}
	})
}

func TestParseVmRSS(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    uint64
		wantErr string
	}{
		{"ok", "Name:\tnginx\nVmPeak:\t  1 kB\nVmRSS:\t    2048 kB\nThreads:\t1\n", 2048 * 1024, ""},
		{"kernel thread", "Name:\tkworker\nThreads:\t1\n", 0, "no VmRSS"},
		{"bad unit", "VmRSS:\t 2 MB\n", 0, "want"},
		{"bad number", "VmRSS:\t x kB\n", 0, "bad number"},
		{"absurd", "VmRSS:\t 99999999999999999 kB\n", 0, "bad number"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseVmRSS([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("parseVmRSS = %d, %v; want %d", got, err, tt.want)
			}
		})
	}
}

func FuzzParseVmRSS(f *testing.F) {
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("VmRSS: 1 kB"))
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := parseVmRSS(b)
		if err == nil && n%1024 != 0 {
			t.Fatalf("accepted %d bytes, not whole kB", n)
		}
	})
}

// TestSupervisorStopsProcessGroup starts a shell that forks a worker (as
// nginx does), checks the harness sees both and their CPU/RSS, and that
// stopAll leaves neither running.
func TestSupervisorStopsProcessGroup(t *testing.T) {
	sup := &supervisor{dir: t.TempDir()}
	defer sup.stopAll()
	p, err := sup.start("sh", "/bin/sh", []string{"-c", "sleep 30 & echo $!; wait"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var worker int
	deadline := time.Now().Add(5 * time.Second)
	for worker == 0 && time.Now().Before(deadline) {
		b, _ := os.ReadFile(p.logPath)
		worker, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		time.Sleep(10 * time.Millisecond)
	}
	if worker == 0 {
		t.Fatal("worker pid never printed")
	}
	pids, err := withDescendants([]int{p.pid()})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(pids, p.pid()) || !slices.Contains(pids, worker) {
		t.Fatalf("withDescendants(%d) = %v, want the shell and worker %d", p.pid(), pids, worker)
	}
	if _, err := cpuSeconds(pids); err != nil {
		t.Fatal(err)
	}
	if rss, err := rssBytes(pids); err != nil || rss == 0 {
		t.Fatalf("rssBytes = %d, %v", rss, err)
	}
	start := time.Now()
	sup.stopAll()
	if time.Since(start) > 4*time.Second {
		t.Fatalf("stopAll took %v: SIGTERM did not reach the group", time.Since(start))
	}
	if err := p.exited(); err == nil {
		t.Fatal("shell still running after stopAll")
	}
	// SIGKILL is delivered asynchronously: within a second the worker must
	// be gone or a zombie waiting for its new parent to reap it.
	for deadline := time.Now().Add(time.Second); ; {
		s, err := readStat(worker)
		if err != nil || s.state == 'Z' {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker %d still running (state %c) after stopAll", worker, s.state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestWaitReadyReportsEarlyExit(t *testing.T) {
	sup := &supervisor{dir: t.TempDir()}
	defer sup.stopAll()
	p, err := sup.start("false", "/bin/sh", []string{"-c", "echo boom; exit 3"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = waitReady(t.Context(), p, 5*time.Second, func() error { return io.EOF })
	if err == nil || !strings.Contains(err.Error(), "exited early") || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("waitReady = %v, want an early-exit error with the log tail", err)
	}
}

func TestSelectPaths(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr string
	}{
		{"", []string{"direct", "trellis", "trellis-nometrics", "trellis-authz", "trellis-tracing", "trellis-accesslog", "haproxy", "nginx"}, ""},
		{"nginx, direct,nginx", []string{"nginx", "direct"}, ""},
		{"envoy", nil, `unknown path "envoy" (valid: direct,trellis,trellis-nometrics,trellis-authz,trellis-tracing,trellis-accesslog,haproxy,nginx)`},
	}
	for _, tt := range tests {
		got, err := selectPaths(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("selectPaths(%q) error = %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("selectPaths(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

// TestCertsMutualTLS does the handshake the proxy pairs do with the files
// the harness writes: back requires and verifies the front's client cert.
func TestCertsMutualTLS(t *testing.T) {
	c, err := writeCerts(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(c.ca)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.crt holds no certificate")
	}
	backCert, err := tls.LoadX509KeyPair(c.backPEM, c.backPEM)
	if err != nil {
		t.Fatal(err)
	}
	frontCert, err := tls.LoadX509KeyPair(c.frontCrt, c.frontKey)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{backCert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				_ = conn.(*tls.Conn).Handshake()
				_, _ = conn.Write([]byte("ok"))
			}()
		}
	}()
	dial := func(certs []tls.Certificate) error {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", ln.Addr().String(),
			&tls.Config{RootCAs: pool, ServerName: backName, Certificates: certs})
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = io.ReadAll(conn)
		return err
	}
	if err := dial([]tls.Certificate{frontCert}); err != nil {
		t.Fatalf("mTLS with the front cert: %v", err)
	}
	if err := dial(nil); err == nil {
		t.Fatal("back accepted a client without a certificate")
	}
	// The back cert is not a client cert: usage is enforced.
	if err := dial([]tls.Certificate{backCert}); err == nil {
		t.Fatal("back accepted the server cert as a client cert")
	}
}

// TestAuthzPolicyApplies: the trellis-authz path's policy is a valid
// AuthorizationPolicy of the size asked for, the client on its last rule.
func TestAuthzPolicyApplies(t *testing.T) {
	y := authzPolicy(10)
	objs, err := config.Decode("bench.yaml", []byte(y))
	if err != nil {
		t.Fatalf("%v\n%s", err, y)
	}
	p := objs[0].(*config.AuthorizationPolicy)
	if n := len(p.Spec.Rules); n != 10 || p.Spec.Rules[9].From[0].Identity != "spiffe://trellis.local/ns/default/sa/bench-client" {
		t.Fatalf("%d rules, last %+v", n, p.Spec.Rules[len(p.Spec.Rules)-1])
	}
}

// TestFeaturesApply: the trellis paths' features are valid resources: a
// route with both timeouts, a retry policy, a rate limit that admits far
// more than the bench sends, and the one-rule policy naming the client.
func TestFeaturesApply(t *testing.T) {
	objs, err := config.Decode("bench.yaml", []byte(withFeatures("")))
	if err != nil {
		t.Fatalf("%v\n%s", err, withFeatures(""))
	}
	kinds := map[string]bool{}
	for _, o := range objs {
		kinds[fmt.Sprintf("%T", o)] = true
		switch o := o.(type) {
		case *config.RateLimitPolicy:
			if o.Spec.Rate.Requests < 100000 {
				t.Errorf("rate limit %d a second would refuse bench traffic", o.Spec.Rate.Requests)
			}
		case *config.AuthorizationPolicy:
			if len(o.Spec.Rules) != 1 || o.Spec.Rules[0].From[0].Identity != "spiffe://trellis.local/ns/default/sa/bench-client" {
				t.Errorf("policy %+v", o.Spec.Rules)
			}
		}
	}
	for _, k := range []string{"*config.Service", "*config.HTTPRoute", "*config.BackendPolicy", "*config.RateLimitPolicy", "*config.AuthorizationPolicy"} {
		if !kinds[k] {
			t.Errorf("features lack a %s (have %v)", k, kinds)
		}
	}
}

// TestOverheads: every Trellis row is compared with trellis-nometrics of
// the same run; no baseline, no comparison.
func TestOverheads(t *testing.T) {
	rs := []result{
		{Name: "direct", P99: 1, CPUPerKReq: 0},
		{Name: "trellis", P99: 2.2, CPUPerKReq: 0.103},
		{Name: "trellis-nometrics", P99: 2, CPUPerKReq: 0.1},
		{Name: "trellis-tracing", P99: 3, CPUPerKReq: 0.15},
		{Name: "haproxy", P99: 1.5, CPUPerKReq: 0.03},
	}
	got := overheads(rs)
	want := []overhead{{"trellis", "", 1.03, 1.1}, {"trellis-tracing", "", 1.5, 1.5}}
	if !slices.Equal(got, want) {
		t.Fatalf("overheads = %+v, want %+v", got, want)
	}
	if o := overheads(rs[:2]); o != nil {
		t.Fatalf("without the baseline: %+v", o)
	}
}

// TestParseFortioGRPC: fortio's gRPC ping client reports good calls as
// SERVING, not 200; read with the HTTP code every call would be an error.
func TestParseFortioGRPC(t *testing.T) {
	b, err := os.ReadFile("testdata/fortio-grpc.json") // fortio 1.66.5 load -grpc -ping -json
	if err != nil {
		t.Fatal(err)
	}
	r, err := parseFortio(b, okGRPC)
	if err != nil {
		t.Fatal(err)
	}
	if r.requests != 100 || r.errors != 0 || r.pctMS[99] <= 0 {
		t.Fatalf("requests, errors, p99 = %d, %d, %v; want 100, 0, > 0", r.requests, r.errors, r.pctMS[99])
	}
	if r, _ := parseFortio(b, okHTTP); r.errors != 100 {
		t.Fatalf("as HTTP: errors = %d, want all 100", r.errors)
	}
}

// TestOverheadsPerBody: a 1 KiB row is compared with the 1 KiB baseline,
// never the 0-byte one.
func TestOverheadsPerBody(t *testing.T) {
	rs := []result{
		{Name: "trellis-nometrics", Body: "0B", P99: 1, CPUPerKReq: 0.1},
		{Name: "trellis-nometrics", Body: "1KiB", P99: 2, CPUPerKReq: 0.2},
		{Name: "trellis", Body: "0B", P99: 1, CPUPerKReq: 0.11},
		{Name: "trellis", Body: "1KiB", P99: 2, CPUPerKReq: 0.22},
		{Name: "trellis-authz", Body: "1KiB-post", P99: 2, CPUPerKReq: 0.3}, // no baseline of that body
	}
	want := []overhead{{"trellis", "0B", 1.1, 1}, {"trellis", "1KiB", 1.1, 1}}
	if got := overheads(rs); !slices.Equal(got, want) {
		t.Fatalf("overheads = %+v, want %+v", got, want)
	}
}

func TestSelectBodies(t *testing.T) {
	got, err := selectBodies(defaultBodies)
	if err != nil || len(got) != 2 || got[0].resp != 0 || got[1].resp != 1024 || got[1].req != 0 {
		t.Fatalf("selectBodies(default) = %+v, %v", got, err)
	}
	if got, err := selectBodies(" 1KiB-post,1KiB-post"); err != nil || len(got) != 1 || got[0].req != 1024 {
		t.Fatalf("selectBodies(1KiB-post twice) = %+v, %v", got, err)
	}
	if _, err := selectBodies("2KiB"); err == nil || !strings.Contains(err.Error(), `unknown body "2KiB"`) {
		t.Fatalf("selectBodies(2KiB) error = %v", err)
	}
}

func TestBodyURL(t *testing.T) {
	for _, tt := range []struct {
		b    body
		want string
	}{
		{body{"0B", 0, 0}, "http://h/"},
		{body{"1KiB", 1024, 0}, "http://h/?size=1024"},
		{body{"1KiB-post", 1024, 1024}, "http://h/"}, // the echo answers with the POSTed body
	} {
		if got := tt.b.url("http://h/"); got != tt.want {
			t.Errorf("%s: url = %q, want %q", tt.b.name, got, tt.want)
		}
	}
}

// TestRSSPeak: the sampler keeps each group's peak over the samples it
// takes every interval, the one at stop included.
func TestRSSPeak(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		seq := [][]uint64{{5, 1}, {9, 1}, {3, 2}, {4, 7}, {2, 8}}
		var mu sync.Mutex
		n := 0
		read := func() ([]uint64, error) {
			mu.Lock()
			defer mu.Unlock()
			v := seq[min(n, len(seq)-1)]
			n++
			return v, nil
		}
		p := sampleRSS(2, read, 100*time.Millisecond)
		time.Sleep(350 * time.Millisecond) // samples at 0, 100, 200, 300 ms
		synctest.Wait()
		peak, err := p.stop() // and one more at stop: {2, 8}
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(peak, []uint64{9, 8}) || n != 5 {
			t.Fatalf("peaks = %v after %d samples; want [9 8] after 5", peak, n)
		}
	})
}

// TestRSSPeakReadsProc: on real processes; a pid that is gone ends the
// sampling with an error.
func TestRSSPeakReadsProc(t *testing.T) {
	self := [][]int{{os.Getpid()}, {os.Getpid(), os.Getpid()}}
	p := sampleRSS(2, func() ([]uint64, error) { return groupRSS(self) }, time.Millisecond)
	peak, err := p.stop()
	if err != nil {
		t.Fatal(err)
	}
	if peak[0] == 0 || peak[1] < 2*peak[0]*9/10 {
		t.Fatalf("peaks = %v; want the second about twice the first", peak)
	}
	gone := [][]int{{1 << 30}}
	if _, err := sampleRSS(1, func() ([]uint64, error) { return groupRSS(gone) }, time.Millisecond).stop(); err == nil {
		t.Fatal("no error for a pid that does not exist")
	}
}

// chartRuns are the rows of a typical run, haproxy's max req/s twice
// trellis's.
func chartRuns() []result {
	var rs []result
	for i, n := range []string{"direct", "trellis", "trellis-authz", "haproxy", "nginx"} {
		for j, b := range []string{"0B", "1KiB"} {
			rs = append(rs, result{Name: n, Body: b, P50: float64(1 + i + j), P99: float64(3 + i + j), MaxRPS: map[string]float64{"trellis": 5000, "haproxy": 10000}[n] + 1000})
		}
	}
	return rs
}

// TestWriteChart: the PNG is decodable, of the chart's size, and holds a
// bar of every series (each series' colour appears).
func TestWriteChart(t *testing.T) {
	f := filepath.Join(t.TempDir(), "latest.png")
	ok, err := writeChart(f, chartRuns())
	if err != nil || !ok {
		t.Fatalf("writeChart = %v, %v", ok, err)
	}
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if got := img.Bounds().Size(); got.X != chartW || got.Y != chartH {
		t.Fatalf("size = %v, want %dx%d", got, chartW, chartH)
	}
	count := map[color.RGBA]int{}
	for y := range chartH {
		for x := range chartW {
			r, g, b, a := img.At(x, y).RGBA()
			count[color.RGBA{uint8(r >> 8), uint8(g >> 8), uint8(b >> 8), uint8(a >> 8)}]++
		}
	}
	for i, c := range bodyColors[:2] {
		for _, shade := range c {
			// The legend's swatch alone is 120 pixels; bars are thousands.
			if count[shade] < 2000 {
				t.Errorf("body %d: colour %v covers %d pixels; want its bars drawn", i, shade, count[shade])
			}
		}
	}
	if count[colInk] < 500 {
		t.Errorf("ink covers %d pixels: no text or axes", count[colInk])
	}
}

// TestLayoutBars: heights are proportional to the values, on the axis; a
// system without a row leaves a gap, not a zero bar.
func TestLayoutBars(t *testing.T) {
	rs := chartRuns()
	series := []chartSeries{{"0B", "0B", colInk, func(r result) float64 { return r.MaxRPS }}}
	bars := layoutBars(rs, []string{"trellis", "haproxy", "envoy"}, series, 0, 300, 20000)
	if len(bars) != 2 {
		t.Fatalf("%d bars, want 2 (envoy has no row)", len(bars))
	}
	tr, ha := bars[0].rect, bars[1].rect
	if tr.Max.Y != chartBottom || ha.Max.Y != chartBottom {
		t.Fatalf("bars %v %v do not stand on the axis at %d", tr, ha, chartBottom)
	}
	// 6000 and 11000 of 20000.
	span := float64(chartBottom - chartTop - 20)
	if d := float64(tr.Dy()) - 0.3*span; d < -1 || d > 1 {
		t.Errorf("trellis bar %d px, want %.0f", tr.Dy(), 0.3*span)
	}
	if d := float64(ha.Dy()) - 0.55*span; d < -1 || d > 1 {
		t.Errorf("haproxy bar %d px, want %.0f", ha.Dy(), 0.55*span)
	}
	if !(tr.Max.X <= ha.Min.X) {
		t.Errorf("bars overlap: %v %v", tr, ha)
	}
}

func TestNiceCeil(t *testing.T) {
	for _, tt := range []struct{ in, want float64 }{
		{0, 1}, {-3, 1}, {0.7, 1}, {1, 1}, {1.01, 2}, {3.2, 5}, {9.524, 10}, {29671, 50000}, {10000, 10000},
	} {
		if got := niceCeil(tt.in); got != tt.want {
			t.Errorf("niceCeil(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

// TestWriteChartNothingToChart: rows of none of the charted systems write
// no file.
func TestWriteChartNothingToChart(t *testing.T) {
	f := filepath.Join(t.TempDir(), "latest.png")
	ok, err := writeChart(f, []result{{Name: "trellis-authz", Body: "0B", P99: 1}})
	if err != nil || ok {
		t.Fatalf("writeChart = %v, %v; want false, nil", ok, err)
	}
	if _, err := os.Stat(f); !os.IsNotExist(err) {
		t.Fatalf("a chart was written: %v", err)
	}
}

// TestReportJSONShape: the keys latest.json promises, the GC sweep's rows
// flat (setting beside the row's fields), the protocol sections top-level.
func TestReportJSONShape(t *testing.T) {
	r := result{Name: "trellis", Body: "1KiB", RespBytes: 1024, P99: 2, MaxRPS: 9, CPUPerKReq: 0.1,
		Sidecars: []sidecarRSS{{Name: "client-side", IdleMB: 9, IdleAnonMB: 3, MaxMB: 20}}}
	rep := report{Runs: []result{r},
		protoReport: protoReport{
			GRPC:     []grpcRow{{Path: "trellis", Kind: "stream", RPS: 5}},
			TCP:      []tcpRow{{Path: "direct", MiBPerSec: 100}, {Path: "trellis", MiBPerSec: 60}},
			Idle:     &idleResult{Connections: 10000, RSSHeldMB: 80},
			TCPRatio: 0.6,
		},
		GCSweep: []gcRow{{Setting: "GOGC=50", result: r}},
	}
	f := filepath.Join(t.TempDir(), "latest.json")
	if err := writeReport(f, rep); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	run := m["runs"].([]any)[0].(map[string]any)
	for _, k := range []string{"name", "body", "response_bytes", "request_bytes", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_rps", "cpu_s_per_krps", "rss_mb", "sidecars"} {
		if _, ok := run[k]; !ok {
			t.Errorf("runs[0] has no %q: %v", k, run)
		}
	}
	sc := run["sidecars"].([]any)[0].(map[string]any)
	for _, k := range []string{"name", "rss_idle_mb", "rss_idle_anon_mb", "pss_idle_mb", "rss_max_mb"} {
		if _, ok := sc[k]; !ok {
			t.Errorf("sidecars[0] has no %q", k)
		}
	}
	for _, k := range []string{"grpc", "tcp", "idle_keepalive", "tcp_ratio_vs_direct", "gc_sweep"} {
		if _, ok := m[k]; !ok {
			t.Errorf("no top-level %q in %s", k, b)
		}
	}
	gc := m["gc_sweep"].([]any)[0].(map[string]any)
	if gc["setting"] != "GOGC=50" || gc["max_rps"] != 9.0 {
		t.Errorf("gc_sweep[0] = %v; want setting and the row's fields side by side", gc)
	}
	if idle := m["idle_keepalive"].(map[string]any); idle["connections"] != 10000.0 || idle["rss_held_mb"] != 80.0 {
		t.Errorf("idle_keepalive = %v", idle)
	}
}

// TestParseSettings: a bad value is refused before anything starts (run
// exits 2 on it); the defaults are what `make bench` promises.
func TestParseSettings(t *testing.T) {
	for _, tt := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{"-only", "envoy"}, `unknown path "envoy"`},
		{[]string{"-bodies", "2KiB"}, `unknown body "2KiB"`},
		{[]string{"-idle-conns", "-1"}, "must be > 0"},
		{[]string{"-tcp-mib", "0"}, "must be > 0"},
		{[]string{"-grpc-streams", "0"}, "must be > 0"},
		{[]string{"-no-such-flag"}, "usage"},
	} {
		_, err := parseSettings(tt.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("parseSettings(%q) error = %v, want containing %q", tt.args, err, tt.wantErr)
		}
	}
	s, err := parseSettings([]string{"-out", "x/r.json"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !s.runsProtocols() || s.idleConns != 10000 || s.gcSweep || len(s.bodies) != 2 || s.chart != "x/r.png" || s.tcpBytes != 512<<20 {
		t.Fatalf("defaults: %+v", s)
	}
	if s, _ := parseSettings([]string{"-only", "direct,nginx"}, io.Discard); s.runsProtocols() {
		t.Fatal("the protocol section runs without the trellis path")
	}
	if code := run([]string{"-no-such-flag"}, io.Discard, io.Discard); code != 2 {
		t.Fatalf("run with a bad flag = %d, want 2", code)
	}
}

// TestRunStreams: the echo server and client over a real socket; every
// round trip is one sorted sample.
func TestRunStreams(t *testing.T) {
	e, err := startEchoServer()
	if err != nil {
		t.Fatal(err)
	}
	defer e.stop()
	r, err := runStreams(t.Context(), e.addr, 4, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if r.messages < 4 || int64(len(r.lat)) != r.messages || !slices.IsSorted(r.lat) || r.rate() <= 0 {
		t.Fatalf("messages %d, samples %d, sorted %v, rate %v", r.messages, len(r.lat), slices.IsSorted(r.lat), r.rate())
	}
	if r.elapsed < 200*time.Millisecond {
		t.Fatalf("elapsed %v, shorter than the load", r.elapsed)
	}
}

// TestRunStreamsFailsWithoutEcho: a server that does not echo (no such
// service) is an error, not a rate of zero.
func TestRunStreamsFailsWithoutEcho(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	go srv.Serve(l)
	defer srv.Stop()
	if _, err := runStreams(t.Context(), l.Addr().String(), 2, 100*time.Millisecond); err == nil {
		t.Fatal("no error from a server without the echo service")
	}
}

func TestPercentile(t *testing.T) {
	d := make([]time.Duration, 100)
	for i := range d {
		d[i] = time.Duration(i+1) * time.Millisecond
	}
	for _, tt := range []struct {
		p    float64
		want time.Duration
	}{{50, 50 * time.Millisecond}, {99, 99 * time.Millisecond}, {100, 100 * time.Millisecond}, {0, time.Millisecond}} {
		if got := percentile(d, tt.p); got != tt.want {
			t.Errorf("p%v = %v, want %v", tt.p, got, tt.want)
		}
	}
	if percentile(nil, 99) != 0 {
		t.Error("p99 of nothing is not 0")
	}
}

// TestReadBulk: the whole transfer arrives; one stopped by its time limit
// is a result; one the far end cuts short is an error.
func TestReadBulk(t *testing.T) {
	src, err := startBulkSource(8 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer src.stop()
	r, err := readBulk(src.addr, 8<<20, 10*time.Second)
	if err != nil || r.bytes != 8<<20 || r.mbps() <= 0 {
		t.Fatalf("readBulk = %+v, %v; want 8 MiB", r, err)
	}

	endless, err := startBulkSource(1 << 50)
	if err != nil {
		t.Fatal(err)
	}
	defer endless.stop()
	r, err = readBulk(endless.addr, 1<<50, 100*time.Millisecond)
	if err != nil || r.bytes == 0 || r.elapsed < 100*time.Millisecond {
		t.Fatalf("time-limited readBulk = %+v, %v", r, err)
	}

	short, err := startBulkSource(1000)
	if err != nil {
		t.Fatal(err)
	}
	defer short.stop()
	if _, err := readBulk(short.addr, 8<<20, 10*time.Second); err == nil || !strings.Contains(err.Error(), "closed after 1000 of") {
		t.Fatalf("short transfer: error = %v", err)
	}
}

// connCounter is an HTTP server on a real socket that counts the
// connections it accepted.
func connCounter(t *testing.T, h http.HandlerFunc) (*httptest.Server, func() int) {
	var mu sync.Mutex
	seen := map[net.Conn]bool{}
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateNew {
			mu.Lock()
			seen[c] = true
			mu.Unlock()
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(seen)
	}
}

// TestHeldConns: each held connection is its own keep-alive connection,
// and the sampled requests reuse them rather than opening new ones, spread
// over all of them.
func TestHeldConns(t *testing.T) {
	var mu sync.Mutex
	var callers []string
	srv, conns := connCounter(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Host != "bench-proto" {
			http.Error(w, "wrong host "+r.Host, http.StatusBadRequest)
			return
		}
		mu.Lock()
		callers = append(callers, r.RemoteAddr)
		mu.Unlock()
		io.WriteString(w, "hello")
	})
	a := strings.TrimPrefix(srv.URL, "http://")
	held, err := openHeld(t.Context(), a, "bench-proto", 50, 8)
	if err != nil {
		t.Fatal(err)
	}
	defer closeHeld(held)
	if n := conns(); n != 50 {
		t.Fatalf("server saw %d connections, want 50", n)
	}
	lat, err := sampleHeld(held, "bench-proto", 200, rand.New(rand.NewPCG(1, 2)))
	if err != nil {
		t.Fatal(err)
	}
	if len(lat) != 50 || !slices.IsSorted(lat) {
		t.Fatalf("%d samples (sorted %v); want one per connection, 50", len(lat), slices.IsSorted(lat))
	}
	if n := conns(); n != 50 {
		t.Fatalf("server saw %d connections after sampling, want still 50", n)
	}
	// A sample of 10: not simply the first ten opened.
	mu.Lock()
	callers = callers[:0]
	mu.Unlock()
	if lat, err := sampleHeld(held, "bench-proto", 10, rand.New(rand.NewPCG(3, 4))); err != nil || len(lat) != 10 {
		t.Fatalf("sample of 10 = %d, %v", len(lat), err)
	}
	first := map[string]bool{}
	for _, hc := range held[:10] {
		first[hc.c.LocalAddr().String()] = true
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.ContainsFunc(callers, func(a string) bool { return !first[a] }) {
		t.Fatalf("the sample used only the first ten connections: %v", callers)
	}
}

// TestHeldConnsRefusesClose: a proxy that closes after each response
// holds no idle connections: an error, not a figure.
func TestHeldConnsRefusesClose(t *testing.T) {
	srv, _ := connCounter(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		io.WriteString(w, "bye")
	})
	_, err := openHeld(t.Context(), strings.TrimPrefix(srv.URL, "http://"), "x", 20, 4)
	if err == nil || !strings.Contains(err.Error(), "closed a keep-alive") {
		t.Fatalf("openHeld = %v; want the close refused", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := openHeld(ctx, strings.TrimPrefix(srv.URL, "http://"), "x", 20, 4); err == nil {
		t.Fatal("openHeld with a cancelled context succeeded")
	}
}

// TestProtoServiceYAML: the protocol pair's Service is valid, its first
// port the HTTP app, the others at the ports given.
func TestProtoServiceYAML(t *testing.T) {
	objs, err := config.Decode("proto.yaml", []byte(protoServiceYAML("4001", "4002", "4003")))
	if err != nil {
		t.Fatal(err)
	}
	svc := objs[0].(*config.Service)
	ports := svc.Spec.Ports
	if len(ports) != 4 || ports[0].Protocol != "http" {
		t.Fatalf("ports = %+v", ports)
	}
	want := map[string]struct {
		port, target int32
		proto        string
	}{"grpc": {9090, 4001, "grpc"}, "stream": {9091, 4002, "grpc"}, "tcp": {7000, 4003, "tcp"}}
	for _, p := range ports[1:] {
		w := want[p.Name]
		if p.Port != w.port || p.TargetPort != w.target || string(p.Protocol) != w.proto {
			t.Errorf("port %s = %+v, want %+v", p.Name, p, w)
		}
	}
	for _, k := range []string{upGRPC, upStream, upTCP} {
		if !strings.HasPrefix(k, svc.Name+":") {
			t.Errorf("upstream key %q is not %s:PORT", k, svc.Name)
		}
	}
}

// TestProcSumPss: Pss is read from smaps_rollup, and the harness's own is
// at most its RSS (shared pages are split, never added).
func TestProcSumPss(t *testing.T) {
	self := []int{os.Getpid()}
	pss, err := procSum(self, "smaps_rollup", "Pss")
	if err != nil {
		t.Fatal(err)
	}
	rss, err := rssBytes(self)
	if err != nil {
		t.Fatal(err)
	}
	if pss == 0 || pss > rss*11/10 {
		t.Fatalf("pss %d, rss %d", pss, rss)
	}
	if _, err := procSum(self, "status", "NoSuchField"); err == nil || !strings.Contains(err.Error(), "no NoSuchField line") {
		t.Fatalf("missing field: %v", err)
	}
}

func TestChartLabel(t *testing.T) {
	for _, tt := range []struct {
		v    float64
		d    int
		want string
	}{{0.838, 2, "0.84"}, {9.994, 2, "9.99"}, {16.349, 2, "16.3"}, {23025.4, 0, "23025"}} {
		if got := label(tt.v, tt.d); got != tt.want {
			t.Errorf("label(%v, %d) = %q, want %q", tt.v, tt.d, got, tt.want)
		}
	}
}

// TestChartFrom: -chart-from redraws the chart of a saved report and runs
// nothing else; a report that is not JSON is an error.
func TestChartFrom(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "latest.json")
	if err := writeReport(f, report{Runs: chartRuns()}); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if code := run([]string{"-chart-from", f}, &out, io.Discard); code != 0 {
		t.Fatalf("run -chart-from = %d", code)
	}
	if fi, err := os.Stat(filepath.Join(dir, "latest.png")); err != nil || fi.Size() == 0 {
		t.Fatalf("latest.png: %v", err)
	}
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	var errb bytes.Buffer
	if code := run([]string{"-chart-from", bad}, io.Discard, &errb); code != 1 || !strings.Contains(errb.String(), "bad.json") {
		t.Fatalf("run -chart-from bad.json = %d, %q", code, errb.String())
	}
}

// TestTargets: each figure against haproxy's of the same body, or its
// fixed goal, met or not; nothing for rows that did not run.
func TestTargets(t *testing.T) {
	sc := func(idle, max float64) []sidecarRSS {
		return []sidecarRSS{{Name: "server-side", IdleMB: idle, MaxMB: max}, {Name: "client-side", IdleMB: idle, MaxMB: max}}
	}
	rep := report{
		Runs: []result{
			{Name: "trellis", Body: "0B", P50: 1, P99: 3, MaxRPS: 12000, CPUPerKReq: 0.08, Sidecars: sc(14, 31)},
			{Name: "haproxy", Body: "0B", P50: 2, P99: 2, MaxRPS: 10000, CPUPerKReq: 0.1},
			{Name: "trellis", Body: "1KiB", P50: 1, P99: 1, MaxRPS: 100, CPUPerKReq: 1, Sidecars: sc(14, 20)},
		},
		protoReport: protoReport{TCPRatio: 0.4, Idle: &idleResult{Connections: 10000, RSSHeldMB: 90, P99: 1}},
	}
	all := targets(rep)
	got := map[string]target{}
	for _, tg := range all {
		if _, dup := got[tg.Name]; dup {
			t.Errorf("target %q twice", tg.Name)
		}
		got[tg.Name] = tg
	}
	for name, want := range map[string]struct {
		v   float64
		met bool
	}{
		"p50 at 1,000 req/s vs haproxy, 0B":                            {0.5, true},
		"p99 at 1,000 req/s vs haproxy, 0B":                            {1.5, false},
		"max req/s vs haproxy, 0B":                                     {1.2, true},
		"CPU-s per 1k requests vs haproxy, 0B":                         {0.8, true},
		"RSS MB idle, server-side":                                     {14, true},
		"RSS MB at max req/s, client-side, 0B":                         {31, false},
		"RSS MB at max req/s, client-side, 1KiB":                       {20, true},
		"TCP bulk MiB/s vs direct":                                     {0.4, false},
		"RSS MB holding 10000 idle connections":                        {90, true},
		"p99 on a held connection vs haproxy's p99 at 1,000 req/s, 0B": {0.5, true},
	} {
		tg, ok := got[name]
		if !ok {
			t.Errorf("no target %q", name)
			continue
		}
		if tg.Value != want.v || tg.Met != want.met {
			t.Errorf("%s = %v met %v; want %v met %v", name, tg.Value, tg.Met, want.v, want.met)
		}
	}
	if _, ok := got["p99 at 1,000 req/s vs haproxy, 1KiB"]; ok {
		t.Error("a 1KiB ratio without a 1KiB haproxy row")
	}
	if len(all) != 13 { // the ten above, the client side's idle RSS, the server side's max RSSes
		t.Errorf("%d targets: %v", len(all), all)
	}
}
