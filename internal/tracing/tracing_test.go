package tracing

import (
	"context"
	"math"
	"net/http"
	"strings"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"trellis.dev/trellis/internal/tracing/otlptest"
)

func TestParseTraceparent(t *testing.T) {
	const id = "4bf92f3577b34da6a3ce929d0e0e4736"
	for _, tc := range []struct {
		in   string
		want string
	}{
		{"00-" + id + "-00f067aa0ba902b7-01", id},
		{"00-" + id + "-00f067aa0ba902b7-00", id},
		{"01-" + id + "-00f067aa0ba902b7-01-future", id}, // a later version may add fields
		{"00-" + id + "-00f067aa0ba902b7-01-x", ""},      // version 00 may not
		{"01-" + id + "-00f067aa0ba902b7-01x", ""},
		{"ff-" + id + "-00f067aa0ba902b7-01", ""},
		{"00-00000000000000000000000000000000-00f067aa0ba902b7-01", ""},
		{"00-" + id + "-0000000000000000-01", ""},
		{"00-" + strings.ToUpper(id) + "-00f067aa0ba902b7-01", ""},
		{"00-" + id + "-00f067aa0ba902b7", ""},
		{"", ""},
	} {
		got, err := ParseTraceparent(tc.in)
		if got != tc.want || (err == nil) != (tc.want != "") {
			t.Errorf("ParseTraceparent(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func FuzzParseTraceparent(f *testing.F) {
	f.Add("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	f.Add("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseTraceparent(s)
		if err != nil {
			return
		}
		if len(id) != 32 || !lowerHex(id) || allZero(id) || !strings.Contains(s, id) {
			t.Fatalf("ParseTraceparent(%q) = %q", s, id)
		}
	})
}

func TestTraceIDFromHeader(t *testing.T) {
	const id = "4bf92f3577b34da6a3ce929d0e0e4736"
	for _, tc := range []struct {
		name string
		h    http.Header
		want string
	}{
		{"w3c", http.Header{"Traceparent": {"00-" + id + "-00f067aa0ba902b7-01"}}, id},
		{"w3c wins over b3", http.Header{"Traceparent": {"00-" + id + "-00f067aa0ba902b7-01"}, "B3": {"a2fb4a1d1a96d312a2fb4a1d1a96d312-a2fb4a1d1a96d312-1"}}, id},
		{"bad w3c, b3 single", http.Header{"Traceparent": {"junk"}, "B3": {id + "-a2fb4a1d1a96d312-1"}}, id},
		{"b3 multi 64-bit", http.Header{"X-B3-Traceid": {"a2fb4a1d1a96d312"}}, "a2fb4a1d1a96d312"},
		{"b3 sampling only", http.Header{"B3": {"0"}}, ""},
		{"none", http.Header{}, ""},
	} {
		if got := TraceIDFromHeader(tc.h); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
	h := http.Header{"Traceparent": {"00-" + id + "-00f067aa0ba902b7-01"}}
	if n := testing.AllocsPerRun(100, func() { _ = TraceIDFromHeader(h) }); n != 0 {
		t.Errorf("TraceIDFromHeader allocates %v", n)
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Endpoint: "127.0.0.1:4317"}, "want http://host:port"},
		{Config{Endpoint: "ftp://x:1"}, "want http://host:port"},
		{Config{Endpoint: "http://127.0.0.1:4317", Protocol: "thrift"}, `protocol "thrift"`},
		{Config{Endpoint: "http://127.0.0.1:4317", SamplingPercent: 101}, "sampling"},
		{Config{Endpoint: "http://127.0.0.1:4317", SamplingPercent: math.NaN()}, "sampling"},
	} {
		_, err := New(context.Background(), tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "tracing: ") {
			t.Errorf("New(%+v) = %v; want an error with %q", tc.cfg, err, tc.want)
		}
	}
}

// TestSamplingChangesAtRunTime: the rate set later decides new traces;
// a sampled parent is followed whatever the rate.
func TestSamplingChangesAtRunTime(t *testing.T) {
	rcv := otlptest.Start(t)
	tr, err := New(context.Background(), Config{Endpoint: "http://" + rcv.GRPCAddr, SamplingPercent: 0})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Shutdown(context.Background())
	sampled := func(ctx context.Context) bool {
		_, s := tr.Start(ctx, "x", trace.SpanKindClient)
		defer s.End()
		return s.SpanContext().IsSampled()
	}
	if sampled(context.Background()) {
		t.Error("sampled at 0%")
	}
	tr.SetSamplingPercent(100)
	if !sampled(context.Background()) || tr.SamplingPercent() != 100 {
		t.Error("not sampled at 100%")
	}
	tr.SetSamplingPercent(0)
	parent, _ := tr.Extract(context.Background(), http.Header{"Traceparent": {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}})
	if !sampled(parent) {
		t.Error("a sampled parent was not followed at 0%")
	}
	var _ sdktrace.Sampler = tr.sampler
}
