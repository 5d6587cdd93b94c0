package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"
)

// percentiles asked of fortio, as it spells them on the command line.
const percentileFlag = "50,90,99,99.9"

var wantPercentiles = []float64{50, 90, 99, 99.9}

// loadResult is what the harness keeps of one fortio load run.
type loadResult struct {
	qps      float64             // achieved requests per second
	requests int64               // calls made (all codes)
	errors   int64               // calls whose code was not 200
	pctMS    map[float64]float64 // percentile -> latency in ms
}

// fortioJSON is the part of fortio's -json output the harness reads.
type fortioJSON struct {
	ActualQPS         float64
	DurationHistogram struct {
		Count       int64
		Percentiles []struct {
			Percentile float64
			Value      float64 // seconds
		}
	}
	RetCodes map[string]int64
}

// Fortio's RetCodes key of a successful call: the HTTP status, or for
// -grpc -ping the health status it maps a good ping to.
const (
	okHTTP = "200"
	okGRPC = "SERVING"
)

// parseFortio parses fortio's -json output and checks it has what the
// report needs; calls whose RetCodes key is not ok count as errors.
func parseFortio(data []byte, ok string) (loadResult, error) {
	var f fortioJSON
	if err := json.Unmarshal(data, &f); err != nil {
		return loadResult{}, fmt.Errorf("fortio json: %w", err)
	}
	h := f.DurationHistogram
	if h.Count <= 0 {
		return loadResult{}, errors.New("fortio json: DurationHistogram.Count: no requests completed")
	}
	if math.IsNaN(f.ActualQPS) || math.IsInf(f.ActualQPS, 0) || f.ActualQPS <= 0 {
		return loadResult{}, fmt.Errorf("fortio json: ActualQPS: %v is not a positive rate", f.ActualQPS)
	}
	r := loadResult{qps: f.ActualQPS, requests: h.Count, pctMS: make(map[float64]float64)}
	for _, p := range h.Percentiles {
		if math.IsNaN(p.Value) || math.IsInf(p.Value, 0) || p.Value < 0 {
			return loadResult{}, fmt.Errorf("fortio json: percentile %v: bad value %v", p.Percentile, p.Value)
		}
		r.pctMS[p.Percentile] = p.Value * 1000
	}
	for _, want := range wantPercentiles {
		if _, ok := r.pctMS[want]; !ok {
			return loadResult{}, fmt.Errorf("fortio json: DurationHistogram.Percentiles: no p%v (run fortio with -p %q)", want, percentileFlag)
		}
	}
	for code, n := range f.RetCodes {
		if n < 0 {
			return loadResult{}, fmt.Errorf("fortio json: RetCodes[%s]: negative count %d", code, n)
		}
		if code != ok {
			r.errors += n
		}
	}
	return r, nil
}

// findFortio looks in $(go env GOPATH)/bin, then PATH.
func findFortio() (string, error) {
	var dirs []string
	if gp := os.Getenv("GOPATH"); gp != "" {
		dirs = append(dirs, filepath.SplitList(gp)...)
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		dirs = append(dirs, filepath.SplitList(string(trimNL(out)))...)
	}
	if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, "go"))
	}
	for _, d := range dirs {
		p := filepath.Join(d, "bin", "fortio")
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	if p, err := exec.LookPath("fortio"); err == nil {
		return p, nil
	}
	return "", errors.New("fortio not found in $(go env GOPATH)/bin or PATH; install it with: go install fortio.org/fortio@v1.66.5 (or `make fortio`)")
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// loadSpec is one fortio load run.
type loadSpec struct {
	name       string // file names in the temp dir: NAME.json, NAME.log
	qps, conns int    // qps 0: as fast as it goes
	dur        time.Duration
	target     string // URL, or host:port with grpc
	payload    int    // request body bytes (fortio then POSTs); 0: GET
	grpc       bool   // fortio's gRPC ping client instead of HTTP
}

func (l loadSpec) args(jsonPath string) []string {
	a := []string{"load", "-qps", strconv.Itoa(l.qps), "-c", strconv.Itoa(l.conns), "-t", l.dur.String(),
		"-p", percentileFlag, "-json", jsonPath, "-loglevel", "warning"}
	if l.payload > 0 {
		a = append(a, "-payload-size", strconv.Itoa(l.payload))
	}
	if l.grpc {
		a = append(a, "-grpc", "-ping")
	}
	return append(a, l.target)
}

// load runs one fortio load and parses its result.
func load(ctx context.Context, fortio, dir string, l loadSpec) (loadResult, error) {
	jsonPath := filepath.Join(dir, l.name+".json")
	logPath := filepath.Join(dir, l.name+".log")
	lf, err := os.Create(logPath)
	if err != nil {
		return loadResult{}, err
	}
	defer lf.Close()
	cmd := exec.CommandContext(ctx, fortio, l.args(jsonPath)...)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Run(); err != nil {
		return loadResult{}, fmt.Errorf("fortio load %s: %w; last log lines:\n%s", l.name, err, tail(logPath, 15))
	}
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		return loadResult{}, err
	}
	ok := okHTTP
	if l.grpc {
		ok = okGRPC
	}
	r, err := parseFortio(b, ok)
	if err != nil {
		return loadResult{}, fmt.Errorf("%s: %w", l.name, err)
	}
	// A proxy that answers errors fast would look fast: refuse the run.
	if r.errors*1000 > r.requests {
		return r, fmt.Errorf("%s: %d of %d requests were not %s (see %s)", l.name, r.errors, r.requests, ok, logPath)
	}
	return r, nil
}
