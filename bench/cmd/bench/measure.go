package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// A body is one variant of the HTTP load: the response body the fortio
// server is asked for (?size=N) and the request body fortio POSTs
// (-payload-size N; fortio's echo server then answers with it).
type body struct {
	name      string
	resp, req int
}

var allBodies = []body{
	{"0B", 0, 0},
	{"1KiB", 1024, 0},
	{"1KiB-post", 1024, 1024}, // 1 KiB each way
}

// defaultBodies is what `make bench` measures: what issue 13 asks for.
const defaultBodies = "0B,1KiB"

func bodyNames() string {
	var n []string
	for _, b := range allBodies {
		n = append(n, b.name)
	}
	return strings.Join(n, ",")
}

// selectBodies parses -bodies.
func selectBodies(list string) ([]body, error) {
	var out []body
	for _, n := range strings.Split(list, ",") {
		n = strings.TrimSpace(n)
		i := slices.IndexFunc(allBodies, func(b body) bool { return b.name == n })
		if i < 0 {
			return nil, fmt.Errorf("-bodies: unknown body %q (valid: %s)", n, bodyNames())
		}
		if !slices.Contains(out, allBodies[i]) {
			out = append(out, allBodies[i])
		}
	}
	return out, nil
}

// url is base asking for b's response body. A POST is echoed, so it needs
// no size parameter.
func (b body) url(base string) string {
	if b.resp == 0 || b.req > 0 {
		return base
	}
	return fmt.Sprintf("%s?size=%d", base, b.resp)
}

// sidecarRSS is one proxy half's memory in a row.
type sidecarRSS struct {
	Name   string  `json:"name"`
	IdleMB float64 `json:"rss_idle_mb"` // after start, before any load
	// IdleAnonMB is the anonymous part of IdleMB (heap, stacks); the rest
	// is file pages: the binary's text and data, shared libraries.
	IdleAnonMB float64 `json:"rss_idle_anon_mb"`
	// IdlePssMB is the idle proportional set size: shared pages (the
	// binary's, shared by both halves of a pair) split among the processes
	// that map them.
	IdlePssMB float64 `json:"pss_idle_mb"`
	MaxMB     float64 `json:"rss_max_mb"` // peak sampled during the max-rate run
}

// sidecarCell formats a row's sidecars for the table: idle (anon of it,
// pss) / max, "a(b,c)/d + ...".
func sidecarCell(ss []sidecarRSS) string {
	if len(ss) == 0 {
		return "-"
	}
	var parts []string
	for _, s := range ss {
		parts = append(parts, fmt.Sprintf("%.1f(%.1f,%.1f)/%.1f", s.IdleMB, s.IdleAnonMB, s.IdlePssMB, s.MaxMB))
	}
	return strings.Join(parts, " + ")
}

func mb(b uint64) float64 { return round(float64(b)/(1<<20), 1) }

// halfPids lists each root with its descendants (nginx's worker), one
// group per half.
func halfPids(roots []int) ([][]int, error) {
	groups := make([][]int, len(roots))
	for i, r := range roots {
		pids, err := withDescendants([]int{r})
		if err != nil {
			return nil, err
		}
		groups[i] = pids
	}
	return groups, nil
}

// groupRSS is the RSS of each group.
func groupRSS(groups [][]int) ([]uint64, error) { return groupStatus(groups, "VmRSS") }

// groupStatus sums a kB field of /proc/PID/status in each group.
func groupStatus(groups [][]int, key string) ([]uint64, error) {
	return groupProc(groups, "status", key)
}

// groupProc sums a kB field of /proc/PID/<file> in each group.
func groupProc(groups [][]int, file, key string) ([]uint64, error) {
	out := make([]uint64, len(groups))
	for i, g := range groups {
		n, err := procSum(g, file, key)
		if err != nil {
			return nil, err
		}
		out[i] = n
	}
	return out, nil
}

// rssPeak samples the RSS of each group (read) every interval until
// stopped and keeps each group's peak; the first error ends the sampling.
type rssPeak struct {
	stopc chan struct{}
	done  chan struct{}
	mu    sync.Mutex
	peak  []uint64
	err   error
}

func sampleRSS(groups int, read func() ([]uint64, error), every time.Duration) *rssPeak {
	p := &rssPeak{stopc: make(chan struct{}), done: make(chan struct{}), peak: make([]uint64, groups)}
	go func() {
		defer close(p.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			if !p.sample(read) {
				return
			}
			select {
			case <-p.stopc:
				p.sample(read) // the last moment of the run counts too
				return
			case <-t.C:
			}
		}
	}()
	return p
}

func (p *rssPeak) sample(read func() ([]uint64, error)) bool {
	n, err := read()
	if err == nil && len(n) != len(p.peak) {
		err = fmt.Errorf("rss: %d readings for %d groups", len(n), len(p.peak))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		p.err = err
		return false
	}
	for i := range n {
		p.peak[i] = max(p.peak[i], n[i])
	}
	return true
}

// stop ends the sampling and returns each group's peak.
func (p *rssPeak) stop() ([]uint64, error) {
	close(p.stopc)
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.peak, p.err
}

// measure brings one path up, reads its idle RSS, runs both loads for each
// body variant and tears the path down. It returns the rows that
// completed; the first failure ends the path.
func measure(ctx context.Context, h *harness, p path, s settings) ([]result, error) {
	sup := &supervisor{dir: h.dir}
	defer sup.stopAll()
	base, roots, err := p.start(ctx, h, sup)
	if err != nil {
		return nil, err
	}
	groups, err := halfPids(roots)
	if err != nil {
		return nil, err
	}
	idle, err := groupRSS(groups)
	if err != nil {
		return nil, err
	}
	anon, err := groupStatus(groups, "RssAnon")
	if err != nil {
		return nil, err
	}
	pss, err := groupProc(groups, "smaps_rollup", "Pss")
	if err != nil {
		return nil, err
	}
	var out []result
	for _, b := range s.bodies {
		r, err := measureBody(ctx, h, p, s, b, base, roots, idle, anon, pss)
		if err != nil {
			return out, fmt.Errorf("%s: %w", b.name, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// measureBody runs the fixed-rate and the max-rate load of one body.
func measureBody(ctx context.Context, h *harness, p path, s settings, b body, base string, roots []int, idle, anon, pss []uint64) (result, error) {
	url := b.url(base)
	tag := p.name + "-" + b.name
	fixed, err := load(ctx, h.fortio, h.dir, loadSpec{name: tag + "-fixed", qps: s.fixedQPS, conns: s.fixedConns, dur: s.fixedDuration, target: url, payload: b.req})
	if err != nil {
		return result{}, err
	}
	// Workers exist by now; list them once for the CPU and RSS readings.
	groups, err := halfPids(roots)
	if err != nil {
		return result{}, err
	}
	pids := slices.Concat(groups...)
	cpu0, err := cpuSeconds(pids)
	if err != nil {
		return result{}, err
	}
	peaks := sampleRSS(len(groups), func() ([]uint64, error) { return groupRSS(groups) }, 100*time.Millisecond)
	maxRun, err := load(ctx, h.fortio, h.dir, loadSpec{name: tag + "-max", conns: s.maxConns, dur: s.maxDurtn, target: url, payload: b.req})
	peak, perr := peaks.stop()
	if err != nil {
		return result{}, err
	}
	if perr != nil {
		return result{}, perr
	}
	cpu1, err := cpuSeconds(pids)
	if err != nil {
		return result{}, err
	}
	rss, err := rssBytes(pids)
	if err != nil {
		return result{}, err
	}
	r := result{
		Name: p.name, Body: b.name, RespBytes: b.resp, ReqBytes: b.req,
		P50:    round(fixed.pctMS[50], 3),
		P90:    round(fixed.pctMS[90], 3),
		P99:    round(fixed.pctMS[99], 3),
		P999:   round(fixed.pctMS[99.9], 3),
		MaxRPS: round(maxRun.qps, 1),
		RSSMB:  mb(rss),
	}
	for i := range roots {
		r.Sidecars = append(r.Sidecars, sidecarRSS{Name: p.halves[i], IdleMB: mb(idle[i]), IdleAnonMB: mb(anon[i]), IdlePssMB: mb(pss[i]), MaxMB: mb(peak[i])})
	}
	if len(pids) > 0 {
		r.CPUPerKReq = round((cpu1-cpu0)/(float64(maxRun.requests)/1000), 4)
	}
	if fixed.errors+maxRun.errors > 0 {
		fmt.Fprintf(os.Stderr, "bench: %s: %d non-200 responses (under the 0.1%% limit)\n", tag, fixed.errors+maxRun.errors)
	}
	return r, nil
}
