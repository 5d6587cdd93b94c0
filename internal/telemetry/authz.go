package telemetry

import "github.com/prometheus/client_golang/prometheus"

// The proxy's authorization decisions on its inbound traffic (requests and
// TCP connections), by the policy that decided and the decision. The policy
// label is bounded by the policies that apply to the proxy's own service:
// "namespace/name", or one of AuthzDefault and AuthzNoMatch.
const (
	AuthzDecisionsName = "trellis_proxy_authz_decisions_total"
	// AuthzDefault: no ALLOW policy applies; the mesh-wide default decided.
	AuthzDefault = "default"
	// AuthzNoMatch: ALLOW policies apply and none matched.
	AuthzNoMatch = "no-allow-match"
	AuthzAllow   = "allow"
	AuthzDeny    = "deny"
)

func newAuthzVec() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: AuthzDecisionsName,
		Help: "Authorization decisions on inbound requests and TCP connections, by the policy that decided (namespace/name, \"default\" or \"no-allow-match\") and decision (allow, deny).",
	}, []string{"policy", "decision"})
}

// AuthzCounter returns the counter of one (policy, decision); callers keep
// it (the proxy resolves every counter of a snapshot when compiling it),
// so counting a decision does not allocate.
func (m *ProxyMetrics) AuthzCounter(policy, decision string) prometheus.Counter {
	return m.authz.WithLabelValues(policy, decision)
}
