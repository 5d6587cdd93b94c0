package telemetry

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// FormatTable writes rows as a fixed-width table, one service per line. A
// service that served no requests in the window shows "-" for its rates.
// LIMITED is the count of 429s (rate-limited requests) in the window.
func FormatTable(w io.Writer, rows []Row) error {
	width := len("SERVICE")
	for _, r := range rows {
		width = max(width, len(r.Service))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%-*s  %9s  %8s  %8s  %9s  %9s  %7s\n", width, "SERVICE", "REQUESTS", "RPS", "SUCCESS", "P50", "P99", "LIMITED")
	for _, r := range rows {
		success, rps, p50, p99 := "-", "-", "-", "-"
		if r.Requests > 0 {
			success = fmt.Sprintf("%.2f%%", 100*r.Success)
			rps = fmt.Sprintf("%.1f", r.RPS)
			p50, p99 = formatLatency(r.P50), formatLatency(r.P99)
		}
		fmt.Fprintf(&b, "%-*s  %9d  %8s  %8s  %9s  %9s  %7d\n", width, r.Service, r.Requests, rps, success, p50, p99, r.Limited)
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("telemetry: write table: %w", err)
	}
	return nil
}

// formatLatency prints milliseconds with the precision that matters at each
// scale, so a column of latencies lines up and reads at a glance.
func formatLatency(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	switch {
	case ms < 10:
		return fmt.Sprintf("%.2fms", ms)
	case ms < 100:
		return fmt.Sprintf("%.1fms", ms)
	case ms < 10000:
		return fmt.Sprintf("%.0fms", ms)
	default:
		return fmt.Sprintf("%.1fs", d.Seconds())
	}
}
