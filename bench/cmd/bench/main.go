// Command bench measures four ways from a load generator to an echo server on
// loopback — direct, a Trellis proxy pair, an HAProxy pair and an nginx pair
// (each pair with mTLS between its halves) — in one run, prints them side by
// side and writes bench/results/latest.json. See bench/README.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// result is one row of bench/results/latest.json: one path, one body.
type result struct {
	Name       string  `json:"name"`
	Body       string  `json:"body"`           // body variant (bodies.go)
	RespBytes  int     `json:"response_bytes"` // response body size
	ReqBytes   int     `json:"request_bytes"`  // request body size (POST when > 0)
	P50        float64 `json:"p50_ms"`
	P90        float64 `json:"p90_ms"`
	P99        float64 `json:"p99_ms"`
	P999       float64 `json:"p999_ms"`
	MaxRPS     float64 `json:"max_rps"`
	CPUPerKReq float64 `json:"cpu_s_per_krps"` // proxy CPU-seconds per 1,000 requests
	RSSMB      float64 `json:"rss_mb"`         // both proxies, summed, at the end of the max-rate run
	// Sidecars: each proxy half's RSS, idle and peak during the max run.
	Sidecars []sidecarRSS `json:"sidecars,omitempty"`
}

type report struct {
	Runs []result `json:"runs"`
	// Overhead: each Trellis row against trellis-nometrics (overhead.go).
	Overhead []overhead `json:"overhead,omitempty"`
	// gRPC, TCP bulk and idle keep-alive connections (protocols.go).
	protoReport
	// GCSweep: the trellis path under GOGC / GOMEMLIMIT settings (gcsweep.go).
	GCSweep []gcRow `json:"gc_sweep,omitempty"`
	// Targets: issue 13's list checked against this run (targets.go).
	Targets []target `json:"targets,omitempty"`
}

// settings of one invocation.
type settings struct {
	only                    []string
	bodies                  []body
	fixedQPS                int
	fixedConns, maxConns    int
	fixedDuration, maxDurtn time.Duration
	out                     string
	keep                    bool
	trellis, haproxy, nginx string
	gomaxprocs              int
	// The protocol section (protocols.go); it runs with the trellis path.
	protocols     bool
	protoDuration time.Duration // each gRPC load
	streams       int           // concurrent gRPC streams
	tcpBytes      int64         // bulk transfer size
	tcpMax        time.Duration // and its time limit
	idleConns     int           // idle keep-alive connections; 0: none
	idleSample    int           // requests on random ones of them
	gcSweep       bool          // gcsweep.go
	chart         string        // PNG written beside the JSON
	chartFrom     string        // only redraw the chart of this latest.json
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// errUsage: the flags were wrong; the flag package has said why.
var errUsage = errors.New("bench: usage")

// parseSettings parses and checks the command line.
func parseSettings(args []string, stderr io.Writer) (settings, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var s settings
	only := fs.String("only", "", "comma-separated paths to run (default all: "+pathNames()+")")
	bodies := fs.String("bodies", defaultBodies, "comma-separated body variants of every HTTP path: "+bodyNames())
	fs.StringVar(&s.trellis, "trellis", "bin/trellis", "path to the trellis binary")
	fs.StringVar(&s.haproxy, "haproxy", "/usr/sbin/haproxy", "path to haproxy")
	fs.StringVar(&s.nginx, "nginx", "/usr/sbin/nginx", "path to nginx")
	fs.DurationVar(&s.fixedDuration, "fixed-duration", 8*time.Second, "length of the fixed-rate (latency) run")
	fs.DurationVar(&s.maxDurtn, "max-duration", 5*time.Second, "length of the max-rate (throughput, CPU, RSS) run")
	fs.IntVar(&s.fixedQPS, "fixed-qps", 1000, "request rate of the fixed-rate run")
	fs.IntVar(&s.fixedConns, "fixed-conns", 16, "connections of the fixed-rate run")
	fs.IntVar(&s.maxConns, "max-conns", 32, "connections of the max-rate run")
	fs.IntVar(&s.gomaxprocs, "gomaxprocs", 0, "GOMAXPROCS for the trellis processes (0: Go's default, all cores)")
	fs.StringVar(&s.out, "out", filepath.Join("bench", "results", "latest.json"), "where to write the JSON results")
	fs.BoolVar(&s.protocols, "protocols", true, "with the trellis path: gRPC unary and streaming, TCP bulk and idle keep-alive connections, direct and through a Trellis pair")
	fs.DurationVar(&s.protoDuration, "grpc-duration", 5*time.Second, "length of each gRPC load (unary fixed rate, unary max rate, streaming)")
	fs.IntVar(&s.streams, "grpc-streams", 16, "concurrent bidirectional streams of the streaming load")
	tcpMiB := fs.Int("tcp-mib", 512, "MiB of the TCP bulk transfer")
	fs.DurationVar(&s.tcpMax, "tcp-max", 10*time.Second, "time limit of the TCP bulk transfer")
	fs.IntVar(&s.idleConns, "idle-conns", 10000, "idle keep-alive connections held on the client side's outbound port (0: skip)")
	fs.IntVar(&s.idleSample, "idle-sample", 1000, "requests sent, one at a time, on random idle connections")
	fs.BoolVar(&s.gcSweep, "gc-sweep", false, "also run the trellis path (0-byte body) under each GOGC / GOMEMLIMIT setting: "+gcSettingNames())
	fs.StringVar(&s.chartFrom, "chart-from", "", "run nothing: redraw the chart of this JSON report beside it (FILE.png)")
	fs.BoolVar(&s.keep, "keep", false, "keep the temp dir (configs, certs, logs) even on success")
	if err := fs.Parse(args); err != nil {
		return s, errUsage
	}
	var err error
	if s.only, err = selectPaths(*only); err != nil {
		return s, err
	}
	s.tcpBytes = int64(*tcpMiB) << 20
	s.chart = pngBeside(s.out)
	if s.bodies, err = selectBodies(*bodies); err != nil {
		return s, err
	}
	if s.fixedDuration <= 0 || s.maxDurtn <= 0 || s.fixedQPS <= 0 || s.fixedConns <= 0 || s.maxConns <= 0 ||
		s.protoDuration <= 0 || s.streams <= 0 || *tcpMiB <= 0 || s.tcpMax <= 0 || s.idleConns < 0 || s.idleSample <= 0 {
		return s, errors.New("durations, -fixed-qps, -tcp-mib, -idle-sample and connection and stream counts must be > 0 (-idle-conns >= 0)")
	}
	return s, nil
}

func run(args []string, stdout, stderr io.Writer) int {
	s, err := parseSettings(args, stderr)
	if err != nil {
		if !errors.Is(err, errUsage) {
			fmt.Fprintln(stderr, "bench:", err)
		}
		return 2
	}

	if s.chartFrom != "" {
		return redrawChart(s.chartFrom, stdout, stderr)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := bench(ctx, s, stderr)
	if len(rep.Runs) > 0 || len(rep.GRPC) > 0 {
		rep.Overhead = overheads(rep.Runs)
		printTable(stdout, rep.Runs)
		printOverheads(stdout, rep.Overhead)
		printProtocols(stdout, rep.protoReport)
		printGCSweep(stdout, rep.GCSweep)
		rep.Targets = targets(rep)
		printTargets(stdout, rep.Targets)
		if werr := writeReport(s.out, rep); werr != nil {
			fmt.Fprintln(stderr, "bench:", werr)
			return 1
		}
		fmt.Fprintf(stdout, "\nwrote %s\n", s.out)
		wrote, werr := writeChart(s.chart, rep.Runs)
		if werr != nil {
			fmt.Fprintln(stderr, "bench:", werr)
			return 1
		}
		if wrote {
			fmt.Fprintf(stdout, "wrote %s\n", s.chart)
		} else {
			fmt.Fprintf(stdout, "no chart: %v\n", errNoChartData)
		}
	}
	switch {
	case ctx.Err() != nil:
		fmt.Fprintln(stderr, "bench: interrupted; every process it started has been stopped")
		return 130
	case err != nil:
		fmt.Fprintln(stderr, "bench: failed:", err)
		return 1
	}
	return 0
}

// selectPaths parses -only.
func selectPaths(only string) ([]string, error) {
	if strings.TrimSpace(only) == "" {
		return strings.Split(pathNames(), ","), nil
	}
	valid := strings.Split(pathNames(), ",")
	var out []string
	for _, n := range strings.Split(only, ",") {
		n = strings.TrimSpace(n)
		if !slices.Contains(valid, n) {
			return nil, fmt.Errorf("-only: unknown path %q (valid: %s)", n, pathNames())
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out, nil
}

// runsProtocols: the protocol section runs with the trellis path.
func (s settings) runsProtocols() bool { return s.protocols && slices.Contains(s.only, "trellis") }

// bench runs the selected paths one after another, then the protocol
// section and the GC sweep, and returns what succeeded; the errors of what
// did not are printed to log as they happen.
func bench(ctx context.Context, s settings, log io.Writer) (report, error) {
	var rep report
	h := &harness{gomaxprocs: s.gomaxprocs}
	var err error
	if h.fortio, err = findFortio(); err != nil {
		return rep, err
	}
	if s.gcSweep || slices.ContainsFunc(s.only, func(p string) bool { return strings.HasPrefix(p, "trellis") }) {
		if h.trellis, err = filepath.Abs(s.trellis); err != nil {
			return rep, err
		}
	}
	if s.runsProtocols() && s.idleConns > 0 {
		// Both ends of every idle connection are in this process and in
		// the client-side proxy, which inherits the limit.
		lim, err := raiseNoFile(uint64(2*s.idleConns + 1024))
		if err != nil {
			return rep, err
		}
		if lim < uint64(s.idleConns+1024) {
			return rep, fmt.Errorf("-idle-conns %d: RLIMIT_NOFILE is %d and cannot be raised (ulimit -n, or a smaller -idle-conns)", s.idleConns, lim)
		}
	}
	for _, b := range []struct {
		name string
		dst  *string
		flag string
	}{{"haproxy", &h.haproxy, s.haproxy}, {"nginx", &h.nginx, s.nginx}} {
		if !slices.Contains(s.only, b.name) {
			continue
		}
		p, err := exec.LookPath(b.flag)
		if err != nil {
			return rep, fmt.Errorf("%s not found at %s (apt-get install %s, pass -%s, or leave it out with -only): %w", b.name, b.flag, b.name, b.name, err)
		}
		*b.dst = p
	}

	if h.dir, err = os.MkdirTemp("", "trellis-bench-"); err != nil {
		return rep, err
	}
	// nginx workers run as nobody and must reach their temp paths.
	if err := os.Chmod(h.dir, 0o755); err != nil {
		return rep, err
	}
	failed := false
	defer func() {
		if failed || s.keep {
			fmt.Fprintf(log, "bench: configs and logs kept in %s\n", h.dir)
			return
		}
		os.RemoveAll(h.dir)
	}()
	if h.certs, err = writeCerts(h.dir); err != nil {
		failed = true
		return rep, err
	}

	sup := &supervisor{dir: h.dir}
	defer sup.stopAll()
	defer func() {
		if h.otlp != nil {
			fmt.Fprintf(log, "bench: trellis-tracing: the OTLP sink received %d spans\n", h.otlp.spans.Load())
			h.otlp.stop()
		}
	}()
	if h.server, err = startServer(ctx, h, sup); err != nil {
		failed = true
		return rep, err
	}

	var failedPaths []string
	for _, p := range allPaths {
		if !slices.Contains(s.only, p.name) {
			continue
		}
		fmt.Fprintf(log, "bench: %s: fixed %d req/s × %v over %d conns, then max rate × %v over %d conns\n",
			p.name, s.fixedQPS, s.fixedDuration, s.fixedConns, s.maxDurtn, s.maxConns)
		rs, err := measure(ctx, h, p, s)
		rep.Runs = append(rep.Runs, rs...)
		if err != nil {
			failed = true
			failedPaths = append(failedPaths, p.name)
			fmt.Fprintf(log, "bench: %s: FAILED: %v\n", p.name, err)
			if ctx.Err() != nil {
				break
			}
			continue
		}
	}
	if s.runsProtocols() && ctx.Err() == nil {
		if rep.protoReport, err = runProtocols(ctx, h, s, log); err != nil {
			failed = true
			failedPaths = append(failedPaths, "protocols")
			fmt.Fprintf(log, "bench: FAILED: %v\n", err)
		}
	}
	if s.gcSweep && ctx.Err() == nil {
		if rep.GCSweep, err = runGCSweep(ctx, h, s, log); err != nil {
			failed = true
			failedPaths = append(failedPaths, "gc-sweep")
			fmt.Fprintf(log, "bench: FAILED: %v\n", err)
		}
	}
	if len(failedPaths) > 0 {
		return rep, fmt.Errorf("%s (details above)", strings.Join(failedPaths, ", "))
	}
	return rep, nil
}

func round(v float64, places int) float64 {
	m := math.Pow10(places)
	return math.Round(v*m) / m
}

func printTable(w io.Writer, rs []result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "path\tbody\tp50 ms\tp90 ms\tp99 ms\tp99.9 ms\tmax req/s\tproxy CPU-s/1k req\tproxy RSS MB\tRSS MB idle(anon,pss)/max per sidecar\t")
	for _, r := range rs {
		fmt.Fprintf(tw, "%s\t%s\t%.3f\t%.3f\t%.3f\t%.3f\t%.0f\t%.4f\t%.1f\t%s\t\n", r.Name, r.Body, r.P50, r.P90, r.P99, r.P999, r.MaxRPS, r.CPUPerKReq, r.RSSMB, sidecarCell(r.Sidecars))
	}
	tw.Flush()
}

func pngBeside(jsonPath string) string {
	return strings.TrimSuffix(jsonPath, filepath.Ext(jsonPath)) + ".png"
}

// redrawChart draws the chart of the report in path beside it.
func redrawChart(path string, stdout, stderr io.Writer) int {
	b, err := os.ReadFile(path)
	if err == nil {
		var rep report
		if err = json.Unmarshal(b, &rep); err == nil {
			var wrote bool
			if wrote, err = writeChart(pngBeside(path), rep.Runs); err == nil && !wrote {
				err = errNoChartData
			}
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "bench: -chart-from %s: %v\n", path, err)
		return 1
	}
	fmt.Fprintf(stdout, "wrote %s\n", pngBeside(path))
	return 0
}

func writeReport(path string, rep report) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
