package xds

import (
	"fmt"
	"testing"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// meshSnapshot is n services of one gRPC port, three endpoints each, and
// a two-way split route on every tenth.
func meshSnapshot(n int) *meshv1.Snapshot {
	snap := &meshv1.Snapshot{TrustDomain: "trellis.local", Domain: "trellis.local"}
	for i := range n {
		s := &meshv1.Service{Name: fmt.Sprintf("svc-%d", i), Namespace: "default",
			Ports:         []*meshv1.Port{{Name: "grpc", Port: 9090, Protocol: meshv1.Protocol_GRPC}},
			BackendPolicy: &meshv1.BackendPolicy{Retry: &meshv1.RetryPolicy{Attempts: 2, GrpcStatuses: []uint32{14}}}}
		for j := range 3 {
			s.Endpoints = append(s.Endpoints, &meshv1.Endpoint{Id: fmt.Sprintf("%d-%d", i, j), Address: fmt.Sprintf("10.0.%d.%d:15006", i%250, j),
				Healthy: true, Identity: "spiffe://trellis.local/ns/default/sa/" + s.Name})
		}
		if i%10 == 0 && i+2 < n {
			s.Routes = []*meshv1.Route{{Name: "r", Backends: []*meshv1.Backend{
				{Service: fmt.Sprintf("svc-%d", i+1), Namespace: "default", Weight: 80},
				{Service: fmt.Sprintf("svc-%d", i+2), Namespace: "default", Weight: 20}}}}
		}
		snap.Services = append(snap.Services, s)
	}
	return snap
}

// BenchmarkTranslate: the work of one view change, per mesh size (the
// adapter translates the whole mesh once per change, not per client).
func BenchmarkTranslate(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		snap := meshSnapshot(n)
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Translate(snap); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
