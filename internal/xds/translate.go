package xds

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// CertProviderInstance is the certificate provider instance name the
// translated Clusters refer to for the client's own certificate and for the
// roots it validates servers against. An xDS client's bootstrap must define
// it (a file_watcher over a workload certificate the Trellis CA issued; see
// examples/xds/bootstrap.json).
const CertProviderInstance = "trellis"

// Names of the filters and transport socket grpc-go and Envoy look up.
const (
	routerFilterName = "envoy.filters.http.router"
	tlsSocketName    = "envoy.transport_sockets.tls"
)

// Resources is one translated resource set, by type URL.
type Resources map[resource.Type][]types.Resource

// svcPorts is one service with the ports it declares, in order.
type svcPorts struct {
	svc   *meshv1.Service
	ports []uint32
}

// translator holds what the translation of one snapshot looks up across
// services: every service's ports, so a backend's port resolves to a
// cluster that exists.
type translator struct {
	trustDomain string
	services    map[string]svcPorts // by "name.namespace"
}

// Translate turns a compiled snapshot's services into xDS resources.
//
// Names follow grpc-go's xDS conventions: a client dialling
// xds:///<name>.<namespace> asks for the Listener of that name (its
// service's default port: the first gRPC port, else the first port), and
// xds:///<name>.<namespace>:<port> for that port. The Listener names the
// RouteConfiguration "<name>.<namespace>:<port>"; routes send to Clusters
// of the same form, one per service port, each fed by EDS under its own
// name. Only services in the snapshot are translated, and their endpoints
// are the compiler's (healthy ones only).
func Translate(snap *meshv1.Snapshot) (Resources, error) {
	t := &translator{trustDomain: snap.GetTrustDomain(), services: map[string]svcPorts{}}
	for _, s := range snap.GetServices() {
		if s.GetExternal() != nil {
			// An ExternalService's endpoints are outside addresses with
			// no SPIFFE ID: the mesh's mTLS cannot reach them, so they
			// are not served (docs/operations.md, xDS).
			continue
		}
		sp := svcPorts{svc: s}
		for _, p := range s.GetPorts() {
			sp.ports = append(sp.ports, p.GetPort())
		}
		t.services[hostOf(s)] = sp
	}
	out := Resources{}
	for _, s := range snap.GetServices() {
		if s.GetExternal() != nil {
			continue
		}
		if err := t.service(out, s, snap.GetDomain()); err != nil {
			return nil, fmt.Errorf("xds: translate %s: %w", hostOf(s), err)
		}
	}
	for typ := range out {
		sort.Slice(out[typ], func(i, j int) bool {
			return resourceName(out[typ][i]) < resourceName(out[typ][j])
		})
	}
	return out, nil
}

func resourceName(r types.Resource) string {
	if n, ok := r.(interface{ GetName() string }); ok {
		return n.GetName()
	}
	if c, ok := r.(*endpointv3.ClusterLoadAssignment); ok {
		return c.GetClusterName()
	}
	return ""
}

// hostOf is the service's short mesh host, "name.namespace".
func hostOf(s *meshv1.Service) string { return s.GetName() + "." + s.GetNamespace() }

// portName is the name of the route configuration and cluster of a
// service port.
func portName(host string, port uint32) string {
	return host + ":" + strconv.FormatUint(uint64(port), 10)
}

// defaultPort is what xds:///<name>.<namespace> (no port) dials: the first
// gRPC port, else the first port.
func defaultPort(s *meshv1.Service) (uint32, bool) {
	for _, p := range s.GetPorts() {
		if p.GetProtocol() == meshv1.Protocol_GRPC {
			return p.GetPort(), true
		}
	}
	if len(s.GetPorts()) == 0 {
		return 0, false
	}
	return s.GetPorts()[0].GetPort(), true
}

// service adds one service's listeners, route configurations, clusters and
// load assignments, one of each per port (TCP ports carry no gRPC and are
// skipped).
func (t *translator) service(out Resources, s *meshv1.Service, domain string) error {
	host := hostOf(s)
	def, hasDef := defaultPort(s)
	for _, p := range s.GetPorts() {
		if p.GetProtocol() == meshv1.Protocol_TCP {
			continue
		}
		name := portName(host, p.GetPort())
		names := []string{name}
		if domain != "" {
			names = append(names, portName(host+".svc."+domain, p.GetPort()))
		}
		if hasDef && p.GetPort() == def {
			names = append(names, host)
			if domain != "" {
				names = append(names, host+".svc."+domain)
			}
		}
		for _, ln := range names {
			l, err := listener(ln, name)
			if err != nil {
				return err
			}
			out[resource.ListenerType] = append(out[resource.ListenerType], l)
		}
		rc, err := t.routeConfig(s, p.GetPort(), name)
		if err != nil {
			return err
		}
		out[resource.RouteType] = append(out[resource.RouteType], rc)
		c, err := t.cluster(s, name)
		if err != nil {
			return err
		}
		out[resource.ClusterType] = append(out[resource.ClusterType], c)
		out[resource.EndpointType] = append(out[resource.EndpointType], loadAssignment(s, name))
	}
	return nil
}

func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	}
}

// listener is a gRPC API listener: an HttpConnectionManager that takes its
// routes from RDS over the same ADS stream.
func listener(name, routeName string) (*listenerv3.Listener, error) {
	router, err := anypb.New(&routerv3.Router{})
	if err != nil {
		return nil, err
	}
	faults, err := anypb.New(&faultv3.HTTPFault{})
	if err != nil {
		return nil, err
	}
	hcm, err := anypb.New(&hcmv3.HttpConnectionManager{
		StatPrefix: name,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: routeName,
		}},
		// The fault filter does nothing unless a route configures it.
		HttpFilters: []*hcmv3.HttpFilter{
			{Name: faultFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: faults}},
			{Name: routerFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}},
		},
	})
	if err != nil {
		return nil, err
	}
	return &listenerv3.Listener{Name: name, ApiListener: &listenerv3.ApiListener{ApiListener: hcm}}, nil
}

// routeConfig is one virtual host (any authority) with the service's routes
// for port, in the compiler's precedence order. A service without routes
// sends everything to its own cluster for the port.
func (t *translator) routeConfig(s *meshv1.Service, port uint32, name string) (*routev3.RouteConfiguration, error) {
	var routes []*routev3.Route
	for _, r := range s.GetRoutes() {
		if r.GetPort() != 0 && r.GetPort() != port {
			continue
		}
		rs, err := t.routes(s, r, port)
		if err != nil {
			return nil, err
		}
		routes = append(routes, rs...)
	}
	if len(s.GetRoutes()) == 0 {
		routes = []*routev3.Route{{
			Name:   name,
			Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: t.action(s, nil, []*meshv1.Backend{{Service: s.GetName(), Namespace: s.GetNamespace(), Weight: 1}}, port)},
		}}
	}
	return &routev3.RouteConfiguration{
		Name:         name,
		VirtualHosts: []*routev3.VirtualHost{{Name: name, Domains: []string{"*"}, Routes: routes}},
	}, nil
}

// routes is one xDS route per match of r (xDS matches are ANDs; a Trellis
// route is an OR of them), all with the same action.
func (t *translator) routes(s *meshv1.Service, r *meshv1.Route, port uint32) ([]*routev3.Route, error) {
	matches := r.GetMatches()
	if len(matches) == 0 {
		matches = []*meshv1.Match{{}}
	}
	out := make([]*routev3.Route, 0, len(matches))
	for i, m := range matches {
		rm, err := routeMatch(m)
		if err != nil {
			return nil, fmt.Errorf("route %s: matches[%d]: %w", r.GetName(), i, err)
		}
		// An action per xDS route: filters edit it.
		rt := &routev3.Route{Name: r.GetName(), Match: rm,
			Action: &routev3.Route_Route{Route: t.action(s, r.GetTimeouts(), r.GetBackends(), port)}}
		if err := t.applyFilters(rt, r.GetFilters(), m, port); err != nil {
			return nil, fmt.Errorf("route %s: %w", r.GetName(), err)
		}
		out = append(out, rt)
	}
	return out, nil
}

func routeMatch(m *meshv1.Match) (*routev3.RouteMatch, error) {
	rm := &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}
	if p := m.GetPath(); p != nil {
		switch p.GetType() {
		case meshv1.PathMatch_PREFIX:
			rm.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: p.GetValue()}
		case meshv1.PathMatch_EXACT:
			rm.PathSpecifier = &routev3.RouteMatch_Path{Path: p.GetValue()}
		case meshv1.PathMatch_REGEX:
			rm.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: p.GetValue()}}
		default:
			return nil, fmt.Errorf("path: unknown match type %v", p.GetType())
		}
	}
	for _, h := range m.GetHeaders() {
		sm, err := headerValueMatcher(h.GetType() == meshv1.HeaderMatch_REGEX, h.GetValue())
		if err != nil {
			return nil, err
		}
		rm.Headers = append(rm.Headers, &routev3.HeaderMatcher{Name: h.GetName(),
			HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: sm}})
	}
	if meth := m.GetMethod(); meth != "" {
		rm.Headers = append(rm.Headers, &routev3.HeaderMatcher{Name: ":method",
			HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: exact(meth)}})
	}
	for _, q := range m.GetQueryParams() {
		sm, err := headerValueMatcher(q.GetType() == meshv1.QueryParamMatch_REGEX, q.GetValue())
		if err != nil {
			return nil, err
		}
		rm.QueryParameters = append(rm.QueryParameters, &routev3.QueryParameterMatcher{Name: q.GetName(),
			QueryParameterMatchSpecifier: &routev3.QueryParameterMatcher_StringMatch{StringMatch: sm}})
	}
	return rm, nil
}

func exact(v string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v}}
}

func headerValueMatcher(regex bool, v string) (*matcherv3.StringMatcher, error) {
	if !regex {
		return exact(v), nil
	}
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: v}}}, nil
}

// action sends to the backends by weight, with the route's timeouts and
// the retry policy of the route's own service's BackendPolicy (what a
// Trellis proxy applies too). Envoy reads Timeout; grpc-go reads
// MaxStreamDuration.
func (t *translator) action(s *meshv1.Service, to *meshv1.RouteTimeouts, backends []*meshv1.Backend, port uint32) *routev3.RouteAction {
	a := &routev3.RouteAction{Timeout: durationpb.New(0)}
	if d := to.GetRequest(); d != nil {
		a.Timeout = d
		a.MaxStreamDuration = &routev3.RouteAction_MaxStreamDuration{MaxStreamDuration: d}
	}
	a.RetryPolicy = retryPolicy(s.GetBackendPolicy().GetRetry(), to.GetBackendRequest())
	if hp := hashPolicy(s.GetBackendPolicy()); hp != nil {
		a.HashPolicy = []*routev3.RouteAction_HashPolicy{hp}
	}
	var wc []*routev3.WeightedCluster_ClusterWeight
	for _, b := range backends {
		if b.GetWeight() == 0 {
			continue
		}
		wc = append(wc, &routev3.WeightedCluster_ClusterWeight{Name: t.backendCluster(b, port), Weight: wrapperspb.UInt32(b.GetWeight())})
	}
	switch len(wc) {
	case 0:
		// Every backend has weight 0: the Trellis proxy answers 500;
		// a cluster that does not exist fails the RPC the same way.
		a.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: portName(hostOf(s), port) + "/no-backends"}
	case 1:
		a.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: wc[0].GetName()}
	default:
		a.ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{Clusters: wc}}
	}
	return a
}

// backendCluster is the cluster of a backend: its port, or (0) the
// request's port if the backend service declares it, else its first port.
func (t *translator) backendCluster(b *meshv1.Backend, reqPort uint32) string {
	host := b.GetService() + "." + b.GetNamespace()
	port := b.GetPort()
	if port == 0 {
		port = reqPort
		if sp, ok := t.services[host]; ok && !slices.Contains(sp.ports, port) && len(sp.ports) > 0 {
			port = sp.ports[0]
		}
	}
	return portName(host, port)
}

// grpcRetryOn names the gRPC statuses xDS retry_on knows, by code.
var grpcRetryOn = map[uint32]string{1: "cancelled", 4: "deadline-exceeded", 8: "resource-exhausted", 13: "internal", 14: "unavailable"}

// retryPolicy is the BackendPolicy's retries; nil (none) when it has none
// or allows 0 attempts. HTTP status codes become Envoy's retriable status
// codes (grpc-go reads only the gRPC ones).
func retryPolicy(r *meshv1.RetryPolicy, backendTimeout *durationpb.Duration) *routev3.RetryPolicy {
	if r == nil || r.GetAttempts() == 0 {
		return nil
	}
	var on []string
	for _, c := range r.GetGrpcStatuses() {
		if n, ok := grpcRetryOn[c]; ok {
			on = append(on, n)
		}
	}
	on = append(on, "connect-failure", "reset", "refused-stream")
	if len(r.GetStatusCodes()) > 0 {
		on = append(on, "retriable-status-codes")
	}
	p := &routev3.RetryPolicy{
		RetryOn:              strings.Join(on, ","),
		NumRetries:           wrapperspb.UInt32(r.GetAttempts()),
		RetriableStatusCodes: r.GetStatusCodes(),
		PerTryTimeout:        r.GetPerTryTimeout(),
	}
	if p.PerTryTimeout == nil {
		p.PerTryTimeout = backendTimeout
	}
	if base := r.GetBackoffBase(); base != nil && base.AsDuration() > 0 {
		p.RetryBackOff = &routev3.RetryPolicy_RetryBackOff{BaseInterval: base, MaxInterval: r.GetBackoffMax()}
		if r.GetBackoffMax().AsDuration() < base.AsDuration() {
			p.RetryBackOff.MaxInterval = durationpb.New(10 * base.AsDuration())
		}
	}
	return p
}

// hashPolicy is what ring_hash hashes: a header (grpc-go and Envoy), a
// cookie or query parameter (Envoy only). Source identity has no xDS
// equivalent; such clients spread as without a key.
func hashPolicy(bp *meshv1.BackendPolicy) *routev3.RouteAction_HashPolicy {
	lb := bp.GetLoadBalancer()
	if lb != meshv1.LoadBalancer_RING_HASH && lb != meshv1.LoadBalancer_MAGLEV {
		return nil
	}
	h := bp.GetHash()
	switch {
	case h.GetHeader() != "":
		return &routev3.RouteAction_HashPolicy{PolicySpecifier: &routev3.RouteAction_HashPolicy_Header_{
			Header: &routev3.RouteAction_HashPolicy_Header{HeaderName: h.GetHeader()}}}
	case h.GetCookie() != "":
		return &routev3.RouteAction_HashPolicy{PolicySpecifier: &routev3.RouteAction_HashPolicy_Cookie_{
			Cookie: &routev3.RouteAction_HashPolicy_Cookie{Name: h.GetCookie()}}}
	case h.GetQueryParam() != "":
		return &routev3.RouteAction_HashPolicy{PolicySpecifier: &routev3.RouteAction_HashPolicy_QueryParameter_{
			QueryParameter: &routev3.RouteAction_HashPolicy_QueryParameter{Name: h.GetQueryParam()}}}
	}
	return nil
}

// lbPolicy maps a Trellis balancer onto one grpc-go implements: the
// power-of-two-choices ones onto least_request (P2C over in-flight
// requests), maglev onto ring_hash, random onto round_robin.
func lbPolicy(lb meshv1.LoadBalancer) clusterv3.Cluster_LbPolicy {
	switch lb {
	case meshv1.LoadBalancer_ROUND_ROBIN, meshv1.LoadBalancer_RANDOM:
		return clusterv3.Cluster_ROUND_ROBIN
	case meshv1.LoadBalancer_RING_HASH, meshv1.LoadBalancer_MAGLEV:
		return clusterv3.Cluster_RING_HASH
	default:
		return clusterv3.Cluster_LEAST_REQUEST
	}
}

// cluster is an EDS cluster over ADS with the service's balancer, circuit
// breaker and outlier detection, and mTLS to its endpoints' proxies: the
// client presents its workload certificate and accepts only a server whose
// SPIFFE ID is one the service's endpoints run as.
func (t *translator) cluster(s *meshv1.Service, name string) (*clusterv3.Cluster, error) {
	bp := s.GetBackendPolicy()
	c := &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource(), ServiceName: name},
		LbPolicy:             lbPolicy(bp.GetLoadBalancer()),
		ConnectTimeout:       durationpb.New(5 * time.Second),
	}
	if cb := bp.GetCircuitBreaker(); cb.GetMaxRequests() > 0 {
		c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
			Priority:    corev3.RoutingPriority_DEFAULT,
			MaxRequests: wrapperspb.UInt32(cb.GetMaxRequests()),
		}}}
	}
	c.OutlierDetection = outlier(bp.GetOutlierDetection())
	ts, err := t.upstreamTLS(s)
	if err != nil {
		return nil, err
	}
	c.TransportSocket = ts
	return c, nil
}

// outlier is Envoy's consecutive-errors ejection. Success-rate ejection,
// which Envoy enables by default, is switched off: Trellis has none.
// grpc-go implements only success-rate and failure-percentage ejection,
// so for it this is a no-op (it still validates the resource).
func outlier(od *meshv1.OutlierDetection) *clusterv3.OutlierDetection {
	if od == nil || (od.GetConsecutive_5Xx() == 0 && od.GetConsecutiveGatewayErrors() == 0) {
		return nil
	}
	o := &clusterv3.OutlierDetection{
		BaseEjectionTime:     od.GetBaseEjectionTime(),
		MaxEjectionTime:      od.GetMaxEjectionTime(),
		MaxEjectionPercent:   wrapperspb.UInt32(od.GetMaxEjectionPercent()),
		EnforcingSuccessRate: wrapperspb.UInt32(0),
	}
	if n := od.GetConsecutive_5Xx(); n > 0 {
		o.Consecutive_5Xx = wrapperspb.UInt32(n)
		o.EnforcingConsecutive_5Xx = wrapperspb.UInt32(100)
	} else {
		o.EnforcingConsecutive_5Xx = wrapperspb.UInt32(0)
	}
	if n := od.GetConsecutiveGatewayErrors(); n > 0 {
		o.ConsecutiveGatewayFailure = wrapperspb.UInt32(n)
		o.EnforcingConsecutiveGatewayFailure = wrapperspb.UInt32(100)
	}
	return o
}

// serverIDs are the SPIFFE IDs a client accepts from s's proxies: those
// its endpoints carry (the compiler kept only endpoints running as one of
// the service's accounts). With none registered, the service's default
// account, so that the list is never empty (empty would accept any
// certificate the mesh's CA signed).
func (t *translator) serverIDs(s *meshv1.Service) []string {
	var ids []string
	for _, ep := range s.GetEndpoints() {
		if id := ep.GetIdentity(); id != "" && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		ids = []string{"spiffe://" + t.trustDomain + "/ns/" + s.GetNamespace() + "/sa/" + s.GetName()}
	}
	slices.Sort(ids)
	return ids
}

func (t *translator) upstreamTLS(s *meshv1.Service) (*corev3.TransportSocket, error) {
	var sans []*matcherv3.StringMatcher
	for _, id := range t.serverIDs(s) {
		sans = append(sans, exact(id))
	}
	provider := &tlsv3.CertificateProviderPluginInstance{InstanceName: CertProviderInstance}
	tc, err := anypb.New(&tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificateProviderInstance: provider,
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			CaCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: CertProviderInstance},
			//lint:ignore SA1019 grpc-go (1.85) reads match_subject_alt_names only, not the typed successor.
			MatchSubjectAltNames: sans,
		}},
		AlpnProtocols: []string{"h2"},
	}})
	if err != nil {
		return nil, err
	}
	return &corev3.TransportSocket{Name: tlsSocketName, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: tc}}, nil
}

// loadAssignment is the service's endpoints (the compiler's: healthy ones)
// in one locality: each proxy's inbound mTLS address. The inbound proxy
// serves the service's default port (an xDS client cannot send the port
// header a Trellis proxy adds for another).
func loadAssignment(s *meshv1.Service, name string) *endpointv3.ClusterLoadAssignment {
	lbs := make([]*endpointv3.LbEndpoint, 0, len(s.GetEndpoints()))
	for _, ep := range s.GetEndpoints() {
		host, port, ok := splitAddr(ep.GetAddress())
		if !ok || !ep.GetHealthy() {
			continue
		}
		lbs = append(lbs, &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address:       host,
					PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
				}}},
			}},
			HealthStatus:        corev3.HealthStatus_HEALTHY,
			LoadBalancingWeight: wrapperspb.UInt32(1),
		})
	}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	if len(lbs) > 0 {
		// grpc-go ignores a locality of weight 0.
		cla.Endpoints = []*endpointv3.LocalityLbEndpoints{{
			Locality:            &corev3.Locality{},
			LbEndpoints:         lbs,
			LoadBalancingWeight: wrapperspb.UInt32(1),
		}}
	}
	return cla
}

func splitAddr(addr string) (string, uint32, bool) {
	i := strings.LastIndexByte(addr, ':')
	if i <= 0 {
		return "", 0, false
	}
	p, err := strconv.ParseUint(addr[i+1:], 10, 16)
	if err != nil || p == 0 {
		return "", 0, false
	}
	return strings.Trim(addr[:i], "[]"), uint32(p), true
}
