package config

import (
	"fmt"
	"strings"
	"testing"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

func TestHTTPRouteAttachments(t *testing.T) {
	objs := mustDecode(t, "r.yaml", []byte(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: web}
spec:
  parentRefs:
  - {kind: Service, name: b, port: 8080}
  - {kind: Service, name: a, namespace: shop, port: 80}
  - {kind: Service, name: b}
  - {kind: Service, name: a, namespace: shop, port: 81}
  - {kind: Service, name: c, port: 90}
  rules: [{backendRefs: [{name: a}]}]
`))
	var got []string
	for _, at := range objs[0].(Attacher).Attachments() {
		got = append(got, fmt.Sprintf("%s:%d", at.Service, at.Port))
	}
	// Sorted by namespace, name, port; b's port-less parentRef covers 8080.
	if want := "a.shop:80,a.shop:81,b.web:0,c.web:90"; strings.Join(got, ",") != want {
		t.Fatalf("attachments %s, want %s", strings.Join(got, ","), want)
	}
}

func TestServiceDeclares(t *testing.T) {
	objs := mustDecode(t, "s.yaml", []byte(`apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  ports:
  - {name: a, port: 80}
  - {name: b, port: 81, protocol: http2}
  - {name: c, port: 82, protocol: grpc, targetPort: 9090}
  - {name: d, port: 83, protocol: tcp}
`))
	d := objs[0].(Declarer)
	if k := d.Declares(); k != (ServiceKey{Namespace: "shop", Name: "db"}) {
		t.Fatalf("declares %v", k)
	}
	if sel := d.Selector(); len(sel) != 1 || sel["app"] != "db" {
		t.Fatalf("default selector %v", sel)
	}
	svc := &meshv1.Service{}
	d.DeclarePorts(svc)
	var got []string
	for _, p := range svc.Ports {
		got = append(got, fmt.Sprintf("%s:%d->%d/%s", p.Name, p.Port, p.TargetPort, p.Protocol))
	}
	if want := "a:80->80/HTTP,b:81->81/HTTP2,c:82->9090/GRPC,d:83->83/TCP"; strings.Join(got, ",") != want {
		t.Fatalf("ports %s, want %s", strings.Join(got, ","), want)
	}
}
