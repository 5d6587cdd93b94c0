package telemetry

import "github.com/prometheus/client_golang/prometheus"

// Names of the push volume metrics (the delta protocol, issue 12).
const (
	ControlPushBytesName       = "trellis_control_push_bytes_total"
	ControlPushIncrementalName = "trellis_control_push_incremental_snapshots_total"
)

// RegisterPushVolume registers the push server's byte and delta counts on
// reg, read at scrape time: bytes is the encoded size of every snapshot
// sent, incremental the number of those that were deltas.
func RegisterPushVolume(reg prometheus.Registerer, bytes, incremental func() uint64) error {
	for _, c := range []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: ControlPushBytesName,
			Help: "Encoded bytes of the snapshots sent to proxies (full and incremental).",
		}, func() float64 { return float64(bytes()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: ControlPushIncrementalName,
			Help: "Snapshots sent as deltas (only the changed services) rather than whole.",
		}, func() float64 { return float64(incremental()) }),
	} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
