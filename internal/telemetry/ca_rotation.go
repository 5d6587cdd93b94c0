package telemetry

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Names of the CA rotation gauges.
const (
	CARotationPhaseName   = "trellis_control_ca_rotation_phase"
	CARotationLaggingName = "trellis_control_ca_rotation_lagging_proxies"
)

// CARotationState is read at scrape time: the rotation phase and the
// registered proxies its last step found behind.
type CARotationState func() (phase string, lagging int)

// RegisterCARotation exports the phase (1 for the current one of phases,
// 0 for the others, every phase present) and the lagging proxies.
func RegisterCARotation(reg prometheus.Registerer, phases []string, state CARotationState) error {
	return reg.Register(caRotation{
		phases: phases,
		state:  state,
		phase: prometheus.NewDesc(CARotationPhaseName,
			"CA rotation phase: 1 for the current one (idle, propagating, reissuing), 0 for the others.", []string{"phase"}, nil),
		lagging: prometheus.NewDesc(CARotationLaggingName,
			"Registered proxies the current CA rotation phase waits for, at its last step (0 when idle).", nil, nil),
	})
}

type caRotation struct {
	phases         []string
	state          CARotationState
	phase, lagging *prometheus.Desc
}

func (c caRotation) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.phase
	ch <- c.lagging
}

func (c caRotation) Collect(ch chan<- prometheus.Metric) {
	cur, lagging := c.state()
	for _, p := range c.phases {
		v := 0.0
		if p == cur {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(c.phase, prometheus.GaugeValue, v, p)
	}
	ch <- prometheus.MustNewConstMetric(c.lagging, prometheus.GaugeValue, float64(lagging))
}
