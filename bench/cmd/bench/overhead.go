package main

import (
	"context"
	"fmt"
	"io"
	"strings"
)

// The observability overhead rows: trellis-nometrics is the trellis path
// with both proxies started with --disable-metrics (the telemetry filter
// swapped for a pass-through), the baseline every other Trellis row of the
// same run is compared with. The trellis row is the default: labelled
// metrics on.

func startTrellisNoMetrics(ctx context.Context, h *harness, sup *supervisor) (string, []int, error) {
	return startTrellisWith(ctx, h, sup, "", func(string) []string { return []string{"--disable-metrics"} })
}

// baselinePath is the row the overhead is measured against.
const baselinePath = "trellis-nometrics"

// overhead is one Trellis row against the baseline, as ratios (1.03: 3%
// more than with metrics off).
type overhead struct {
	Name     string  `json:"name"`
	Body     string  `json:"body"`
	CPURatio float64 `json:"cpu_ratio_vs_nometrics"`
	P99Ratio float64 `json:"p99_ratio_vs_nometrics"`
}

// overheads compares every other Trellis row with the baseline row of the
// same body; none for a body whose baseline did not run or spent no CPU.
func overheads(rs []result) []overhead {
	base := make(map[string]result)
	for _, r := range rs {
		if r.Name == baselinePath && r.CPUPerKReq > 0 && r.P99 > 0 {
			base[r.Body] = r
		}
	}
	var out []overhead
	for _, r := range rs {
		b, ok := base[r.Body]
		if !ok || r.Name == baselinePath || !strings.HasPrefix(r.Name, "trellis") {
			continue
		}
		out = append(out, overhead{
			Name:     r.Name,
			Body:     r.Body,
			CPURatio: round(r.CPUPerKReq/b.CPUPerKReq, 3),
			P99Ratio: round(r.P99/b.P99, 3),
		})
	}
	return out
}

func printOverheads(w io.Writer, rows []overhead) {
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "\nagainst %s (both proxies --disable-metrics), same run:\n", baselinePath)
	for _, o := range rows {
		fmt.Fprintf(w, "  %-18s %-9s CPU per request ×%.3f (%+.1f%%), p99 ×%.3f\n", o.Name, o.Body, o.CPURatio, (o.CPURatio-1)*100, o.P99Ratio)
	}
}
