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

// parseFortio parses fortio's -json output and checks it has what the
// report needs.
func parseFortio(data []byte) (loadResult, error) {
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
		if c, err := strconv.Atoi(code); err != nil || c != 200 {
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

// load runs one fortio load against url and parses its result.
func load(ctx context.Context, fortio, dir, name string, qps, conns int, dur time.Duration, url string) (loadResult, error) {
	jsonPath := filepath.Join(dir, name+".json")
	logPath := filepath.Join(dir, name+".log")
	lf, err := os.Create(logPath)
	if err != nil {
		return loadResult{}, err
	}
	defer lf.Close()
	cmd := exec.CommandContext(ctx, fortio, "load",
		"-qps", strconv.Itoa(qps), "-c", strconv.Itoa(conns), "-t", dur.String(),
		"-p", percentileFlag, "-json", jsonPath, "-loglevel", "warning", url)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Run(); err != nil {
		return loadResult{}, fmt.Errorf("fortio load %s: %w; last log lines:\n%s", name, err, tail(logPath, 15))
	}
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		return loadResult{}, err
	}
	r, err := parseFortio(b)
	if err != nil {
		return loadResult{}, fmt.Errorf("%s: %w", name, err)
	}
	// A proxy that answers errors fast would look fast: refuse the run.
	if r.errors*1000 > r.requests {
		return r, fmt.Errorf("%s: %d of %d requests were not 200 (see %s)", name, r.errors, r.requests, logPath)
	}
	return r, nil
}
