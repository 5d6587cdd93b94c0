package config

import (
	"fmt"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"trellis.dev/trellis/internal/meshname"
)

// ServiceAPIVersion is the apiVersion of Trellis' own kinds.
const ServiceAPIVersion = "trellis.dev/v1alpha1"

// Protocol is what a service port speaks.
type Protocol string

// Protocols a service port may declare.
const (
	ProtocolHTTP  Protocol = "http"
	ProtocolHTTP2 Protocol = "http2"
	ProtocolGRPC  Protocol = "grpc"
	ProtocolTCP   Protocol = "tcp"
)

// Protocols returns every valid Protocol.
func Protocols() []Protocol {
	return []Protocol{ProtocolHTTP, ProtocolHTTP2, ProtocolGRPC, ProtocolTCP}
}

// Service declares a service of the mesh: its ports and which endpoints
// (proxies, by label) serve it.
type Service struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              ServiceSpec `json:"spec"`
}

// ServiceSpec is a Service's desired state.
type ServiceSpec struct {
	// Selector picks endpoints by label; default {"app": <name>} (every proxy
	// registers with label app=<its service name>).
	Selector map[string]string `json:"selector,omitempty"`
	Ports    []ServicePort     `json:"ports"`
	// ServiceAccounts are the service accounts the service's endpoints run
	// as: the control plane refuses to register an endpoint (for this
	// service, or one its selector picks) whose certificate names another
	// account of the namespace. Default: the selector's app label, which
	// is the name of the service whose proxies it picks (itself, unless
	// it is a subset such as web-v1 picking app: web), else its own name.
	ServiceAccounts []string `json:"serviceAccounts,omitempty"`
	// MTLS is the inbound port's mTLS mode; unset is STRICT.
	MTLS *ServiceMTLS `json:"mtls,omitempty"`
	// HealthCheck is how the proxies check their app (service_health.go).
	HealthCheck *ServiceHealthCheck `json:"healthCheck,omitempty"`
}

// Accounts returns the service accounts the service's endpoints may run as:
// spec.serviceAccounts, else the selector's app label (every proxy
// registers with app=<its service>, and runs by default as the account of
// that name), else the service's name.
func (s *Service) Accounts() []string {
	if len(s.Spec.ServiceAccounts) > 0 {
		return s.Spec.ServiceAccounts
	}
	if app := s.Spec.Selector["app"]; app != "" {
		return []string{app}
	}
	return []string{s.Name}
}

// ServicePort is one port of a Service.
type ServicePort struct {
	// Name is required when the service has more than one port.
	Name string `json:"name,omitempty"`
	// Port is the port clients address the service on.
	Port int32 `json:"port"`
	// TargetPort is the app's port on the endpoint's loopback; default Port.
	TargetPort int32 `json:"targetPort,omitempty"`
	// Protocol defaults to http.
	Protocol Protocol `json:"protocol,omitempty"`
}

func serviceKind() kindInfo {
	return kindInfo{kind: "Service", apiVersion: ServiceAPIVersion, newObject: func() object { return new(Service) }}
}

// Ref names the service.
func (s *Service) Ref() Ref {
	return Ref{Kind: "Service", Namespace: namespaceOr(s.Namespace), Name: s.Name}
}

func (s *Service) typeMeta() *metav1.TypeMeta     { return &s.TypeMeta }
func (s *Service) objectMeta() *metav1.ObjectMeta { return &s.ObjectMeta }

func (s *Service) setDefaults() {
	if s.Namespace == "" {
		s.Namespace = DefaultNamespace
	}
	if len(s.Spec.Selector) == 0 && s.Name != "" {
		// An empty selector would select every endpoint in the mesh; the
		// natural meaning is "this service's own proxies".
		s.Spec.Selector = map[string]string{"app": s.Name}
	}
	s.Spec.MTLS.setDefaults()
	s.Spec.HealthCheck.setDefaults()
	for i := range s.Spec.Ports {
		p := &s.Spec.Ports[i]
		if p.TargetPort == 0 {
			p.TargetPort = p.Port
		}
		if p.Protocol == "" {
			p.Protocol = ProtocolHTTP
		}
	}
}

// Validate checks the service; see Object.
func (s *Service) Validate() error {
	fe := &fieldErrors{ref: s.Ref()}
	validateMeta(fe, &s.ObjectMeta)
	if len(s.Spec.Selector) == 0 {
		fe.add("spec.selector", "must select at least one label (the default is app: <name>)")
	}
	validateLabels(fe, "spec.selector", s.Spec.Selector)
	s.Spec.MTLS.validate(fe)

	validateAccounts(fe, s.Spec.ServiceAccounts)
	ports := s.Spec.Ports
	if len(ports) == 0 {
		fe.add("spec.ports", "at least one port is required")
	}
	set := newPortSet(fe, len(ports))
	for i, p := range ports {
		path := fmt.Sprintf("spec.ports[%d]", i)
		set.check(i, path, p.Name, ".port", p.Port)
		if prob := portProblem(p.TargetPort); prob != "" {
			fe.add(path+".targetPort", prob)
		}
		if !slices.Contains(Protocols(), p.Protocol) {
			fe.addf(path+".protocol", "unknown protocol %q: must be one of %s", p.Protocol, protocolList())
		}
	}
	s.Spec.HealthCheck.validate(fe, ports)
	return fe.err()
}

// validateAccounts checks spec.serviceAccounts: each a service account name
// (an RFC 1123 subdomain), none twice.
// portSet checks that a spec's ports are told apart: names (required
// with more than one port, DNS labels, unique) and numbers (valid,
// unique). Service and ExternalService share it.
type portSet struct {
	fe      *fieldErrors
	count   int
	names   map[string]int
	numbers map[int32]int
}

func newPortSet(fe *fieldErrors, count int) *portSet {
	return &portSet{fe: fe, count: count, names: map[string]int{}, numbers: map[int32]int{}}
}

// check checks port i at path, its number in the field numField.
func (ps *portSet) check(i int, path, name, numField string, number int32) {
	switch {
	case name == "" && ps.count > 1:
		ps.fe.add(path+".name", "required when a service has more than one port")
	case name != "":
		if prob := dnsLabelProblem(name); prob != "" {
			ps.fe.add(path+".name", prob)
		} else if j, dup := ps.names[name]; dup {
			ps.fe.addf(path+".name", "%q is already used by spec.ports[%d]", name, j)
		} else {
			ps.names[name] = i
		}
	}
	if prob := portProblem(number); prob != "" {
		ps.fe.add(path+numField, prob)
	} else if j, dup := ps.numbers[number]; dup {
		ps.fe.addf(path+numField, "%d is already used by spec.ports[%d]", number, j)
	} else {
		ps.numbers[number] = i
	}
}

func validateAccounts(fe *fieldErrors, accounts []string) {
	seen := map[string]int{}
	for i, a := range accounts {
		path := fmt.Sprintf("spec.serviceAccounts[%d]", i)
		if err := meshname.CheckSubdomain(a); err != nil {
			fe.add(path, err.Error())
			continue
		}
		if j, dup := seen[a]; dup {
			fe.addf(path, "%q is already listed at spec.serviceAccounts[%d]", a, j)
			continue
		}
		seen[a] = i
	}
}

// PortByNumber returns the service's port numbered n.
func (s *Service) PortByNumber(n int32) (ServicePort, bool) {
	for _, p := range s.Spec.Ports {
		if p.Port == n {
			return p, true
		}
	}
	return ServicePort{}, false
}

func protocolList() string {
	var parts []string
	for _, p := range Protocols() {
		parts = append(parts, string(p))
	}
	return strings.Join(parts, ", ")
}

func namespaceOr(ns string) string {
	if ns == "" {
		return DefaultNamespace
	}
	return ns
}
