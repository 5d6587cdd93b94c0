package config

import (
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

func policy(name, spec string) string {
	return "apiVersion: trellis.dev/v1alpha1\nkind: BackendPolicy\nmetadata: {name: " + name + "}\nspec: " + spec + "\n"
}

const inv = "targetRefs: [{kind: Service, name: inventory}]"

func TestBackendPolicyValidation(t *testing.T) {
	const at = "v.yaml: document 1 (BackendPolicy default/p): "
	p := func(spec string) string { return policy("p", "{"+inv+", "+spec+"}") }
	runValidation(t, []validationCase{
		{"targets only", policy("p", "{"+inv+"}"), nil},
		{"kind defaults to Service", policy("p", "{targetRefs: [{name: inventory}]}"), nil},
		{"every field", p(`loadBalancer: {type: ring-hash, hash: {header: X-User}, slowStart: 30s},
  retry: {attempts: 3, perTryTimeout: 1s, statusCodes: [502, 503], grpcStatuses: [unavailable, cancelled], retryNonIdempotent: true,
    backoff: {baseInterval: 10ms, maxInterval: 1s}, budget: {retryRatio: 0.5, minRetriesPerSecond: 5, ttl: 20s}, maxBodyBytes: 1024},
  circuitBreaker: {maxConnections: 10, maxPendingRequests: 5, maxRequests: 100},
  outlierDetection: {consecutive5xx: 3, consecutiveGatewayErrors: 2, baseEjectionTime: 10s, maxEjectionTime: 1m, maxEjectionPercent: 50}`), nil},
		{"no targets", policy("p", "{}"), []string{at + "spec.targetRefs: at least one targetRef is required"}},
		{"target kind", policy("p", "{targetRefs: [{kind: Gateway, name: x}]}"), []string{at + `spec.targetRefs[0].kind: must be Service or ExternalService, got "Gateway"`}},
		{"target group", policy("p", "{targetRefs: [{group: apps, kind: Service, name: x}]}"), []string{at + `spec.targetRefs[0].group: must be "" (core) or trellis.dev, got "apps"`}},
		{"target twice", policy("p", "{targetRefs: [{name: x}, {name: x}]}"), []string{at + "spec.targetRefs[1].name: Service x is already targeted by spec.targetRefs[0]"}},
		{"unknown field", p("retry: {attempt: 3}"), []string{"spec.retry.attempt: unknown field"}},
		{"unknown balancer", p("loadBalancer: {type: fastest}"), []string{at + `spec.loadBalancer.type: unknown load balancer "fastest": must be one of p2c-ewma, round-robin, random, least-request, ring-hash, maglev`}},
		{"hash without hashing balancer", p("loadBalancer: {hash: {cookie: s}}"), []string{at + "spec.loadBalancer.hash: only ring-hash and maglev hash; type is p2c-ewma"}},
		{"two hash keys", p("loadBalancer: {type: maglev, hash: {cookie: s, header: x}}"), []string{at + "spec.loadBalancer.hash: set exactly one of header, cookie, queryParam, sourceIdentity"}},
		{"bad hash header", p("loadBalancer: {type: maglev, hash: {header: 'a b'}}"), []string{at + `spec.loadBalancer.hash.header: "a b" is not a header name`}},
		{"negative slow start", p("loadBalancer: {slowStart: -1s}"), []string{at + "spec.loadBalancer.slowStart: must not be negative"}},
		{"attempts", p("retry: {attempts: 11}"), []string{at + "spec.retry.attempts: must be between 0 and 10, got 11"}},
		{"per try timeout", p("retry: {perTryTimeout: 0s}"), []string{at + "spec.retry.perTryTimeout: must be positive"}},
		{"status code", p("retry: {statusCodes: [404]}"), []string{at + "spec.retry.statusCodes[0]: must be a 5xx status (500..599), got 404"}},
		{"grpc status", p("retry: {grpcStatuses: [not-found]}"), []string{at + `spec.retry.grpcStatuses[0]: unknown gRPC status "not-found": must be one of cancelled, deadline-exceeded, internal, resource-exhausted, unavailable`}},
		{"backoff order", p("retry: {backoff: {baseInterval: 1s, maxInterval: 10ms}}"), []string{at + "spec.retry.backoff.maxInterval: must be at least baseInterval (1s), got 10ms"}},
		{"budget ratio", p("retry: {budget: {retryRatio: -0.1}}"), []string{at + "spec.retry.budget.retryRatio: must be between 0 and 1000"}},
		{"budget ttl", p("retry: {budget: {ttl: 100ms}}"), []string{at + "spec.retry.budget.ttl: must be between 1s and 60s, got 100ms"}},
		{"body bound", p("retry: {maxBodyBytes: -1}"), []string{at + "spec.retry.maxBodyBytes: must be between 0 and 16777216, got -1"}},
		{"breaker zero", p("circuitBreaker: {maxRequests: 0}"), []string{at + "spec.circuitBreaker.maxRequests: must be between 1 and 4294967295, got 0"}},
		{"breaker too big", p("circuitBreaker: {maxConnections: 4294967296}"), []string{at + "spec.circuitBreaker.maxConnections: must be between 1 and 4294967295"}},
		{"outlier nothing", p("outlierDetection: {consecutive5xx: 0, consecutiveGatewayErrors: 0}"), []string{at + "spec.outlierDetection: consecutive5xx and consecutiveGatewayErrors are both 0"}},
		{"outlier times", p("outlierDetection: {baseEjectionTime: 1m, maxEjectionTime: 10s}"), []string{at + "spec.outlierDetection.maxEjectionTime: must be at least baseEjectionTime (1m0s), got 10s"}},
		{"outlier percent", p("outlierDetection: {maxEjectionPercent: 101}"), []string{at + "spec.outlierDetection.maxEjectionPercent: must be between 0 and 100, got 101"}},
	})
}

// TestBackendPolicyCompileDefaults: a section given is compiled with every
// default filled in; sections left out stay unset.
func TestBackendPolicyCompileDefaults(t *testing.T) {
	objs := mustDecode(t, "p.yaml", []byte(policy("p", "{"+inv+", retry: {}, circuitBreaker: {}, outlierDetection: {}, loadBalancer: {}}")))
	b := NewServiceBuild(&meshv1.Service{Name: "inventory", Namespace: "default"})
	p := objs[0].(*BackendPolicy)
	at := p.Attachments()
	if len(at) != 1 || at[0].Service != (ServiceKey{Namespace: "default", Name: "inventory"}) || at[0].Port != 0 {
		t.Fatalf("attachments %v", at)
	}
	p.Contribute(b, at[0], 1)
	want := `load_balancer:P2C_PEAK_EWMA
retry:{attempts:2 status_codes:503 backoff_base:{nanos:25000000} backoff_max:{nanos:250000000}
 budget:{retry_ratio:0.2 min_retries_per_second:10 ttl:{seconds:10}} max_body_bytes:65536}
circuit_breaker:{max_connections:4294967295 max_pending_requests:4294967295 max_requests:4294967295}
outlier_detection:{consecutive_5xx:5 consecutive_gateway_errors:5 base_ejection_time:{seconds:30} max_ejection_time:{seconds:300} max_ejection_percent:10}`
	var wantPB meshv1.BackendPolicy
	if err := prototext.Unmarshal([]byte(want), &wantPB); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(b.Service.BackendPolicy, &wantPB) {
		t.Fatalf("compiled\n%v\nwant\n%v", b.Service.BackendPolicy, &wantPB)
	}

	objs = mustDecode(t, "p.yaml", []byte(policy("p", "{"+inv+"}")))
	b = NewServiceBuild(&meshv1.Service{})
	objs[0].(*BackendPolicy).Contribute(b, at[0], 1)
	if !proto.Equal(b.Service.BackendPolicy, &meshv1.BackendPolicy{}) {
		t.Fatalf("empty policy compiled to %v", b.Service.BackendPolicy)
	}
}

func TestBackendPolicyCompileFields(t *testing.T) {
	objs := mustDecode(t, "p.yaml", []byte(policy("p", "{"+inv+`, loadBalancer: {type: maglev, hash: {header: X-User}, slowStart: 20s},
  retry: {attempts: 1, perTryTimeout: 2s, grpcStatuses: [unavailable, resource-exhausted], retryNonIdempotent: true}}`)))
	b := NewServiceBuild(&meshv1.Service{})
	objs[0].(*BackendPolicy).Contribute(b, Attachment{}, 1)
	bp := b.Service.BackendPolicy
	if bp.LoadBalancer != meshv1.LoadBalancer_MAGLEV || bp.Hash.GetHeader() != "x-user" || bp.SlowStart.AsDuration() != 20*time.Second {
		t.Errorf("balancer %v hash %v slow start %v", bp.LoadBalancer, bp.Hash, bp.SlowStart)
	}
	r := bp.Retry
	if r.Attempts != 1 || r.PerTryTimeout.AsDuration() != 2*time.Second || !r.RetryNonIdempotent ||
		len(r.GrpcStatuses) != 2 || r.GrpcStatuses[0] != 14 || r.GrpcStatuses[1] != 8 {
		t.Errorf("retry %v", r)
	}
	for _, tc := range []struct{ hash, want string }{
		{"{cookie: session}", "cookie:\"session\""},
		{"{queryParam: user}", "query_param:\"user\""},
		{"{sourceIdentity: true}", "source_identity:true"},
	} {
		objs := mustDecode(t, "p.yaml", []byte(policy("p", "{"+inv+", loadBalancer: {type: ring-hash, hash: "+tc.hash+"}}")))
		b := NewServiceBuild(&meshv1.Service{})
		objs[0].(*BackendPolicy).Contribute(b, Attachment{}, 1)
		var want meshv1.HashPolicy
		if err := prototext.Unmarshal([]byte(tc.want), &want); err != nil {
			t.Fatal(err)
		}
		if got := b.Service.BackendPolicy.Hash; !proto.Equal(got, &want) {
			t.Errorf("hash %s compiled to %q, want %q", tc.hash, got, tc.want)
		}
	}
}

// TestBackendPolicyConflicts: two policies on one Service are refused, each
// naming the other; policies on different Services, or in other
// namespaces, are not; a Service that is not in the set is allowed.
func TestBackendPolicyConflicts(t *testing.T) {
	a := policy("a", "{targetRefs: [{name: inventory}, {name: orders}]}")
	b := policy("b", "{targetRefs: [{name: web}, {name: orders}]}")
	c := policy("c", "{targetRefs: [{name: inventory}]}")
	otherNS := "apiVersion: trellis.dev/v1alpha1\nkind: BackendPolicy\nmetadata: {name: a, namespace: shop}\nspec: {targetRefs: [{name: orders}]}\n"
	objs := mustDecode(t, "set.yaml", []byte(a+"---\n"+b+"---\n"+otherNS))
	wantErrs(t, CheckSet(objs),
		"BackendPolicy default/a: spec.targetRefs[1]: Service default/orders is also targeted by BackendPolicy default/b; a Service takes one BackendPolicy: merge them",
		"BackendPolicy default/b: spec.targetRefs[1]: Service default/orders is also targeted by BackendPolicy default/a")
	if n := len(Errors(CheckSet(objs))); n != 2 {
		t.Errorf("%d errors, want 2 (the shop namespace's policy conflicts with nothing)", n)
	}
	objs = mustDecode(t, "set.yaml", []byte(b+"---\n"+c+"---\n"+otherNS))
	if err := CheckSet(objs); err != nil {
		t.Fatalf("policies on distinct Services: %v", err)
	}
}
