package telemetry

import "github.com/prometheus/client_golang/prometheus"

// EgressRequestsName counts the outbound traffic policy's decisions on
// requests for hosts outside the registry (neither a mesh service nor an
// ExternalService): passed through under ALLOW_ANY, refused under
// REGISTRY_ONLY, by protocol (http: forwarded requests; tcp: CONNECT
// tunnels). Requests to registered services are not counted here; the
// per-request families count them under their destination.
const EgressRequestsName = "trellis_proxy_egress_requests_total"

// Label values of EgressRequestsName.
const (
	EgressAllowAny     = "allow_any"
	EgressRegistryOnly = "registry_only"
	EgressPassthrough  = "passthrough"
	EgressRefused      = "refused"
	EgressHTTP         = "http"
	EgressTCP          = "tcp"
)

// EgressMetrics counts egress decisions; every series is made up front, so
// counting allocates nothing and all show at 0 from the start. A nil
// *EgressMetrics counts nothing.
type EgressMetrics struct {
	vec *prometheus.CounterVec
	// c[policy][decision][protocol]; policy 0 allow_any, 1 registry_only;
	// decision 0 passthrough, 1 refused; protocol 0 http, 1 tcp.
	c [2][2][2]prometheus.Counter
}

func newEgressMetrics() *EgressMetrics {
	m := &EgressMetrics{vec: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: EgressRequestsName,
		Help: "Outbound requests for hosts outside the registry, by the outbound traffic policy in force (allow_any, registry_only), its decision (passthrough, refused) and protocol (http, tcp for CONNECT).",
	}, []string{"policy", "decision", "protocol"})}
	for i, pol := range []string{EgressAllowAny, EgressRegistryOnly} {
		for j, dec := range []string{EgressPassthrough, EgressRefused} {
			for k, proto := range []string{EgressHTTP, EgressTCP} {
				m.c[i][j][k] = m.vec.WithLabelValues(pol, dec, proto)
			}
		}
	}
	return m
}

// Count counts one decision: registryOnly is the policy in force, refused
// the decision, tunnel a CONNECT (else an HTTP request).
func (m *EgressMetrics) Count(registryOnly, refused, tunnel bool) {
	if m == nil {
		return
	}
	m.c[b2i(registryOnly)][b2i(refused)][b2i(tunnel)].Inc()
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
