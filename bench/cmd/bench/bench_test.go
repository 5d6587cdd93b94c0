package main

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

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

// TestRSSPeak: the sampler keeps each group's peak, and a group whose
// process is gone ends it with an error.
func TestRSSPeak(t *testing.T) {
	self := os.Getpid()
	p := sampleRSS([][]int{{self}, {self, self}}, time.Millisecond)
	peak, err := p.stop()
	if err != nil {
		t.Fatal(err)
	}
	if peak[0] == 0 || peak[1] < 2*peak[0]*9/10 {
		t.Fatalf("peaks = %v; want the second about twice the first", peak)
	}
	gone := sampleRSS([][]int{{1 << 30}}, time.Millisecond)
	if _, err := gone.stop(); err == nil {
		t.Fatal("no error for a pid that does not exist")
	}
}
