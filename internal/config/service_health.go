package config

import (
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// HealthCheckType is how a Service's proxies check their app.
type HealthCheckType string

// The health check types.
const (
	HealthCheckTCP  HealthCheckType = "tcp"
	HealthCheckHTTP HealthCheckType = "http"
	HealthCheckGRPC HealthCheckType = "grpc"
)

var healthCheckTypes = map[HealthCheckType]meshv1.HealthCheck_Type{
	HealthCheckTCP:  meshv1.HealthCheck_TCP,
	HealthCheckHTTP: meshv1.HealthCheck_HTTP,
	HealthCheckGRPC: meshv1.HealthCheck_GRPC,
}

// Health check defaults (internal/health's): a dead app leaves discovery
// within interval × unhealthyThreshold.
const (
	defaultHealthInterval   = 5 * time.Second
	defaultHealthTimeout    = time.Second
	defaultHealthyCount     = 2
	defaultUnhealthyCount   = 3
	minHealthInterval       = 100 * time.Millisecond
	maxHealthInterval       = 5 * time.Minute
	maxHealthCheckThreshold = 100
)

// ServiceHealthCheck is how every proxy of the Service checks its local
// app; an endpoint takes traffic only while its app passes. Unset: a TCP
// connect to the app's first port with the defaults.
type ServiceHealthCheck struct {
	// Type is tcp (default), http or grpc.
	Type HealthCheckType `json:"type,omitempty"`
	// Path is http's request path (default /), or grpc's health service
	// name (default "", the server as a whole).
	Path string `json:"path,omitempty"`
	// Port names the spec.ports entry whose app is checked; default the
	// first.
	Port               string           `json:"port,omitempty"`
	Interval           *metav1.Duration `json:"interval,omitempty"`
	Timeout            *metav1.Duration `json:"timeout,omitempty"`
	HealthyThreshold   int32            `json:"healthyThreshold,omitempty"`
	UnhealthyThreshold int32            `json:"unhealthyThreshold,omitempty"`
}

func (h *ServiceHealthCheck) setDefaults() {
	if h == nil {
		return
	}
	if h.Type == "" {
		h.Type = HealthCheckTCP
	}
	if h.Type == HealthCheckHTTP && h.Path == "" {
		h.Path = "/"
	}
	setDefault(&h.Interval, dur(defaultHealthInterval))
	setDefault(&h.Timeout, dur(min(defaultHealthTimeout, h.Interval.Duration)))
	if h.HealthyThreshold == 0 {
		h.HealthyThreshold = defaultHealthyCount
	}
	if h.UnhealthyThreshold == 0 {
		h.UnhealthyThreshold = defaultUnhealthyCount
	}
}

func (h *ServiceHealthCheck) validate(fe *fieldErrors, ports []ServicePort) {
	if h == nil {
		return
	}
	const f = "spec.healthCheck"
	if _, ok := healthCheckTypes[h.Type]; !ok {
		fe.addf(f+".type", "unknown type %q: must be tcp, http or grpc", h.Type)
	}
	switch {
	case h.Type == HealthCheckTCP && h.Path != "":
		fe.add(f+".path", "a tcp check takes no path")
	case h.Type == HealthCheckHTTP && !strings.HasPrefix(h.Path, "/"):
		fe.addf(f+".path", "%q must start with /", h.Path)
	case strings.ContainsAny(h.Path, " \t\r\n?#"):
		fe.addf(f+".path", "%q must not contain spaces, '?' or '#'", h.Path)
	}
	if h.Port != "" && !hasPortNamed(ports, h.Port) {
		fe.addf(f+".port", "%q is not the name of one of spec.ports", h.Port)
	}
	iv, to := h.Interval.Duration, h.Timeout.Duration
	if iv < minHealthInterval || iv > maxHealthInterval {
		fe.addf(f+".interval", "must be between %s and %s, got %s", minHealthInterval, maxHealthInterval, iv)
	}
	if to <= 0 || to > iv {
		fe.addf(f+".timeout", "must be positive and at most the interval (%s), got %s", iv, to)
	}
	for _, t := range []struct {
		name string
		v    int32
	}{{"healthyThreshold", h.HealthyThreshold}, {"unhealthyThreshold", h.UnhealthyThreshold}} {
		if t.v < 1 || t.v > maxHealthCheckThreshold {
			fe.addf(f+"."+t.name, "must be between 1 and %d, got %d", maxHealthCheckThreshold, t.v)
		}
	}
}

func hasPortNamed(ports []ServicePort, name string) bool {
	for _, p := range ports {
		if p.Name == name {
			return true
		}
	}
	return false
}

// HealthCheck is the check the Service's proxies run on their app (nil:
// the proxy's default, a TCP connect to its app).
func (s *Service) HealthCheck() *meshv1.HealthCheck {
	h := s.Spec.HealthCheck
	if h == nil {
		return nil
	}
	return &meshv1.HealthCheck{
		Type:               healthCheckTypes[h.Type],
		Path:               h.Path,
		Port:               h.Port,
		Interval:           durationpb.New(h.Interval.Duration),
		Timeout:            durationpb.New(h.Timeout.Duration),
		HealthyThreshold:   uint32(h.HealthyThreshold),
		UnhealthyThreshold: uint32(h.UnhealthyThreshold),
	}
}
