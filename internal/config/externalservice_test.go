package config

import (
	"strings"
	"testing"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

func externalService(name, ns, spec string) string {
	return "apiVersion: trellis.dev/v1alpha1\nkind: ExternalService\nmetadata: {name: " + name + ", namespace: " + ns + "}\nspec: " + spec + "\n"
}

func TestExternalServiceValidation(t *testing.T) {
	const at = "v.yaml: document 1 (ExternalService default/pay): "
	es := func(spec string) string { return externalService("pay", "default", spec) }
	const ports = "ports: [{number: 80}]"
	runValidation(t, []validationCase{
		{"static", es("{hosts: [api.pay.example], " + ports + ", endpoints: [{address: 10.0.0.1}, {address: 'pay.example:8443', labels: {zone: a}}]}"), nil},
		{"dns", es("{hosts: [API.Pay.Example.], ports: [{number: 443, protocol: https}], resolution: DNS}"), nil},
		{"ip host", es("{hosts: ['10.1.2.3'], " + ports + "}"), nil},
		{"tls mutual", es("{hosts: [a.example], " + ports + ", tls: {mode: MUTUAL, sni: a.example, clientCertificate: /c.pem, privateKey: /k.pem}}"), nil},
		{"no hosts", es("{" + ports + "}"), []string{at + "spec.hosts: at least one host is required"}},
		{"single label", es("{hosts: [stripe], " + ports + "}"), []string{at + `spec.hosts[0]: "stripe" is a single label`}},
		{"mesh form", es("{hosts: [orders.shop.svc.trellis.local], " + ports + "}"), []string{at + "spec.hosts[0]: \"orders.shop.svc.trellis.local\" has the mesh's own form"}},
		{"wildcard", es("{hosts: ['*.example.com'], " + ports + "}"), []string{at + "spec.hosts[0]: \"*.example.com\": wildcard hosts are not supported"}},
		{"bad host", es("{hosts: [a_b.example], " + ports + "}"), []string{at + `spec.hosts[0]: "a_b.example" is not a DNS name`}},
		{"host twice", es("{hosts: [a.example, A.example], " + ports + "}"), []string{at + `spec.hosts[1]: "a.example" is already listed at spec.hosts[0]`}},
		{"no ports", es("{hosts: [a.example]}"), []string{at + "spec.ports: at least one port is required"}},
		{"bad protocol", es("{hosts: [a.example], ports: [{number: 80, protocol: udp}]}"), []string{at + `spec.ports[0].protocol: unknown protocol "udp"`}},
		{"port twice", es("{hosts: [a.example], ports: [{name: a, number: 80}, {name: b, number: 80}]}"), []string{at + "spec.ports[1].number: 80 is already used by spec.ports[0]"}},
		{"static without endpoints", es("{hosts: [a.example], " + ports + ", resolution: STATIC}"), []string{at + "spec.endpoints: resolution STATIC needs at least one endpoint"}},
		{"dns with endpoints", es("{hosts: [a.example], " + ports + ", resolution: DNS, endpoints: [{address: 10.0.0.1}]}"), []string{at + "spec.endpoints: resolution DNS dials the host"}},
		{"bad resolution", es("{hosts: [a.example], " + ports + ", resolution: EDS}"), []string{at + `spec.resolution: unknown resolution "EDS"`}},
		{"bad endpoint", es("{hosts: [a.example], " + ports + ", endpoints: [{address: 'a.example:0'}]}"), []string{at + "spec.endpoints[0].address: \"a.example:0\": port \"0\" must be between 1 and 65535"}},
		{"endpoint twice", es("{hosts: [a.example], " + ports + ", endpoints: [{address: 10.0.0.1}, {address: 10.0.0.1}]}"), []string{at + `spec.endpoints[1].address: "10.0.0.1" is already listed`}},
		{"mutual without files", es("{hosts: [a.example], " + ports + ", tls: {mode: MUTUAL}}"), []string{at + "spec.tls.clientCertificate: required with mode MUTUAL", at + "spec.tls.privateKey: required"}},
		{"simple with files", es("{hosts: [a.example], " + ports + ", tls: {mode: SIMPLE, privateKey: /k}}"), []string{at + "spec.tls: clientCertificate and privateKey are for mode MUTUAL"}},
		{"tls mode", es("{hosts: [a.example], " + ports + ", tls: {mode: ISTIO_MUTUAL}}"), []string{at + `spec.tls.mode: unknown mode "ISTIO_MUTUAL"`}},
		{"tls on tcp only", es("{hosts: [a.example], ports: [{number: 5432, protocol: tcp}], tls: {mode: SIMPLE}}"), []string{at + "spec.tls: TLS origination needs an http, http2 or grpc port"}},
		{"bad sni", es("{hosts: [a.example], " + ports + ", tls: {mode: SIMPLE, sni: 'not a name'}}"), []string{at + `spec.tls.sni: "not a name" is not a DNS name`}},
		{"unknown field", es("{hosts: [a.example], " + ports + ", location: MESH_EXTERNAL}"), []string{"spec.location: unknown field"}},
	})
}

// TestExternalServiceConflicts: checks only the whole mesh can make.
func TestExternalServiceConflicts(t *testing.T) {
	a := externalService("a", "default", "{hosts: [api.example.com, b.example.com], ports: [{number: 80}]}")
	b := externalService("b", "shop", "{hosts: [api.example.com], ports: [{number: 80}]}")
	wantErrs(t, CheckSet(mustDecode(t, "set.yaml", []byte(a+"---\n"+b))),
		`ExternalService default/a: spec.hosts[0]: "api.example.com" is also a host of ExternalService shop/b`,
		`ExternalService shop/b: spec.hosts[0]: "api.example.com" is also a host of ExternalService default/a`)
	orders := "apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata: {name: orders, namespace: shop}\nspec: {ports: [{port: 80}]}\n"
	shadow := externalService("x", "default", "{hosts: [orders.shop], ports: [{number: 80}]}")
	wantErrs(t, CheckSet(mustDecode(t, "set.yaml", []byte(orders+"---\n"+shadow))),
		`ExternalService default/x: spec.hosts[0]: "orders.shop" is the name of Service shop/orders in the mesh`)
	same := externalService("orders", "shop", "{hosts: [orders.example.com], ports: [{number: 80}]}")
	wantErrs(t, CheckSet(mustDecode(t, "set.yaml", []byte(orders+"---\n"+same))),
		"ExternalService shop/orders: metadata.name: Service shop/orders has the same name")
	if err := CheckSet(mustDecode(t, "set.yaml", []byte(a+"---\n"+orders))); err != nil {
		t.Errorf("distinct hosts refused: %v", err)
	}
}

// TestExternalServiceDeclares: the compiled Service carries its ports
// (https as tcp, targets), hosts, resolution, TLS and fixed endpoints.
func TestExternalServiceDeclares(t *testing.T) {
	objs := mustDecode(t, "e.yaml", []byte(externalService("pay", "shop",
		"{hosts: [Api.Pay.Example], ports: [{name: web, number: 80, targetPort: 443}, {name: tls, number: 8443, protocol: https}], "+
			"endpoints: [{address: 10.0.0.1}, {address: '[::1]:9443'}, {address: '::2'}], tls: {mode: MUTUAL, clientCertificate: /c, privateKey: /k}}")))
	e := objs[0].(*ExternalService)
	svc := &meshv1.Service{}
	e.DeclarePorts(svc)
	if got := svc.Ports; len(got) != 2 || got[0].TargetPort != 443 || got[0].Protocol != meshv1.Protocol_HTTP || got[1].Protocol != meshv1.Protocol_TCP {
		t.Errorf("ports %v", got)
	}
	x := svc.External
	if x.GetResolution() != meshv1.External_STATIC || strings.Join(x.GetHosts(), ",") != "api.pay.example" ||
		x.GetTls().GetMode() != meshv1.TLSOrigination_MUTUAL || x.GetTls().GetClientCertificate() != "/c" {
		t.Errorf("external %v", x)
	}
	var addrs []string
	for _, ep := range e.ExternalEndpoints() {
		addrs = append(addrs, ep.Address)
		if !ep.Healthy || ep.Identity != "" || ep.Service != "pay" || ep.Namespace != "shop" {
			t.Errorf("endpoint %v", ep)
		}
	}
	if got := strings.Join(addrs, " "); got != "10.0.0.1 [::1]:9443 [::2]" {
		t.Errorf("endpoint addresses %q", got)
	}
	if k := e.Declares(); k != (ServiceKey{Namespace: "shop", Name: "pay"}) {
		t.Errorf("declares %v", k)
	}
}

func TestMeshConfig(t *testing.T) {
	const at = "v.yaml: document 1 (MeshConfig trellis-system/mesh): "
	mc := func(ns, spec string) string {
		return "apiVersion: trellis.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh" + ns + "}\nspec: " + spec + "\n"
	}
	runValidation(t, []validationCase{
		{"registry only", mc("", "{outboundTrafficPolicy: {mode: REGISTRY_ONLY}}"), nil},
		{"defaults", mc("", "{outboundTrafficPolicy: {}}"), nil},
		{"empty", mc("", "{}"), nil},
		{"namespace", mc(", namespace: shop", "{}"), []string{"(MeshConfig shop/mesh): metadata.namespace: a MeshConfig is mesh-wide and lives in trellis-system"}},
		{"mode", mc("", "{outboundTrafficPolicy: {mode: DENY}}"), []string{at + `spec.outboundTrafficPolicy.mode: unknown mode "DENY"`}},
	})
	objs := mustDecode(t, "m.yaml", []byte(mc("", "{outboundTrafficPolicy: {mode: REGISTRY_ONLY}}")+"---\n"+
		"apiVersion: trellis.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: other}\nspec: {}\n"))
	wantErrs(t, CheckSet(objs), "MeshConfig trellis-system/mesh: metadata.name: MeshConfig trellis-system/other already holds")
	snap := &meshv1.Snapshot{}
	objs[0].(*MeshConfig).ContributeProxy(snap)
	if snap.GetOutboundTrafficPolicy().GetMode() != meshv1.OutboundTrafficPolicy_REGISTRY_ONLY {
		t.Errorf("contributed %v", snap.GetOutboundTrafficPolicy())
	}
	snap = &meshv1.Snapshot{}
	objs[1].(*MeshConfig).ContributeProxy(snap)
	if snap.OutboundTrafficPolicy != nil {
		t.Errorf("a MeshConfig without the section set %v", snap.OutboundTrafficPolicy)
	}
}

// FuzzExternalHost: the host and endpoint address checks never panic; an
// accepted host is lower case, has no trailing dot and is never a mesh
// name of the short or .svc form; an accepted endpoint address renders
// (ExternalEndpoints' form) into one the proxy can split.
func FuzzExternalHost(f *testing.F) {
	for _, s := range []string{"api.example.com", "a", "a.b.svc", "10.0.0.1", "::1", "[::1]:80", "a.example:443", "a.example:0",
		"*.a.b", "A.B", "a..b", "fe80::1%eth0", "[x]:1", "a:b:c", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if ExternalHostProblem(s) == "" {
			if strings.ToLower(s) != s || strings.HasSuffix(s, ".") || s == "" {
				t.Fatalf("accepted host %q is not in canonical form", s)
			}
			labels := strings.Split(s, ".")
			if len(labels) == 1 && !strings.Contains(s, ":") || len(labels) >= 3 && labels[2] == "svc" {
				t.Fatalf("accepted host %q has a mesh form", s)
			}
		}
		host, port, prob := ParseEndpointAddress(s)
		if prob != "" {
			if host != "" || port != 0 {
				t.Fatalf("refused %q but returned %q, %d", s, host, port)
			}
			return
		}
		if host == "" || port > 65535 {
			t.Fatalf("ParseEndpointAddress(%q) = %q, %d", s, host, port)
		}
		e := &ExternalService{Spec: ExternalServiceSpec{Endpoints: []ExternalEndpoint{{Address: s}}}}
		addr := e.ExternalEndpoints()[0].Address
		h2, p2, prob2 := ParseEndpointAddress(addr)
		if prob2 != "" || h2 != host || p2 != port {
			t.Fatalf("%q → %q → %q, %d, %q: does not round-trip", s, addr, h2, p2, prob2)
		}
	})
}
