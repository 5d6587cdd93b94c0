package telemetry

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// ControlRefusedName counts Certify and Register calls the control plane
// refused, by RPC and reason (a bounded set: push.Reason*).
const ControlRefusedName = "trellis_control_security_refused_total"

// ControlSecurity counts the control plane's refusals. It implements
// push.Refusals.
type ControlSecurity struct {
	refused *prometheus.CounterVec
	// children caches label pairs; reasons are few and fixed.
	mu       sync.Mutex
	children map[[2]string]prometheus.Counter
}

// NewControlSecurity registers the refusal counter on reg, with the given
// (rpc, reason) pairs pre-created at 0 so an alert on their rate sees them.
func NewControlSecurity(reg prometheus.Registerer, known [][2]string) (*ControlSecurity, error) {
	m := &ControlSecurity{
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: ControlRefusedName,
			Help: "Certify and Register calls refused, by rpc and reason (a join token for another identity, revoked, expired or spent; an endpoint for a service its account may not serve...).",
		}, []string{"rpc", "reason"}),
		children: map[[2]string]prometheus.Counter{},
	}
	for _, k := range known {
		m.children[k] = m.refused.WithLabelValues(k[0], k[1])
	}
	if err := reg.Register(m.refused); err != nil {
		return nil, err
	}
	return m, nil
}

// Refused implements push.Refusals.
func (m *ControlSecurity) Refused(rpc, reason string) {
	k := [2]string{rpc, reason}
	m.mu.Lock()
	c, ok := m.children[k]
	if !ok {
		c = m.refused.WithLabelValues(rpc, reason)
		m.children[k] = c
	}
	m.mu.Unlock()
	c.Inc()
}
