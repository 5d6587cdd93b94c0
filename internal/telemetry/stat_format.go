package telemetry

import "time"

// FormatLatency prints a latency as the stat table does (milliseconds with
// the precision that matters at each scale), for other tables in its
// style (`trellis stat`, `trellis top`).
func FormatLatency(d time.Duration) string { return formatLatency(d) }
