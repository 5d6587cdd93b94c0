package config

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"trellis.dev/trellis/internal/meshname"
)

// ExternalService (trellis.dev/v1alpha1) registers a service outside the
// mesh — a database, a public API — so mesh clients reach it by its own
// host name through their proxy, with the routes, retries, timeouts,
// metrics and (optionally) TLS origination a mesh service gets, in the
// spirit of Istio's ServiceEntry. It compiles to the same Service a mesh
// service does (with Service.external set), so HTTPRoutes (parentRefs) and
// BackendPolicies (targetRefs) name it by kind ExternalService and its name.
type ExternalService struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              ExternalServiceSpec `json:"spec"`
}

// ExternalServiceSpec is an ExternalService's desired state.
type ExternalServiceSpec struct {
	// Hosts are the DNS names (or IP literals) apps call the service by,
	// e.g. api.stripe.com. A request whose Host is one of them goes to
	// this service.
	Hosts []string `json:"hosts"`
	// Ports the service is called on.
	Ports []ExternalPort `json:"ports"`
	// Resolution: STATIC (the endpoints listed; the default when there are
	// endpoints) or DNS (the proxy dials the host the request named; the
	// default without endpoints).
	Resolution ExternalResolution `json:"resolution,omitempty"`
	// Endpoints are the fixed addresses of a STATIC service.
	Endpoints []ExternalEndpoint `json:"endpoints,omitempty"`
	// TLS, when set, makes the proxy originate TLS to the service: the app
	// speaks plaintext HTTP to its proxy, the proxy speaks TLS onward.
	TLS *ExternalTLS `json:"tls,omitempty"`
}

// ExternalPort is one port of an ExternalService.
type ExternalPort struct {
	// Name is required when the service has more than one port.
	Name string `json:"name,omitempty"`
	// Number is the port apps call.
	Number int32 `json:"number"`
	// TargetPort is the port dialled on an endpoint given without one;
	// default Number (e.g. 80 called, 443 dialled with tls).
	TargetPort int32 `json:"targetPort,omitempty"`
	// Protocol: http (default), http2, grpc, https or tcp. https and tcp
	// are tunnelled opaque (CONNECT or a per-upstream port); the others
	// pass the route chain.
	Protocol Protocol `json:"protocol,omitempty"`
}

// ProtocolHTTPS is TLS the app speaks itself, end to end: the proxy
// tunnels it without looking inside (an ExternalService port only).
const ProtocolHTTPS Protocol = "https"

// ExternalResolution is how an ExternalService's endpoints are found.
type ExternalResolution string

// Resolutions.
const (
	ResolutionStatic ExternalResolution = "STATIC"
	ResolutionDNS    ExternalResolution = "DNS"
)

// ExternalEndpoint is one fixed address of a STATIC ExternalService.
type ExternalEndpoint struct {
	// Address is a host name or IP, optionally with ":port" (then used for
	// every port of the service).
	Address string `json:"address"`
	// Labels, as a mesh endpoint's (a hashing balancer or a subset may
	// use them).
	Labels map[string]string `json:"labels,omitempty"`
}

// ExternalTLS is TLS origination toward an ExternalService. The files are
// read by each proxy on its own machine when the snapshot arrives: a proxy
// that cannot load them refuses (NACKs) the snapshot and keeps its last.
type ExternalTLS struct {
	// Mode: SIMPLE (verify the server) or MUTUAL (also present a client
	// certificate); DISABLE turns origination off.
	Mode TLSMode `json:"mode"`
	// SNI is the server name sent and verified; default the request's host.
	SNI string `json:"sni,omitempty"`
	// CACertificates is a PEM file of roots to verify the server with;
	// default the system's roots.
	CACertificates string `json:"caCertificates,omitempty"`
	// ClientCertificate and PrivateKey are PEM files (MUTUAL only).
	ClientCertificate string `json:"clientCertificate,omitempty"`
	PrivateKey        string `json:"privateKey,omitempty"`
}

// TLSMode is an ExternalTLS mode.
type TLSMode string

// TLS modes.
const (
	TLSDisable TLSMode = "DISABLE"
	TLSSimple  TLSMode = "SIMPLE"
	TLSMutual  TLSMode = "MUTUAL"
)

const externalServiceKind = "ExternalService"

func externalServiceKindInfo() kindInfo {
	return kindInfo{kind: externalServiceKind, apiVersion: ServiceAPIVersion, newObject: func() object { return new(ExternalService) }}
}

// Ref names the ExternalService.
func (e *ExternalService) Ref() Ref {
	return Ref{Kind: externalServiceKind, Namespace: namespaceOr(e.Namespace), Name: e.Name}
}

func (e *ExternalService) typeMeta() *metav1.TypeMeta     { return &e.TypeMeta }
func (e *ExternalService) objectMeta() *metav1.ObjectMeta { return &e.ObjectMeta }

// setDefaults: namespace, resolution, each port's protocol and target, and
// host names lower-cased without a trailing dot (DNS names are
// case-insensitive; the proxy looks hosts up lower-cased).
func (e *ExternalService) setDefaults() {
	if e.Namespace == "" {
		e.Namespace = DefaultNamespace
	}
	s := &e.Spec
	if s.Resolution == "" {
		s.Resolution = ResolutionDNS
		if len(s.Endpoints) > 0 {
			s.Resolution = ResolutionStatic
		}
	}
	for i, h := range s.Hosts {
		s.Hosts[i] = strings.TrimSuffix(strings.ToLower(h), ".")
	}
	for i := range s.Ports {
		p := &s.Ports[i]
		if p.Protocol == "" {
			p.Protocol = ProtocolHTTP
		}
		if p.TargetPort == 0 {
			p.TargetPort = p.Number
		}
	}
}

// externalProtocols are the protocols an ExternalService port may speak.
var externalProtocols = []Protocol{ProtocolHTTP, ProtocolHTTP2, ProtocolGRPC, ProtocolHTTPS, ProtocolTCP}

// Validate checks the ExternalService on its own; checkSet checks its
// hosts against the rest of the mesh.
func (e *ExternalService) Validate() error {
	fe := &fieldErrors{ref: e.Ref()}
	validateMeta(fe, &e.ObjectMeta)
	s := &e.Spec
	if len(s.Hosts) == 0 {
		fe.add("spec.hosts", "at least one host is required: the name apps call the service by, e.g. api.example.com")
	}
	seen := map[string]int{}
	for i, h := range s.Hosts {
		path := fmt.Sprintf("spec.hosts[%d]", i)
		if prob := ExternalHostProblem(h); prob != "" {
			fe.add(path, prob)
		} else if j, dup := seen[h]; dup {
			fe.addf(path, "%q is already listed at spec.hosts[%d]", h, j)
		} else {
			seen[h] = i
		}
	}
	e.validatePorts(fe)
	e.validateEndpoints(fe)
	e.validateTLS(fe)
	return fe.err()
}

func (e *ExternalService) validatePorts(fe *fieldErrors) {
	ports := e.Spec.Ports
	if len(ports) == 0 {
		fe.add("spec.ports", "at least one port is required, e.g. {number: 443, protocol: https}")
	}
	set := newPortSet(fe, len(ports))
	for i, p := range ports {
		path := fmt.Sprintf("spec.ports[%d]", i)
		set.check(i, path, p.Name, ".number", p.Number)
		if prob := portProblem(p.TargetPort); prob != "" {
			fe.add(path+".targetPort", prob)
		}
		if !slices.Contains(externalProtocols, p.Protocol) {
			fe.addf(path+".protocol", "unknown protocol %q: must be one of http, http2, grpc, https, tcp", p.Protocol)
		}
	}
}

func (e *ExternalService) validateEndpoints(fe *fieldErrors) {
	s := &e.Spec
	switch s.Resolution {
	case ResolutionStatic:
		if len(s.Endpoints) == 0 {
			fe.add("spec.endpoints", "resolution STATIC needs at least one endpoint (address host or host:port); or use resolution: DNS")
		}
	case ResolutionDNS:
		if len(s.Endpoints) > 0 {
			fe.add("spec.endpoints", "resolution DNS dials the host the request named: remove the endpoints, or use resolution: STATIC")
		}
	default:
		fe.addf("spec.resolution", "unknown resolution %q: must be STATIC or DNS", s.Resolution)
	}
	seen := map[string]int{}
	for i, ep := range s.Endpoints {
		path := fmt.Sprintf("spec.endpoints[%d]", i)
		if _, _, prob := ParseEndpointAddress(ep.Address); prob != "" {
			fe.add(path+".address", prob)
		} else if j, dup := seen[ep.Address]; dup {
			fe.addf(path+".address", "%q is already listed at spec.endpoints[%d]", ep.Address, j)
		} else {
			seen[ep.Address] = i
		}
		validateLabels(fe, path+".labels", ep.Labels)
	}
}

func (e *ExternalService) validateTLS(fe *fieldErrors) {
	t := e.Spec.TLS
	if t == nil {
		return
	}
	switch t.Mode {
	case TLSDisable:
		return
	case TLSSimple:
		if t.ClientCertificate != "" || t.PrivateKey != "" {
			fe.add("spec.tls", "clientCertificate and privateKey are for mode MUTUAL; remove them or set mode: MUTUAL")
		}
	case TLSMutual:
		if t.ClientCertificate == "" {
			fe.add("spec.tls.clientCertificate", "required with mode MUTUAL: a PEM certificate file on the proxy's machine")
		}
		if t.PrivateKey == "" {
			fe.add("spec.tls.privateKey", "required with mode MUTUAL: a PEM key file on the proxy's machine")
		}
	case "":
		fe.add("spec.tls.mode", "required: SIMPLE, MUTUAL or DISABLE")
	default:
		fe.addf("spec.tls.mode", "unknown mode %q: must be SIMPLE, MUTUAL or DISABLE", t.Mode)
	}
	if t.SNI != "" && !meshname.IsSubdomain(t.SNI) {
		fe.addf("spec.tls.sni", "%q is not a DNS name (lower-case labels separated by '.')", t.SNI)
	}
	http := false
	for _, p := range e.Spec.Ports {
		http = http || p.Protocol == ProtocolHTTP || p.Protocol == ProtocolHTTP2 || p.Protocol == ProtocolGRPC
	}
	if !http {
		fe.add("spec.tls", "TLS origination needs an http, http2 or grpc port (the app speaks plaintext to its proxy); https and tcp ports pass the app's own TLS through")
	}
}

// ExternalHostProblem says why h cannot be an ExternalService host, or "".
// A host is a lower-case DNS name of at least two labels or an IP literal;
// a single label or a name of the mesh's own form (a.b.svc…) would be
// taken for a mesh service, so both are refused. Wildcards are not
// supported.
func ExternalHostProblem(h string) string {
	switch {
	case h == "":
		return "must not be empty"
	case strings.HasPrefix(h, "*"):
		return fmt.Sprintf("%q: wildcard hosts are not supported; list each host", h)
	}
	if ip, err := netip.ParseAddr(h); err == nil {
		switch {
		case ip.Zone() != "":
			return fmt.Sprintf("%q: an IP with a zone is not supported", h)
		case ip.String() != h:
			return fmt.Sprintf("%q: write the IP in its canonical form, %s", h, ip)
		}
		return ""
	}
	if !meshname.IsSubdomain(h) {
		return fmt.Sprintf("%q is not a DNS name: use lower-case letters, digits and '-' in labels separated by '.' (RFC 1123), or an IP", h)
	}
	labels := strings.Split(h, ".")
	switch {
	case len(labels) == 1:
		return fmt.Sprintf("%q is a single label, which names a mesh service in the caller's namespace: use a fully-qualified name such as %s.example.com", h, h)
	case len(labels) >= 3 && labels[2] == "svc":
		return fmt.Sprintf("%q has the mesh's own form name.namespace.svc[.domain]: that names a mesh service, not an external one", h)
	}
	return ""
}

// ParseEndpointAddress splits an ExternalService endpoint address, "host",
// "host:port", "ip", "ip:port" or "[v6]:port", into its host and port (0
// when absent), or says why it cannot.
func ParseEndpointAddress(a string) (host string, port uint32, problem string) {
	if a == "" {
		return "", 0, "required: a host name or IP, optionally with :port"
	}
	host = a
	if h, p, err := net.SplitHostPort(a); err == nil {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 || p[0] == '+' || p[0] == '0' {
			return "", 0, fmt.Sprintf("%q: port %q must be between 1 and 65535", a, p)
		}
		host, port = h, uint32(n)
	} else if inner, ok := strings.CutPrefix(a, "["); ok {
		// "[v6]" without a port: the form ExternalEndpoints renders "v6" in.
		v6, ok := strings.CutSuffix(inner, "]")
		if ip, err := netip.ParseAddr(v6); !ok || err != nil || !ip.Is6() {
			return "", 0, fmt.Sprintf("%q is not host, host:port or [ipv6]:port", a)
		}
		host = v6
	} else if strings.Count(a, ":") == 1 {
		return "", 0, fmt.Sprintf("%q is not host, host:port or [ipv6]:port", a)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" {
			return "", 0, fmt.Sprintf("%q: an IP with a zone is not supported", a)
		}
		return host, port, ""
	}
	if !meshname.IsSubdomain(host) {
		return "", 0, fmt.Sprintf("%q: host %q is not a DNS name or an IP", a, host)
	}
	return host, port, ""
}
