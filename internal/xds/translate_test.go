package xds

import (
	"sort"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// greeterMesh is the small config of the golden test: a gRPC service
// split 80/20 between two versions by a GRPCRoute, with a BackendPolicy.
const greeterMesh = `
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: greeter}
spec:
  ports: [{name: grpc, port: 9090, protocol: grpc}]
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: greeter-v1}
spec:
  selector: {app: greeter, version: v1}
  serviceAccounts: [greeter]
  ports: [{name: grpc, port: 9090, protocol: grpc}]
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: greeter-v2}
spec:
  selector: {app: greeter, version: v2}
  serviceAccounts: [greeter]
  ports: [{name: grpc, port: 9090, protocol: grpc}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: greeter-split}
spec:
  parentRefs:
  - {group: "", kind: Service, name: greeter, port: 9090}
  rules:
  - matches:
    - method: {service: helloworld.Greeter, method: SayHello}
      headers:
      - {name: x-user-group, value: beta}
    backendRefs:
    - {name: greeter-v2, port: 9090}
  - backendRefs:
    - {name: greeter-v1, port: 9090, weight: 80}
    - {name: greeter-v2, port: 9090, weight: 20}
---
apiVersion: trellis.dev/v1alpha1
kind: BackendPolicy
metadata: {name: greeter}
spec:
  targetRefs:
  - {kind: Service, name: greeter}
  loadBalancer: {type: round-robin}
  retry:
    attempts: 2
    perTryTimeout: 2s
    grpcStatuses: [unavailable]
    backoff: {baseInterval: 25ms, maxInterval: 250ms}
  circuitBreaker: {maxRequests: 100}
  outlierDetection: {consecutive5xx: 5, baseEjectionTime: 30s}
`

func greeterEnv(t *testing.T) *env {
	e := newEnv(t, Options{})
	e.apply(greeterMesh)
	e.register("greeter-v1-a", "greeter", "127.0.0.1:24001", map[string]string{"version": "v1"})
	e.register("greeter-v2-a", "greeter", "127.0.0.1:24002", map[string]string{"version": "v2"})
	return e
}

func published(t *testing.T, e *env) *cache.Snapshot {
	t.Helper()
	s, err := e.srv.cache.GetSnapshot(cacheKey)
	if err != nil {
		t.Fatal(err)
	}
	return s.(*cache.Snapshot)
}

// TestTranslateGolden: the resources of a small mesh, as JSON.
func TestTranslateGolden(t *testing.T) {
	e := greeterEnv(t)
	e.update()
	snap := published(t, e)
	rs := Resources{}
	for _, typ := range []resource.Type{resource.ListenerType, resource.RouteType, resource.ClusterType, resource.EndpointType} {
		for _, r := range snap.GetResources(typ) {
			rs[typ] = append(rs[typ], r)
		}
		sort.Slice(rs[typ], func(i, j int) bool { return resourceName(rs[typ][i]) < resourceName(rs[typ][j]) })
	}
	golden(t, "greeter", resourcesJSON(t, rs))
}

// TestTranslateSplit checks the parts the e2e test relies on without the
// golden file's detail: the route's weights, healthy endpoints only, and
// the server identity a client checks.
func TestTranslateSplit(t *testing.T) {
	e := greeterEnv(t)
	e.update()
	snap := published(t, e)
	rc := snap.GetResources(resource.RouteType)["greeter.default:9090"].(*routev3.RouteConfiguration)
	routes := rc.GetVirtualHosts()[0].GetRoutes()
	if len(routes) != 2 {
		t.Fatalf("routes = %d, want 2 (beta match, then the split)", len(routes))
	}
	if got := routes[0].GetMatch().GetPath(); got != "/helloworld.Greeter/SayHello" {
		t.Errorf("first route matches path %q", got)
	}
	wc := routes[1].GetRoute().GetWeightedClusters().GetClusters()
	if len(wc) != 2 || wc[0].GetName() != "greeter-v1.default:9090" || wc[0].GetWeight().GetValue() != 80 ||
		wc[1].GetName() != "greeter-v2.default:9090" || wc[1].GetWeight().GetValue() != 20 {
		t.Errorf("split = %v", wc)
	}
	if got := routes[1].GetRoute().GetRetryPolicy().GetRetryOn(); !strings.HasPrefix(got, "unavailable,") {
		t.Errorf("retry_on = %q", got)
	}
	cla := snap.GetResources(resource.EndpointType)["greeter-v1.default:9090"].(*endpointv3.ClusterLoadAssignment)
	if n := len(cla.GetEndpoints()); n != 1 || len(cla.GetEndpoints()[0].GetLbEndpoints()) != 1 {
		t.Fatalf("greeter-v1 endpoints = %v", cla.GetEndpoints())
	}
	c := snap.GetResources(resource.ClusterType)["greeter.default:9090"].(*clusterv3.Cluster)
	if c.GetLbPolicy() != clusterv3.Cluster_ROUND_ROBIN || c.GetCircuitBreakers().GetThresholds()[0].GetMaxRequests().GetValue() != 100 {
		t.Errorf("cluster = %v", c)
	}

	// The v2 endpoint turns unhealthy: it leaves the assignment.
	e.registerHealth("greeter-v2-a", "greeter", "127.0.0.1:24002", map[string]string{"version": "v2"}, false)
	e.update()
	snap = published(t, e)
	cla = snap.GetResources(resource.EndpointType)["greeter-v2.default:9090"].(*endpointv3.ClusterLoadAssignment)
	if len(cla.GetEndpoints()) != 0 {
		t.Errorf("unhealthy endpoint still assigned: %v", cla.GetEndpoints())
	}
}

// TestReferencesResolve: every RDS name a listener gives, every cluster a
// route sends to and every EDS name a cluster asks for is in the set (what
// cache.Snapshot.Consistent checks for filter-chain listeners only).
func TestReferencesResolve(t *testing.T) {
	e := greeterEnv(t)
	e.update()
	snap := published(t, e)
	has := func(typ resource.Type, name string) bool { _, ok := snap.GetResources(typ)[name]; return ok }
	for name, r := range snap.GetResources(resource.ListenerType) {
		hcm := &hcmv3.HttpConnectionManager{}
		if err := r.(*listenerv3.Listener).GetApiListener().GetApiListener().UnmarshalTo(hcm); err != nil {
			t.Fatalf("listener %s: %v", name, err)
		}
		if rn := hcm.GetRds().GetRouteConfigName(); !has(resource.RouteType, rn) {
			t.Errorf("listener %s names route configuration %q, not in the set", name, rn)
		}
	}
	for name, r := range snap.GetResources(resource.RouteType) {
		for _, rt := range r.(*routev3.RouteConfiguration).GetVirtualHosts()[0].GetRoutes() {
			names := []string{rt.GetRoute().GetCluster()}
			if wc := rt.GetRoute().GetWeightedClusters(); wc != nil {
				names = nil
				for _, c := range wc.GetClusters() {
					names = append(names, c.GetName())
				}
			}
			for _, cn := range names {
				if !has(resource.ClusterType, cn) {
					t.Errorf("route configuration %s sends to cluster %q, not in the set", name, cn)
				}
			}
		}
	}
	for name, r := range snap.GetResources(resource.ClusterType) {
		if en := r.(*clusterv3.Cluster).GetEdsClusterConfig().GetServiceName(); !has(resource.EndpointType, en) {
			t.Errorf("cluster %s asks EDS for %q, not in the set", name, en)
		}
	}
	if len(snap.GetResources(resource.ListenerType)) == 0 {
		t.Fatal("no listeners")
	}
}

// TestTranslateNames: a multi-port service gets a listener per port and
// the bare name for its first gRPC port; TCP ports none; a backend
// without a port goes to the request's port, or to the backend's first
// port when it has not that one; an unhealthy or malformed endpoint is
// not assigned.
func TestTranslateNames(t *testing.T) {
	snap := &meshv1.Snapshot{TrustDomain: "trellis.local", Services: []*meshv1.Service{
		{Name: "shop", Namespace: "default", Ports: []*meshv1.Port{
			{Name: "http", Port: 80, Protocol: meshv1.Protocol_HTTP},
			{Name: "grpc", Port: 9090, Protocol: meshv1.Protocol_GRPC},
			{Name: "db", Port: 5432, Protocol: meshv1.Protocol_TCP},
		}, Routes: []*meshv1.Route{{Name: "r", Port: 9090, Backends: []*meshv1.Backend{{Service: "legacy", Namespace: "default", Weight: 1}}}},
			Endpoints: []*meshv1.Endpoint{
				{Id: "ok", Address: "127.0.0.1:24010", Healthy: true},
				{Id: "sick", Address: "127.0.0.1:24011"},
				{Id: "bad", Address: "no-port", Healthy: true},
			}},
		{Name: "legacy", Namespace: "default", Ports: []*meshv1.Port{{Name: "grpc", Port: 8080, Protocol: meshv1.Protocol_GRPC}}},
	}}
	rs, err := Translate(snap)
	if err != nil {
		t.Fatal(err)
	}
	var listeners []string
	for _, r := range rs[resource.ListenerType] {
		listeners = append(listeners, resourceName(r))
	}
	want := []string{"legacy.default", "legacy.default:8080", "shop.default", "shop.default:80", "shop.default:9090"}
	if strings.Join(listeners, " ") != strings.Join(want, " ") {
		t.Errorf("listeners = %v, want %v", listeners, want)
	}
	for _, r := range rs[resource.ListenerType] {
		hcm := &hcmv3.HttpConnectionManager{}
		if err := r.(*listenerv3.Listener).GetApiListener().GetApiListener().UnmarshalTo(hcm); err != nil {
			t.Fatal(err)
		}
		if resourceName(r) == "shop.default" && hcm.GetRds().GetRouteConfigName() != "shop.default:9090" {
			t.Errorf("shop.default routes by %q, want its gRPC port's shop.default:9090", hcm.GetRds().GetRouteConfigName())
		}
	}
	for _, r := range rs[resource.RouteType] {
		rc := r.(*routev3.RouteConfiguration)
		routes := rc.GetVirtualHosts()[0].GetRoutes()
		switch rc.GetName() {
		case "shop.default:9090":
			if len(routes) != 1 || routes[0].GetRoute().GetCluster() != "legacy.default:8080" {
				t.Errorf("shop.default:9090 routes = %v; want one to legacy.default:8080", routes)
			}
		case "shop.default:80":
			// The route is for port 9090 only: port 80 matches nothing.
			if len(routes) != 0 {
				t.Errorf("shop.default:80 routes = %v; want none", routes)
			}
		}
	}
	for _, r := range rs[resource.EndpointType] {
		cla := r.(*endpointv3.ClusterLoadAssignment)
		if cla.GetClusterName() != "shop.default:80" {
			continue
		}
		if eps := cla.GetEndpoints(); len(eps) != 1 || len(eps[0].GetLbEndpoints()) != 1 ||
			eps[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetPortValue() != 24010 {
			t.Errorf("shop endpoints = %v; want the healthy, well-formed one only", eps)
		}
	}
}

// TestTranslateSkipsExternalServices: an ExternalService (outside
// addresses, no SPIFFE ID) gets no xDS resources.
func TestTranslateSkipsExternalServices(t *testing.T) {
	snap := &meshv1.Snapshot{TrustDomain: "trellis.local", Services: []*meshv1.Service{
		{Name: "greeter", Namespace: "default", Ports: []*meshv1.Port{{Name: "grpc", Port: 9090, Protocol: meshv1.Protocol_GRPC}}},
		{Name: "stripe", Namespace: "default", External: &meshv1.External{Hosts: []string{"api.stripe.test"}},
			Ports:     []*meshv1.Port{{Name: "grpc", Port: 443, Protocol: meshv1.Protocol_GRPC}},
			Endpoints: []*meshv1.Endpoint{{Id: "e", Address: "203.0.113.7:443", Healthy: true}}},
	}}
	rs, err := Translate(snap)
	if err != nil {
		t.Fatal(err)
	}
	for typ, list := range rs {
		for _, r := range list {
			if strings.HasPrefix(resourceName(r), "stripe.") {
				t.Errorf("%s %s served for an ExternalService", typ, resourceName(r))
			}
		}
	}
	if len(rs[resource.ListenerType]) == 0 {
		t.Fatal("no listener for the mesh service")
	}
}
