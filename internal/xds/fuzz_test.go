package xds

import (
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// FuzzTranslate: any snapshot (the compiler's output as bytes) translates
// without panicking into resources that validate (the protoc-gen-validate
// rules Envoy and go-control-plane apply) and whose names are unique per
// type, or is refused with an error.
func FuzzTranslate(f *testing.F) {
	seed := &meshv1.Snapshot{TrustDomain: "trellis.local", Domain: "trellis.local", Services: []*meshv1.Service{{
		Name: "greeter", Namespace: "default",
		Ports: []*meshv1.Port{{Name: "grpc", Port: 9090, Protocol: meshv1.Protocol_GRPC}, {Name: "db", Port: 5432, Protocol: meshv1.Protocol_TCP}},
		Routes: []*meshv1.Route{{Name: "default/r/rules[0]", Matches: []*meshv1.Match{{
			Path:        &meshv1.PathMatch{Type: meshv1.PathMatch_REGEX, Value: "/a.*"},
			Headers:     []*meshv1.HeaderMatch{{Name: "x-a", Value: "b"}},
			QueryParams: []*meshv1.QueryParamMatch{{Name: "q", Value: "1", Type: meshv1.QueryParamMatch_REGEX}},
		}}, Backends: []*meshv1.Backend{{Service: "greeter-v1", Namespace: "default", Weight: 80}, {Service: "greeter-v2", Namespace: "default", Port: 9090, Weight: 20}}}},
		Endpoints: []*meshv1.Endpoint{{Id: "a", Address: "127.0.0.1:24001", Healthy: true, Identity: "spiffe://trellis.local/ns/default/sa/greeter"},
			{Id: "b", Address: "[::1]:24002", Healthy: true}, {Id: "c", Address: "bad", Healthy: true}},
		BackendPolicy: &meshv1.BackendPolicy{LoadBalancer: meshv1.LoadBalancer_RING_HASH, Hash: &meshv1.HashPolicy{Key: &meshv1.HashPolicy_Header{Header: "x-user"}},
			Retry:            &meshv1.RetryPolicy{Attempts: 2, GrpcStatuses: []uint32{14, 99}, StatusCodes: []uint32{503}},
			CircuitBreaker:   &meshv1.CircuitBreaker{MaxRequests: 10},
			OutlierDetection: &meshv1.OutlierDetection{ConsecutiveGatewayErrors: 3}},
	}}}
	b, err := proto.Marshal(seed)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		snap := &meshv1.Snapshot{}
		if err := proto.Unmarshal(data, snap); err != nil {
			return
		}
		rs, err := Translate(snap)
		if err != nil {
			return
		}
		for typ, list := range rs {
			seen := map[string]bool{}
			for _, r := range list {
				name := resourceName(r)
				if seen[name] {
					// Two services of one name in a snapshot would collide;
					// the compiler never emits that, the fuzzer may.
					continue
				}
				seen[name] = true
				if err := validate(r); err != nil && wellFormed(snap) {
					t.Fatalf("%s %q does not validate: %v", typ, name, err)
				}
			}
		}
	})
}

// validate runs the resource's generated Validate (protoc-gen-validate).
func validate(r proto.Message) error {
	switch m := r.(type) {
	case *listenerv3.Listener:
		return m.Validate()
	case *routev3.RouteConfiguration:
		return m.Validate()
	case *clusterv3.Cluster:
		return m.Validate()
	case *endpointv3.ClusterLoadAssignment:
		return m.Validate()
	}
	return nil
}

// wellFormed: what the compiler guarantees and Translate relies on —
// names a resource name may hold, weights and ports in range. Fuzzed
// snapshots outside it may translate to resources Envoy would refuse,
// as such a snapshot would make a Trellis proxy NACK.
func wellFormed(s *meshv1.Snapshot) bool {
	for _, svc := range s.GetServices() {
		if svc.GetName() == "" || svc.GetNamespace() == "" {
			return false
		}
		for _, p := range svc.GetPorts() {
			if p.GetPort() == 0 || p.GetPort() > 65535 {
				return false
			}
		}
		for _, r := range svc.GetRoutes() {
			for _, m := range r.GetMatches() {
				for _, h := range m.GetHeaders() {
					if h.GetName() == "" {
						return false
					}
				}
				for _, q := range m.GetQueryParams() {
					if q.GetName() == "" {
						return false
					}
				}
				if m.GetPath() != nil && m.GetPath().GetType() == meshv1.PathMatch_REGEX && m.GetPath().GetValue() == "" {
					return false
				}
				if m.GetPath() != nil && m.GetPath().GetType() == meshv1.PathMatch_EXACT && m.GetPath().GetValue() == "" {
					return false
				}
			}
			for _, b := range r.GetBackends() {
				if b.GetService() == "" || b.GetNamespace() == "" {
					return false
				}
			}
		}
	}
	return true
}

var _ = resource.ListenerType
