// Package health checks a proxy's local app — an HTTP GET, a TCP connect
// or the gRPC health protocol — on an interval, and turns the results into
// one verdict with healthy and unhealthy thresholds (as Envoy and Consul
// do). The sidecar reports the verdict to the control plane, which keeps
// an unhealthy endpoint out of discovery.
package health

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Type is what a check does.
type Type int

// The check types.
const (
	TCP  Type = iota // connect to the app's port
	HTTP             // GET a path; 2xx and 3xx pass
	GRPC             // grpc.health.v1.Health/Check; SERVING passes
)

func (t Type) String() string {
	switch t {
	case HTTP:
		return "http"
	case GRPC:
		return "grpc"
	}
	return "tcp"
}

// Defaults, close to Envoy's common settings and Kubernetes' probes: a
// dead app leaves discovery within Interval × UnhealthyThreshold (15 s),
// and one passing check at start (or HealthyThreshold later) brings it in.
const (
	DefaultInterval           = 5 * time.Second
	DefaultTimeout            = 1 * time.Second
	DefaultHealthyThreshold   = 2
	DefaultUnhealthyThreshold = 3
	// StartInterval paces the checks until the first one passes, so an
	// app that takes a few seconds to listen joins within about a second.
	StartInterval = 1 * time.Second
)

// Spec is one check, resolved: Addr is where the app listens.
type Spec struct {
	Type Type
	Addr string // host:port
	// Path is HTTP's request path, or gRPC's health service name.
	Path               string
	Interval, Timeout  time.Duration
	HealthyThreshold   int
	UnhealthyThreshold int
}

// WithDefaults fills the unset fields.
func (s Spec) WithDefaults() Spec {
	if s.Type == HTTP && s.Path == "" {
		s.Path = "/"
	}
	if s.Interval <= 0 {
		s.Interval = DefaultInterval
	}
	if s.Timeout <= 0 {
		s.Timeout = DefaultTimeout
	}
	if s.HealthyThreshold <= 0 {
		s.HealthyThreshold = DefaultHealthyThreshold
	}
	if s.UnhealthyThreshold <= 0 {
		s.UnhealthyThreshold = DefaultUnhealthyThreshold
	}
	return s
}

// Validate checks a spec after WithDefaults.
func (s Spec) Validate() error {
	if _, _, err := net.SplitHostPort(s.Addr); err != nil {
		return fmt.Errorf("health: address %q: %w", s.Addr, err)
	}
	if s.Type == HTTP && !strings.HasPrefix(s.Path, "/") {
		return fmt.Errorf("health: path %q: must start with /", s.Path)
	}
	if s.Timeout > s.Interval {
		return fmt.Errorf("health: timeout %s: must not exceed the interval %s", s.Timeout, s.Interval)
	}
	return nil
}

// Override is a check as a proxy flag gives it (--health-check): only
// the fields it sets win over the Service's healthCheck.
type Override struct {
	Off  bool // "off": no checks, the endpoint is always healthy
	Type Type
	// Port is a port number on the app's host; 0: the config's port.
	Port               int
	Path               string
	Interval, Timeout  time.Duration
	HealthyThreshold   int
	UnhealthyThreshold int
}

// ParseFlag parses --health-check:
//
//	off | TYPE[:PORT][PATH][?interval=D&timeout=D&healthy=N&unhealthy=N]
//
// TYPE is tcp, http or grpc; PATH starts with "/" (HTTP's path; for gRPC
// the health service name after the slash). Examples: "http:/healthz",
// "http:8081/healthz?interval=2s", "tcp", "grpc:9090/orders.v1.Orders".
func ParseFlag(v string) (Override, error) {
	if v == "off" {
		return Override{Off: true}, nil
	}
	v, query, _ := strings.Cut(v, "?")
	kind, rest := v, ""
	if i := strings.IndexAny(v, ":/"); i >= 0 {
		kind, rest = v[:i], strings.TrimPrefix(v[i:], ":")
	}
	var o Override
	switch kind {
	case "tcp":
		o.Type = TCP
	case "http":
		o.Type = HTTP
	case "grpc":
		o.Type = GRPC
	default:
		return Override{}, fmt.Errorf("health: --health-check %q: type must be tcp, http, grpc or off", kind)
	}
	port, path := rest, ""
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		port, path = rest[:i], rest[i:]
	}
	if port != "" {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 {
			return Override{}, fmt.Errorf("health: --health-check %q: port %q is not 1..65535", v, port)
		}
		o.Port = n
	}
	if path != "" && o.Type == TCP {
		return Override{}, fmt.Errorf("health: --health-check %q: a tcp check takes no path", v)
	}
	if o.Type == GRPC {
		path = strings.TrimPrefix(path, "/")
	}
	o.Path = path
	if err := o.parseQuery(query); err != nil {
		return Override{}, fmt.Errorf("health: --health-check %q: %w", v, err)
	}
	return o, nil
}

func (o *Override) parseQuery(q string) error {
	if q == "" {
		return nil
	}
	vals, err := url.ParseQuery(q)
	if err != nil {
		return err
	}
	for k, vv := range vals {
		if len(vv) != 1 {
			return fmt.Errorf("%s: given %d times", k, len(vv))
		}
		v := vv[0]
		switch k {
		case "interval", "timeout":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return fmt.Errorf("%s: %q is not a positive duration", k, v)
			}
			if k == "interval" {
				o.Interval = d
			} else {
				o.Timeout = d
			}
		case "healthy", "unhealthy":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 100 {
				return fmt.Errorf("%s: %q is not 1..100", k, v)
			}
			if k == "healthy" {
				o.HealthyThreshold = n
			} else {
				o.UnhealthyThreshold = n
			}
		default:
			return errors.New("unknown option " + strconv.Quote(k) + " (interval, timeout, healthy, unhealthy)")
		}
	}
	return nil
}

// Apply lays o over s: the fields o sets win. appHost is the app's host,
// for a port o names.
func (o Override) Apply(s Spec, appHost string) Spec {
	if o.Type != s.Type {
		s.Type, s.Path = o.Type, ""
	}
	if o.Port != 0 {
		s.Addr = net.JoinHostPort(appHost, strconv.Itoa(o.Port))
	}
	if o.Path != "" {
		s.Path = o.Path
	}
	if o.Interval > 0 {
		s.Interval = o.Interval
	}
	if o.Timeout > 0 {
		s.Timeout = o.Timeout
	}
	if o.HealthyThreshold > 0 {
		s.HealthyThreshold = o.HealthyThreshold
	}
	if o.UnhealthyThreshold > 0 {
		s.UnhealthyThreshold = o.UnhealthyThreshold
	}
	return s
}
