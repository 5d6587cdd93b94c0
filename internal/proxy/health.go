package proxy

import (
	"trellis.dev/trellis/internal/telemetry"
)

// appHealth is the verdict of the sidecar's check of the local app, for
// /ready: nil is healthy (no check, or a client-only proxy).
type appHealth struct {
	reason string
}

// SetAppHealth records the verdict of the app's health check: while the
// app is not healthy /ready answers 503 with the reason.
func (p *Proxy) SetAppHealth(healthy bool, reason string) {
	if healthy {
		p.appHealth.Store(nil)
		return
	}
	if reason == "" {
		reason = "unhealthy"
	}
	p.appHealth.Store(&appHealth{reason: reason})
}

// appUnhealthy is why the app is not healthy, or "" when it is.
func (p *Proxy) appUnhealthy() string {
	if h := p.appHealth.Load(); h != nil {
		return "app not healthy: " + h.reason
	}
	return ""
}

// HealthMetrics are the health checks' instruments on the proxy's registry.
func (p *Proxy) HealthMetrics() *telemetry.HealthMetrics { return p.metrics.Health }
