package main

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sync/atomic"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
)

// The Trellis paths with observability on: tracing at 100% sampling to an
// OTLP/gRPC sink in this process, and access logs to a file in the temp
// dir. Both run the same two proxies as the trellis path, so the rows of
// one run compare what each feature costs.

func extraFor(extra func(string) []string, half string) []string {
	if extra == nil {
		return nil
	}
	return extra(half)
}

func startTrellisTracing(ctx context.Context, h *harness, sup *supervisor) (string, []int, error) {
	if h.otlp == nil {
		s, err := startOTLPSink()
		if err != nil {
			return "", nil, err
		}
		h.otlp = s
	}
	return startTrellisWith(ctx, h, sup, "", func(string) []string {
		return []string{"--trace-endpoint", "http://" + h.otlp.addr, "--trace-sampling", "100"}
	})
}

func startTrellisAccessLog(ctx context.Context, h *harness, sup *supervisor) (string, []int, error) {
	return startTrellisWith(ctx, h, sup, "", func(half string) []string {
		return []string{"--access-log", filepath.Join(h.dir, "access-"+half+".log")}
	})
}

// otlpSink is an OTLP/gRPC TraceService that counts and discards spans,
// standing in for a collector; its CPU is not counted as the proxies'.
type otlpSink struct {
	collectortrace.UnimplementedTraceServiceServer
	addr  string
	srv   *grpc.Server
	spans atomic.Int64
}

func startOTLPSink() (*otlpSink, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("otlp sink: %w", err)
	}
	s := &otlpSink{addr: l.Addr().String(), srv: grpc.NewServer()}
	collectortrace.RegisterTraceServiceServer(s.srv, s)
	go func() { _ = s.srv.Serve(l) }()
	return s, nil
}

func (s *otlpSink) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			s.spans.Add(int64(len(ss.GetSpans())))
		}
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

func (s *otlpSink) stop() { s.srv.Stop() }
