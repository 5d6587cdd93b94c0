package compiler

import (
	"fmt"
	"strings"
	"testing"
	"testing/synctest"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// TestExternalServiceCompiled: a proxy subscribed to an ExternalService
// gets it as a Service with external set and the spec's endpoints (never
// a registered endpoint its name would select); every snapshot lists the
// mesh's namespaces and every ExternalService host; a MeshConfig sets the
// mode and moves the version, and deleting it moves it back.
func TestExternalServiceCompiled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		e.register("w1", "web", "default", true)
		e.register("o1", "orders", "shop", true)
		e.register("x1", "payments", "default", true) // labelled app=payments: not the external one's
		e.apply(`apiVersion: trellis.dev/v1alpha1
kind: ExternalService
metadata: {name: payments}
spec:
  hosts: [api.payments.example, pay.example]
  ports: [{number: 80, targetPort: 443}]
  endpoints: [{address: "203.0.113.1"}, {address: "203.0.113.2:8443", labels: {zone: b}}]
  tls: {mode: SIMPLE, sni: api.payments.example}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: payments}
spec:
  parentRefs: [{group: trellis.dev, kind: ExternalService, name: payments}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v2}}]
    backendRefs: [{group: trellis.dev, kind: ExternalService, name: payments, port: 80}]
    timeouts: {request: 3s}
---
apiVersion: trellis.dev/v1alpha1
kind: BackendPolicy
metadata: {name: payments}
spec:
  targetRefs: [{kind: ExternalService, name: payments}]
  retry: {attempts: 2}
`)
		before := e.snap("web", "default")
		p := before.GetOutboundTrafficPolicy()
		if p.GetMode() != meshv1.OutboundTrafficPolicy_ALLOW_ANY || strings.Join(p.GetNamespaces(), ",") != "default,shop" {
			t.Fatalf("policy %v, want ALLOW_ANY and namespaces default,shop", p)
		}
		var hosts []string
		for _, h := range p.GetExternalHosts() {
			hosts = append(hosts, h.GetHost()+"="+h.GetService()+"."+h.GetNamespace())
		}
		if got := strings.Join(hosts, " "); got != "api.payments.example=payments.default pay.example=payments.default" {
			t.Fatalf("external hosts %q", got)
		}
		if strings.Contains(names(before), "payments") {
			t.Fatalf("unsubscribed snapshot holds the external service: %s", names(before))
		}
		s := e.snap("web", "default", "payments.default")
		svc := service(t, s, "payments", "default")
		if x := svc.GetExternal(); x.GetTls().GetSni() != "api.payments.example" || len(x.GetHosts()) != 2 {
			t.Errorf("external %v", x)
		}
		var addrs []string
		for _, ep := range svc.GetEndpoints() {
			addrs = append(addrs, ep.GetAddress())
		}
		if got := strings.Join(addrs, " "); got != "203.0.113.1 203.0.113.2:8443" {
			t.Errorf("endpoints %q, want the spec's (not the registered x1)", got)
		}
		if got := portsString(svc.GetPorts()); !strings.Contains(got, "80") {
			t.Errorf("ports %s", got)
		}
		if rs := svc.GetRoutes(); len(rs) != 1 || rs[0].GetTimeouts().GetRequest().AsDuration().Seconds() != 3 || rs[0].GetBackends()[0].GetService() != "payments" {
			t.Errorf("routes %v: want the HTTPRoute attached by kind ExternalService", rs)
		}
		if svc.GetBackendPolicy().GetRetry().GetAttempts() != 2 {
			t.Errorf("backend policy %v: want the BackendPolicy targeting kind ExternalService", svc.GetBackendPolicy())
		}

		const meshConfig = `apiVersion: trellis.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh, namespace: trellis-system}
spec:
  outboundTrafficPolicy: {mode: %s}
`
		e.apply(fmt.Sprintf(meshConfig, "ALLOW_ANY"))
		allowAny := e.snap("web", "default")
		e.apply(fmt.Sprintf(meshConfig, "REGISTRY_ONLY"))
		after := e.snap("web", "default")
		if after.GetOutboundTrafficPolicy().GetMode() != meshv1.OutboundTrafficPolicy_REGISTRY_ONLY {
			t.Fatalf("mode %v, want REGISTRY_ONLY", after.GetOutboundTrafficPolicy().GetMode())
		}
		if after.GetVersion() == allowAny.GetVersion() {
			t.Error("the mode did not move the version")
		}
		if got := strings.Join(after.GetOutboundTrafficPolicy().GetNamespaces(), ","); got != "default,shop,trellis-system" {
			t.Errorf("namespaces %q: the MeshConfig's own namespace holds a resource", got)
		}
		e.delete("MeshConfig", "trellis-system", "mesh")
		if got := e.snap("web", "default"); got.GetVersion() != before.GetVersion() {
			t.Errorf("after delete: version %s, want %s", got.GetVersion(), before.GetVersion())
		}
		e.delete("ExternalService", "default", "payments")
		if got := e.snap("web", "default"); len(got.GetOutboundTrafficPolicy().GetExternalHosts()) != 0 || got.GetVersion() == before.GetVersion() {
			t.Errorf("after deleting the ExternalService: hosts %v, version %s", got.GetOutboundTrafficPolicy().GetExternalHosts(), got.GetVersion())
		}
	})
}
