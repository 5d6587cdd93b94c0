package telemetry

import (
	"github.com/prometheus/client_golang/prometheus"
)

// The proxy's rate-limit counters: each decision of each RateLimitPolicy,
// by direction (inbound: a Service target; outbound: a route target),
// policy ("namespace/name") and decision (allowed, limited). The policy
// label is bounded by the configuration, never by requests.
const (
	RateLimitDecisionsName = "trellis_proxy_ratelimit_decisions_total"
	RateLimitAllowed       = "allowed"
	RateLimitLimited       = "limited"
)

// RateLimitMetrics holds the rate-limit instruments.
type RateLimitMetrics struct {
	decisions *prometheus.CounterVec
}

func newRateLimitMetrics(reg prometheus.Registerer) (*RateLimitMetrics, error) {
	m := &RateLimitMetrics{decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: RateLimitDecisionsName,
		Help: "Rate-limit decisions by direction, policy (namespace/name) and decision (allowed, limited: answered 429 or RESOURCE_EXHAUSTED).",
	}, []string{"direction", "policy", "decision"})}
	if err := reg.Register(m.decisions); err != nil {
		return nil, err
	}
	return m, nil
}

// RateLimitCounters are one policy's two counters, looked up once when a
// snapshot is compiled so a decision only increments.
type RateLimitCounters struct {
	Allowed, Limited prometheus.Counter
}

// Policy returns the counters of policy in direction, both shown from 0.
// A nil RateLimitMetrics (compile-only tests) gives unregistered counters.
func (m *RateLimitMetrics) Policy(direction, policy string) RateLimitCounters {
	if m == nil {
		opts := prometheus.CounterOpts{Name: "unregistered"}
		return RateLimitCounters{Allowed: prometheus.NewCounter(opts), Limited: prometheus.NewCounter(opts)}
	}
	return RateLimitCounters{
		Allowed: m.decisions.WithLabelValues(direction, policy, RateLimitAllowed),
		Limited: m.decisions.WithLabelValues(direction, policy, RateLimitLimited),
	}
}
