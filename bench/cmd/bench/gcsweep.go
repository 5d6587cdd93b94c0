package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// The GC sweep (-gc-sweep): the trellis path with the 0-byte body, once per
// Go GC setting given to both proxies through the environment, to choose
// the setting that keeps each sidecar small without paying for it in CPU
// or throughput.

// gcSetting is one environment for both proxies.
type gcSetting struct {
	name string
	env  []string
}

var gcSettings = []gcSetting{
	{"default", nil},
	{"GOGC=50", []string{"GOGC=50"}},
	{"GOMEMLIMIT=20MiB", []string{"GOMEMLIMIT=20MiB"}},
	{"GOGC=200,GOMEMLIMIT=25MiB", []string{"GOGC=200", "GOMEMLIMIT=25MiB"}},
}

func gcSettingNames() string {
	var n []string
	for _, g := range gcSettings {
		n = append(n, g.name)
	}
	return strings.Join(n, "; ")
}

// gcRow is one setting's trellis row.
type gcRow struct {
	Setting string `json:"setting"`
	result
}

func runGCSweep(ctx context.Context, h *harness, s settings, log io.Writer) ([]gcRow, error) {
	s.bodies = allBodies[:1] // 0B
	var rows []gcRow
	for _, g := range gcSettings {
		fmt.Fprintf(log, "bench: gc-sweep: trellis with %s\n", g.name)
		p := path{name: "trellis-gc", halves: trellisHalves, start: func(ctx context.Context, h *harness, sup *supervisor) (string, []int, error) {
			pr, err := startTrellisPair(ctx, h, sup, trellisOpts{env: g.env, apply: withFeatures("")})
			if err != nil {
				return "", nil, err
			}
			return pr.url, pr.roots, nil
		}}
		rs, err := measure(ctx, h, p, s)
		if err != nil {
			return rows, fmt.Errorf("gc-sweep: %s: %w", g.name, err)
		}
		rs[0].Name = "trellis"
		rows = append(rows, gcRow{Setting: g.name, result: rs[0]})
	}
	return rows, nil
}

func printGCSweep(w io.Writer, rows []gcRow) {
	if len(rows) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "trellis, 0B, with\tp99 ms\tmax req/s\tproxy CPU-s/1k req\tRSS MB idle(anon,pss)/max per sidecar\t")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%.3f\t%.0f\t%.4f\t%s\t\n", r.Setting, r.P99, r.MaxRPS, r.CPUPerKReq, sidecarCell(r.Sidecars))
	}
	tw.Flush()
}
