package telemetry

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// ControlLeaderName is 1 on the replica that is the leader of the replicas
// sharing one store (always, with bbolt's single replica), 0 on the others.
const ControlLeaderName = "trellis_control_leader"

// NewLeaderMetrics registers the leader gauge on reg; isLeader is read at
// scrape time.
func NewLeaderMetrics(reg prometheus.Registerer, isLeader func() bool) error {
	g := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: ControlLeaderName,
		Help: "1 on the control-plane replica elected leader (it runs the once-only work), 0 on the others.",
	}, func() float64 {
		if isLeader() {
			return 1
		}
		return 0
	})
	if err := reg.Register(g); err != nil {
		return fmt.Errorf("telemetry: %s: %w", ControlLeaderName, err)
	}
	return nil
}
