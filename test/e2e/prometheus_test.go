package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// startPrometheus runs a real Prometheus (Debian's) on a free loopback
// port with a temp dir, discovering its targets from the control plane's
// HTTP service discovery, scraping every second; extra are more flags.
func startPrometheus(t *testing.T, cp *controlPlane, extra ...string) string {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skip("prometheus not installed (apt-get install prometheus; .ci/run does)")
	}
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: trellis
    http_sd_configs:
      - url: http://%s/prometheus/sd
        refresh_interval: 1s
`, cp.metrics)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	cmd := exec.Command(bin, append([]string{"--config.file=" + filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path=" + filepath.Join(dir, "data"), "--web.listen-address=" + addr}, extra...)...)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		if t.Failed() {
			t.Logf("--- output of prometheus ---\n%s", tail(out.String(), 40))
		}
	})
	eventually(t, 30*time.Second, "prometheus ready", func() bool {
		resp, err := http.Get("http://" + addr + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return addr
}

// promQuery evaluates an instant PromQL query and returns the value of its
// single sample; ok is false when the result is not exactly one sample.
func promQuery(t *testing.T, prom, q string) (float64, bool) {
	t.Helper()
	resp, err := http.Get("http://" + prom + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatal(err)
	}
	if r.Status != "success" {
		t.Fatalf("query %s: %s", q, r.Error)
	}
	if len(r.Data.Result) != 1 {
		return 0, false
	}
	s, _ := r.Data.Result[0].Value[1].(string)
	v, err := strconv.ParseFloat(s, 64)
	return v, err == nil
}

// TestPrometheusScrapesMesh: a real Prometheus finds the control plane and
// both proxies through the control plane's HTTP SD, scrapes them, and
// PromQL over what it scraped matches the traffic this test sent: totals
// on both sides of the hop, the failures, the edge, and the control
// plane's view of its proxies.
func TestPrometheusScrapesMesh(t *testing.T) {
	cp := startControl(t, "")
	prom := startPrometheus(t, cp)
	// A second one scraping protobuf, for the native histogram.
	native := startPrometheus(t, cp, "--enable-feature=native-histograms")
	cp.apply(t, `
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: orders}
spec:
  ports: [{name: http, port: 80, protocol: http}]
`)
	app := appServer(t, "orders", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fail" {
			http.Error(w, "failing on purpose", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, "orders ok")
	})
	cp.proxy(t, proxyConfig{service: "orders", app: app})
	frontend := cp.proxy(t, proxyConfig{service: "frontend"})

	const ok, failed = 300, 40
	c := frontend.client()
	for i := range ok + failed {
		path := "/buy"
		if i%((ok+failed)/failed) == 0 && i/((ok+failed)/failed) < failed {
			path = "/fail"
		}
		code, _, err := get(c, "http://orders"+path)
		if err != nil || (code != 200 && code != 503) {
			t.Fatalf("request %d: %d %v", i, code, err)
		}
	}

	// Every target discovered and up: the control plane and two proxies.
	eventually(t, 30*time.Second, "3 targets up", func() bool {
		v, _ := promQuery(t, prom, `sum(up{job="trellis"})`)
		return v == 3
	})
	for _, tt := range []struct {
		what, q string
		want    float64
	}{
		{"requests counted by the caller", `sum(trellis_requests_total{reporter="source",destination_service="orders",destination_namespace="default"})`, ok + failed},
		{"requests counted by the callee", `sum(trellis_requests_total{reporter="destination",destination_service="orders"})`, ok + failed},
		{"failures seen by the caller", `sum(trellis_requests_total{reporter="source",destination_service="orders",response_code="503",response_flags="-"})`, failed},
		{"the edge frontend → orders, over mTLS", `sum(trellis_requests_total{reporter="destination",source_service="frontend",source_identity="spiffe://trellis.local/ns/default/sa/frontend",destination_service="orders",mtls="true"})`, ok + failed},
		{"durations observed by the callee", `sum(trellis_request_duration_seconds_count{reporter="destination",destination_service="orders"})`, ok + failed},
		{"response bytes, callee side", `sum(trellis_response_bytes_sum{reporter="destination",destination_service="orders",response_code="200"})`, ok * float64(len("orders ok"))},
		{"target labels from SD", `count(up{job="trellis",trellis_role="proxy",service=~"orders|frontend",namespace="default"})`, 2},
		{"the control plane scraped", `up{job="trellis",trellis_role="control"}`, 1},
		{"proxies in sync, as the control plane sees them", `trellis_control_push_proxies{state="SYNCED"}`, 2},
	} {
		var got float64
		eventually(t, 30*time.Second, tt.what, func() bool {
			got, _ = promQuery(t, prom, tt.q)
			// Counts must match what was sent within 1%.
			return got >= tt.want*0.99 && got <= tt.want*1.01
		})
		t.Logf("%s: %s = %v (sent %v)", tt.what, tt.q, got, tt.want)
	}
	// The native histogram of the same family holds every observation,
	// and its p50 is the app's sub-millisecond-to-milliseconds answer.
	var n, p50 float64
	eventually(t, 30*time.Second, "native histogram count", func() bool {
		n, _ = promQuery(t, native, `histogram_count(sum(trellis_request_duration_seconds{reporter="destination",destination_service="orders"}))`)
		return n == ok+failed
	})
	p50, _ = promQuery(t, native, `histogram_quantile(0.5, sum(trellis_request_duration_seconds{reporter="destination",destination_service="orders"}))`)
	if p50 <= 0 || p50 > 1 {
		t.Errorf("native p50 = %v s, want within (0, 1]", p50)
	}
	t.Logf("native histogram: %v observations, p50 %.3f ms", n, p50*1e3)
}
