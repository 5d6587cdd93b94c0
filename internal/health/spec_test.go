package health

import (
	"strings"
	"testing"
	"time"
)

func TestParseFlag(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Override
		err  string
	}{
		{in: "off", want: Override{Off: true}},
		{in: "tcp", want: Override{Type: TCP}},
		{in: "tcp:8081", want: Override{Type: TCP, Port: 8081}},
		{in: "http:/healthz", want: Override{Type: HTTP, Path: "/healthz"}},
		{in: "http:8081/healthz?interval=2s&timeout=500ms", want: Override{Type: HTTP, Port: 8081, Path: "/healthz", Interval: 2 * time.Second, Timeout: 500 * time.Millisecond}},
		{in: "http/ready", want: Override{Type: HTTP, Path: "/ready"}},
		{in: "grpc", want: Override{Type: GRPC}},
		{in: "grpc:9090/orders.v1.Orders", want: Override{Type: GRPC, Port: 9090, Path: "orders.v1.Orders"}},
		{in: "grpc?healthy=1&unhealthy=5", want: Override{Type: GRPC, HealthyThreshold: 1, UnhealthyThreshold: 5}},
		{in: "udp", err: "type must be"},
		{in: "", err: "type must be"},
		{in: "tcp:99999", err: "not 1..65535"},
		{in: "tcp:/x", err: "takes no path"},
		{in: "http:/?interval=-1s", err: "positive duration"},
		{in: "http:/?healthy=0", err: "not 1..100"},
		{in: "http:/?bogus=1", err: "unknown option"},
		{in: "http:/?interval=1s&interval=2s", err: "given 2 times"},
	} {
		got, err := ParseFlag(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseFlag(%q) = %+v, %v; want error with %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseFlag(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

func TestOverrideApply(t *testing.T) {
	cfg := Spec{Type: HTTP, Addr: "127.0.0.1:8080", Path: "/healthz", Interval: 10 * time.Second, HealthyThreshold: 4}
	got := Override{Type: TCP, Port: 9000, Timeout: time.Second}.Apply(cfg, "127.0.0.1")
	want := Spec{Type: TCP, Addr: "127.0.0.1:9000", Interval: 10 * time.Second, Timeout: time.Second, HealthyThreshold: 4}
	if got != want {
		t.Errorf("tcp over http: %+v, want %+v", got, want)
	}
	got = Override{Type: HTTP, Interval: time.Second}.Apply(cfg, "127.0.0.1")
	if got.Path != "/healthz" || got.Interval != time.Second || got.Addr != cfg.Addr {
		t.Errorf("same type: %+v keeps the config's path and address", got)
	}
}

func FuzzParseFlag(f *testing.F) {
	for _, s := range []string{"off", "tcp", "http:8081/healthz?interval=2s", "grpc:9090/a.B", "http/x?healthy=2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		o, err := ParseFlag(s)
		if err != nil {
			return
		}
		if o.Port < 0 || o.Port > 65535 || o.Interval < 0 || o.Timeout < 0 {
			t.Fatalf("ParseFlag(%q) = %+v", s, o)
		}
		if o.Type == HTTP && o.Path != "" && !strings.HasPrefix(o.Path, "/") {
			t.Fatalf("ParseFlag(%q): http path %q", s, o.Path)
		}
	})
}
