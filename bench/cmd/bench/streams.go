package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The gRPC streaming load: a bidirectional echo service compiled into the
// harness (no .proto: a hand-written ServiceDesc carrying BytesValue), and
// a client that keeps several streams busy, each sending one message and
// waiting for its echo before the next, so every message's round trip is
// one latency sample.

const (
	echoService = "trellis.bench.Echo"
	echoMethod  = "/" + echoService + "/Stream"
	// echoPayload is each message's size: a small RPC, not a bulk stream.
	echoPayload = 128
)

var echoStreamDesc = grpc.StreamDesc{StreamName: "Stream", ServerStreams: true, ClientStreams: true}

// echoServer is the streaming service's server on a loopback port.
type echoServer struct {
	addr string
	srv  *grpc.Server
}

func startEchoServer() (*echoServer, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("echo server: %w", err)
	}
	srv := grpc.NewServer()
	d := echoStreamDesc
	d.Handler = echoStream
	srv.RegisterService(&grpc.ServiceDesc{ServiceName: echoService, HandlerType: (*any)(nil), Streams: []grpc.StreamDesc{d}}, struct{}{})
	go func() { _ = srv.Serve(l) }()
	return &echoServer{addr: l.Addr().String(), srv: srv}, nil
}

func (e *echoServer) stop() { e.srv.Stop() }

// echoStream sends every message back until the client ends the stream.
func echoStream(_ any, stream grpc.ServerStream) error {
	m := new(wrapperspb.BytesValue)
	for {
		if err := stream.RecvMsg(m); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if err := stream.SendMsg(m); err != nil {
			return err
		}
	}
}

// streamResult is one streaming load.
type streamResult struct {
	messages int64
	elapsed  time.Duration
	lat      []time.Duration // sorted round trips
}

func (r streamResult) rate() float64 { return float64(r.messages) / r.elapsed.Seconds() }

// runStreams opens one connection to target and n streams on it, each
// echoing messages back to back for dur.
func runStreams(ctx context.Context, target string, n int, dur time.Duration) (streamResult, error) {
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return streamResult{}, fmt.Errorf("grpc stream: %w", err)
	}
	defer conn.Close()
	// A message that never comes back must not hang the run.
	ctx, cancel := context.WithTimeout(ctx, dur+10*time.Second)
	defer cancel()
	lats := make([][]time.Duration, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(dur)
	for i := range n {
		wg.Go(func() { lats[i], errs[i] = echoLoop(ctx, conn, deadline) })
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return streamResult{}, fmt.Errorf("grpc stream: %w", err)
	}
	all := slices.Concat(lats...)
	if len(all) == 0 {
		return streamResult{}, errors.New("grpc stream: no message came back")
	}
	sortDurations(all)
	return streamResult{messages: int64(len(all)), elapsed: elapsed, lat: all}, nil
}

// echoLoop is one stream: send, wait for the echo, until deadline.
func echoLoop(ctx context.Context, conn *grpc.ClientConn, deadline time.Time) ([]time.Duration, error) {
	s, err := conn.NewStream(ctx, &echoStreamDesc, echoMethod)
	if err != nil {
		return nil, err
	}
	out := &wrapperspb.BytesValue{Value: make([]byte, echoPayload)}
	in := new(wrapperspb.BytesValue)
	lat := make([]time.Duration, 0, 4096)
	for t0 := time.Now(); t0.Before(deadline); t0 = time.Now() {
		if err := s.SendMsg(out); err != nil {
			return lat, err
		}
		if err := s.RecvMsg(in); err != nil {
			return lat, err
		}
		if len(in.GetValue()) != echoPayload {
			return lat, fmt.Errorf("echo of %d bytes, want %d", len(in.GetValue()), echoPayload)
		}
		lat = append(lat, time.Since(t0))
	}
	if err := s.CloseSend(); err != nil {
		return lat, err
	}
	if err := s.RecvMsg(in); !errors.Is(err, io.EOF) {
		return lat, fmt.Errorf("end of stream: %v, want EOF", err)
	}
	return lat, nil
}

// percentile of sorted samples, nearest rank; 0 for none.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func ms(d time.Duration) float64 { return round(float64(d)/float64(time.Millisecond), 3) }

func sortDurations(d []time.Duration) { slices.Sort(d) }
