package main

import (
	"fmt"
	"io"
	"text/tabwriter"
)

// The targets of issue 13, checked against one run: each Trellis figure
// against the HAProxy pair's of the same run and body, or against a fixed
// goal. A target whose rows did not run is left out.

// target is one line of the check.
type target struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Goal  string  `json:"goal"` // e.g. "<= 1.0"
	Met   bool    `json:"met"`
}

func atMost(name string, v, goal float64) target {
	return target{Name: name, Value: round(v, 3), Goal: fmt.Sprintf("<= %g", goal), Met: v <= goal}
}

func atLeast(name string, v, goal float64) target {
	return target{Name: name, Value: round(v, 3), Goal: fmt.Sprintf(">= %g", goal), Met: v >= goal}
}

// targets checks rep's figures against issue 13's list.
func targets(rep report) []target {
	var out []target
	var haproxy0 *result
	for _, b := range allBodies {
		tr, ok1 := find(rep.Runs, "trellis", b.name)
		ha, ok2 := find(rep.Runs, "haproxy", b.name)
		if ok1 {
			out = append(out, sidecarTargets(tr)...)
		}
		if !ok1 || !ok2 || ha.P50 <= 0 || ha.P99 <= 0 || ha.MaxRPS <= 0 || ha.CPUPerKReq <= 0 {
			continue
		}
		if b.name == "0B" {
			haproxy0 = &ha
		}
		out = append(out,
			atMost("p50 at 1,000 req/s vs haproxy, "+b.name, tr.P50/ha.P50, 1),
			atMost("p99 at 1,000 req/s vs haproxy, "+b.name, tr.P99/ha.P99, 1),
			atLeast("max req/s vs haproxy, "+b.name, tr.MaxRPS/ha.MaxRPS, 1.2),
			atMost("CPU-s per 1k requests vs haproxy, "+b.name, tr.CPUPerKReq/ha.CPUPerKReq, 0.9))
	}
	if rep.TCPRatio > 0 {
		out = append(out, atLeast("TCP bulk MiB/s vs direct", rep.TCPRatio, 0.5))
	}
	if i := rep.Idle; i != nil {
		out = append(out, atMost(fmt.Sprintf("RSS MB holding %d idle connections", i.Connections), i.RSSHeldMB, 100))
		if haproxy0 != nil {
			out = append(out, atMost("p99 on a held connection vs haproxy's p99 at 1,000 req/s, 0B", i.P99/haproxy0.P99, 1))
		}
	}
	return out
}

// sidecarTargets: each Trellis sidecar <= 15 MB idle, <= 30 MB at max.
func sidecarTargets(r result) []target {
	var out []target
	for _, s := range r.Sidecars {
		if r.Body == allBodies[0].name {
			out = append(out, atMost("RSS MB idle, "+s.Name, s.IdleMB, 15))
		}
		out = append(out, atMost("RSS MB at max req/s, "+s.Name+", "+r.Body, s.MaxMB, 30))
	}
	return out
}

func printTargets(w io.Writer, ts []target) {
	if len(ts) == 0 {
		return
	}
	fmt.Fprintln(w, "\nissue 13 targets, this run:")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, t := range ts {
		mark := "MISSED"
		if t.Met {
			mark = "met"
		}
		fmt.Fprintf(tw, "  %s\t%.3f\t%s\t%s\n", t.Name, t.Value, t.Goal, mark)
	}
	tw.Flush()
}
