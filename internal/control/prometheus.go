package control

import (
	"encoding/json"
	"net/http"
	"sort"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// PrometheusSDPath is where the metrics listener serves Prometheus HTTP
// service discovery (http_sd_configs): every registered proxy's admin
// /metrics and this control plane's own.
const PrometheusSDPath = "/prometheus/sd"

// sdGroup is one target group of Prometheus' HTTP SD format.
type sdGroup struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

// Roles, the trellis_role target label.
const (
	roleProxy   = "proxy"
	roleControl = "control"
)

// prometheusTargets lists self (this control plane's metrics address) and
// every endpoint that registered an admin address, one group each, in a
// stable order. Service, namespace and role become target labels; the
// rest is __meta_trellis_* for relabelling.
func prometheusTargets(self string, eps []*meshv1.Endpoint) []sdGroup {
	groups := []sdGroup{{Targets: []string{self}, Labels: map[string]string{"trellis_role": roleControl}}}
	for _, ep := range eps {
		if ep.GetAdminAddress() == "" {
			continue
		}
		l := map[string]string{
			"trellis_role":               roleProxy,
			"service":                    ep.GetService(),
			"namespace":                  ep.GetNamespace(),
			"__meta_trellis_endpoint_id": ep.GetId(),
			"__meta_trellis_identity":    ep.GetIdentity(),
			"__meta_trellis_inbound":     ep.GetAddress(),
			"__meta_trellis_healthy":     boolString(ep.GetHealthy()),
		}
		for k, v := range ep.GetLabels() {
			l["__meta_trellis_label_"+sdLabelName(k)] = v
		}
		groups = append(groups, sdGroup{Targets: []string{ep.GetAdminAddress()}, Labels: l})
	}
	sort.SliceStable(groups[1:], func(i, j int) bool { return groups[i+1].Targets[0] < groups[j+1].Targets[0] })
	return groups
}

func boolString(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

// sdLabelName maps an endpoint label key to a Prometheus label name:
// every character outside [a-zA-Z0-9_] becomes '_', as Kubernetes SD does.
func sdLabelName(k string) string {
	b := []byte(k)
	for i, c := range b {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			b[i] = '_'
		}
	}
	return string(b)
}

// serveSD answers Prometheus' HTTP SD from the mesh view: no store read
// per poll. No token, like /metrics: see docs/metrics.md for what it
// reveals and why that is safe on this listener.
func (c *Control) serveSD(w http.ResponseWriter, _ *http.Request) {
	groups := prometheusTargets(c.metricsLn.Addr().String(), c.view.State().Endpoints())
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(groups); err != nil {
		c.log.Debug("prometheus sd: write", "err", err)
	}
}

// proxyStates counts the connected proxies by push state, at scrape time.
func (c *Control) proxyStates() map[string]int {
	counts := map[string]int{}
	for _, st := range c.push.Statuses() {
		counts[st.State]++
	}
	return counts
}
