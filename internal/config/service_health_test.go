package config

import (
	"testing"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

func TestServiceHealthCheckValidation(t *testing.T) {
	const at = "v.yaml: document 1 (Service default/web): spec.healthCheck."
	hc := func(h string) string {
		return service("", "{ports: [{name: http, port: 80}, {name: admin, port: 81}], healthCheck: "+h+"}")
	}
	runValidation(t, []validationCase{
		{"tcp default", hc("{}"), nil},
		{"http path", hc("{type: http, path: /healthz, port: admin, interval: 2s, timeout: 500ms, healthyThreshold: 1, unhealthyThreshold: 5}"), nil},
		{"grpc service name", hc("{type: grpc, path: orders.v1.Orders}"), nil},
		{"unknown type", hc("{type: udp}"), []string{at + `type: unknown type "udp": must be tcp, http or grpc`}},
		{"type is case-sensitive", hc("{type: HTTP}"), []string{at + `type: unknown type "HTTP"`}},
		{"tcp takes no path", hc("{type: tcp, path: /x}"), []string{at + "path: a tcp check takes no path"}},
		{"http path needs a slash", hc("{type: http, path: healthz}"), []string{at + `path: "healthz" must start with /`}},
		{"http path with a query", hc("{type: http, path: '/h?x=1'}"), []string{at + `path: "/h?x=1" must not contain`}},
		{"unknown port", hc("{port: metrics}"), []string{at + `port: "metrics" is not the name of one of spec.ports`}},
		{"interval too short", hc("{interval: 10ms}"), []string{at + "interval: must be between 100ms and 5m0s, got 10ms"}},
		{"timeout over interval", hc("{interval: 1s, timeout: 2s}"), []string{at + "timeout: must be positive and at most the interval (1s), got 2s"}},
		{"threshold zero is the default, negative refused", hc("{healthyThreshold: -1}"), []string{at + "healthyThreshold: must be between 1 and 100, got -1"}},
		{"threshold too big", hc("{unhealthyThreshold: 101}"), []string{at + "unhealthyThreshold: must be between 1 and 100, got 101"}},
		{"unknown field", hc("{kind: http}"), []string{"unknown field"}},
	})
}

// TestServiceHealthCheckDefaults: the compiled check spells every default out.
func TestServiceHealthCheckDefaults(t *testing.T) {
	objs, err := Decode("v.yaml", []byte(service("", "{ports: [{port: 80}], healthCheck: {type: http, interval: 500ms}}")))
	if err != nil {
		t.Fatal(err)
	}
	got := objs[0].(*Service).HealthCheck()
	if got.GetType() != meshv1.HealthCheck_HTTP || got.GetPath() != "/" || got.GetInterval().AsDuration() != 500*time.Millisecond ||
		got.GetTimeout().AsDuration() != 500*time.Millisecond || got.GetHealthyThreshold() != 2 || got.GetUnhealthyThreshold() != 3 {
		t.Errorf("compiled %v; want http / every 500ms, timeout capped at the interval, thresholds 2 and 3", got)
	}
	objs, err = Decode("v.yaml", []byte(service("", "{ports: [{port: 80}]}")))
	if err != nil {
		t.Fatal(err)
	}
	if hc := objs[0].(*Service).HealthCheck(); hc != nil {
		t.Errorf("no healthCheck compiled to %v; want nil (the proxy's TCP default)", hc)
	}
}
