package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"text/tabwriter"
	"time"
)

// The protocol section: gRPC unary (fortio's ping client against fortio's
// ping server), gRPC bidirectional streaming (streams.go), opaque TCP bulk
// (bulk.go), each on the direct path and through one Trellis pair; then,
// on the same pair, the idle keep-alive connections (idle.go). The pair's
// server side fronts one Service with a port per protocol.

// protoService is the Service of the protocol pair: its first port is the
// fortio server's HTTP port (--app), the others the same host's ports.
const protoService = "bench-proto"

func protoServiceYAML(grpcPort, streamPort, tcpPort string) string {
	return fmt.Sprintf(`apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: %s}
spec:
  ports:
  - {name: http, port: 80, protocol: http}
  - {name: grpc, port: 9090, targetPort: %s, protocol: grpc}
  - {name: stream, port: 9091, targetPort: %s, protocol: grpc}
  - {name: tcp, port: 7000, targetPort: %s, protocol: tcp}
`, protoService, grpcPort, streamPort, tcpPort)
}

// Upstream keys of the protocol pair's client side.
var (
	upHTTP   = protoService
	upGRPC   = protoService + ":9090"
	upStream = protoService + ":9091"
	upTCP    = protoService + ":7000"
)

// grpcRow is one gRPC figure.
type grpcRow struct {
	Path string  `json:"path"` // direct or trellis
	Kind string  `json:"kind"` // unary or stream
	P50  float64 `json:"p50_ms"`
	P99  float64 `json:"p99_ms"`
	// RPS: unary, calls/s at max rate; stream, echoed messages/s.
	RPS        float64 `json:"max_rps"`
	CPUPerKReq float64 `json:"cpu_s_per_krps"` // both proxies, per 1,000 calls or messages
}

// tcpRow is one bulk transfer.
type tcpRow struct {
	Path      string  `json:"path"`
	MiB       float64 `json:"mib"`
	Seconds   float64 `json:"seconds"`
	MiBPerSec float64 `json:"mib_per_s"`
	CPUPerGiB float64 `json:"cpu_s_per_gib"` // both proxies
}

// protoReport is what the protocol section adds to latest.json.
type protoReport struct {
	GRPC []grpcRow   `json:"grpc,omitempty"`
	TCP  []tcpRow    `json:"tcp,omitempty"`
	Idle *idleResult `json:"idle_keepalive,omitempty"`
	// TCPRatio is trellis MiB/s over direct's.
	TCPRatio float64 `json:"tcp_ratio_vs_direct,omitempty"`
}

// protoTarget is where one path's protocol loads go.
type protoTarget struct {
	name              string
	grpc, stream, tcp string // host:port
	pids              []int  // proxies whose CPU is counted; none direct
}

// runProtocols runs the protocol section; it returns what it measured even
// when a later part fails.
func runProtocols(ctx context.Context, h *harness, s settings, log io.Writer) (protoReport, error) {
	var rep protoReport
	echo, err := startEchoServer()
	if err != nil {
		return rep, err
	}
	defer echo.stop()
	src, err := startBulkSource(s.tcpBytes)
	if err != nil {
		return rep, err
	}
	defer src.stop()

	fmt.Fprintf(log, "bench: protocols: direct: gRPC unary, gRPC streaming, TCP bulk\n")
	direct := protoTarget{name: "direct", grpc: h.serverGRPC, stream: echo.addr, tcp: src.addr}
	if err := protoLoads(ctx, h, s, direct, &rep); err != nil {
		return rep, fmt.Errorf("protocols: direct: %w", err)
	}

	fmt.Fprintf(log, "bench: protocols: trellis: gRPC unary, gRPC streaming, TCP bulk, then %d idle keep-alive connections\n", s.idleConns)
	sup := &supervisor{dir: h.dir}
	defer sup.stopAll()
	yaml := protoServiceYAML(portOf(h.serverGRPC), portOf(echo.addr), portOf(src.addr))
	pair, err := startTrellisPair(ctx, h, sup, trellisOpts{apply: yaml, service: protoService,
		upstreams: []string{upHTTP, upGRPC, upStream, upTCP}})
	if err != nil {
		return rep, fmt.Errorf("protocols: trellis: %w", err)
	}
	pids, err := withDescendants(pair.roots)
	if err != nil {
		return rep, err
	}
	tr := protoTarget{name: "trellis", grpc: pair.upstreams[upGRPC], stream: pair.upstreams[upStream], tcp: pair.upstreams[upTCP], pids: pids}
	if err := protoLoads(ctx, h, s, tr, &rep); err != nil {
		return rep, fmt.Errorf("protocols: trellis: %w", err)
	}
	if len(rep.TCP) == 2 && rep.TCP[0].MiBPerSec > 0 {
		rep.TCPRatio = round(rep.TCP[1].MiBPerSec/rep.TCP[0].MiBPerSec, 3)
	}
	if s.idleConns > 0 {
		idle, err := runIdle(ctx, s, pair)
		if err != nil {
			return rep, fmt.Errorf("protocols: trellis: %w", err)
		}
		rep.Idle = idle
	}
	return rep, nil
}

func portOf(hostport string) string {
	_, p, _ := strings.Cut(hostport, ":")
	return p
}

// protoLoads measures gRPC unary, gRPC streaming and TCP bulk on t.
func protoLoads(ctx context.Context, h *harness, s settings, t protoTarget, rep *protoReport) error {
	fixed, err := load(ctx, h.fortio, h.dir, loadSpec{name: "grpc-" + t.name + "-fixed", qps: s.fixedQPS, conns: s.fixedConns, dur: s.protoDuration, target: t.grpc, grpc: true})
	if err != nil {
		return err
	}
	var maxRun loadResult
	cpu, err := cpuAround(t.pids, func() error {
		var err error
		maxRun, err = load(ctx, h.fortio, h.dir, loadSpec{name: "grpc-" + t.name + "-max", conns: s.maxConns, dur: s.protoDuration, target: t.grpc, grpc: true})
		return err
	})
	if err != nil {
		return err
	}
	rep.GRPC = append(rep.GRPC, grpcRow{Path: t.name, Kind: "unary", P50: round(fixed.pctMS[50], 3), P99: round(fixed.pctMS[99], 3),
		RPS: round(maxRun.qps, 1), CPUPerKReq: perK(cpu, maxRun.requests, t.pids)})

	var st streamResult
	cpu, err = cpuAround(t.pids, func() error {
		var err error
		st, err = runStreams(ctx, t.stream, s.streams, s.protoDuration)
		return err
	})
	if err != nil {
		return err
	}
	rep.GRPC = append(rep.GRPC, grpcRow{Path: t.name, Kind: "stream", P50: ms(percentile(st.lat, 50)), P99: ms(percentile(st.lat, 99)),
		RPS: round(st.rate(), 1), CPUPerKReq: perK(cpu, st.messages, t.pids)})

	var b bulkResult
	cpu, err = cpuAround(t.pids, func() error {
		var err error
		b, err = readBulk(t.tcp, s.tcpBytes, s.tcpMax)
		return err
	})
	if err != nil {
		return err
	}
	row := tcpRow{Path: t.name, MiB: round(float64(b.bytes)/(1<<20), 1), Seconds: round(b.elapsed.Seconds(), 3), MiBPerSec: round(b.mbps(), 1)}
	if len(t.pids) > 0 {
		row.CPUPerGiB = round(cpu/(float64(b.bytes)/(1<<30)), 3)
	}
	rep.TCP = append(rep.TCP, row)
	return nil
}

// cpuAround is the CPU-seconds pids spend while f runs.
func cpuAround(pids []int, f func() error) (float64, error) {
	c0, err := cpuSeconds(pids)
	if err != nil {
		return 0, err
	}
	if err := f(); err != nil {
		return 0, err
	}
	c1, err := cpuSeconds(pids)
	if err != nil {
		return 0, err
	}
	return c1 - c0, nil
}

func perK(cpu float64, n int64, pids []int) float64 {
	if len(pids) == 0 || n <= 0 {
		return 0
	}
	return round(cpu/(float64(n)/1000), 4)
}

// runIdle holds s.idleConns keep-alive connections on the pair's client
// side's outbound port and measures it.
func runIdle(ctx context.Context, s settings, pair *trellisPair) (*idleResult, error) {
	client, server := pair.roots[1], pair.roots[0]
	before, err := rssBytes([]int{client})
	if err != nil {
		return nil, err
	}
	start := time.Now()
	conns, err := openHeld(ctx, pair.outbound, protoService, s.idleConns, 64)
	if err != nil {
		return nil, err
	}
	defer closeHeld(conns)
	opened := time.Since(start)
	// Let the proxy's per-connection goroutines reach their idle read.
	time.Sleep(time.Second)
	held, err := rssBytes([]int{client})
	if err != nil {
		return nil, err
	}
	heldAnon, err := statusSum([]int{client}, "RssAnon")
	if err != nil {
		return nil, err
	}
	peer, err := rssBytes([]int{server})
	if err != nil {
		return nil, err
	}
	lat, err := sampleHeld(conns, protoService, s.idleSample, rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 13)))
	if err != nil {
		return nil, err
	}
	return &idleResult{
		Connections: len(conns), Sidecar: "client-side (outbound port)",
		RSSBeforeMB: mb(before), RSSHeldMB: mb(held), AnonHeldMB: mb(heldAnon), PeerRSSMB: mb(peer),
		OpenSeconds: round(opened.Seconds(), 2), Sampled: len(lat),
		P50: ms(percentile(lat, 50)), P99: ms(percentile(lat, 99)),
	}, nil
}

func printProtocols(w io.Writer, rep protoReport) {
	if len(rep.GRPC)+len(rep.TCP) == 0 && rep.Idle == nil {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w)
	fmt.Fprintln(tw, "gRPC\tpath\tp50 ms\tp99 ms\tmax calls or msgs/s\tproxy CPU-s/1k\t")
	for _, g := range rep.GRPC {
		fmt.Fprintf(tw, "%s\t%s\t%.3f\t%.3f\t%.0f\t%.4f\t\n", g.Kind, g.Path, g.P50, g.P99, g.RPS, g.CPUPerKReq)
	}
	tw.Flush()
	fmt.Fprintln(w)
	fmt.Fprintln(tw, "TCP bulk\tMiB\ts\tMiB/s\tproxy CPU-s/GiB\t")
	for _, t := range rep.TCP {
		fmt.Fprintf(tw, "%s\t%.0f\t%.3f\t%.1f\t%.3f\t\n", t.Path, t.MiB, t.Seconds, t.MiBPerSec, t.CPUPerGiB)
	}
	tw.Flush()
	if rep.TCPRatio > 0 {
		fmt.Fprintf(w, "TCP through the pair: %.1f%% of direct (goal >= 50%%)\n", rep.TCPRatio*100)
	}
	if i := rep.Idle; i != nil {
		fmt.Fprintf(w, "\n%d idle keep-alive connections on the %s: RSS %.1f MB, %.1f of it anon (%.1f MB before; other half %.1f MB), opened in %.1fs;\n"+
			"  then one request on each of %d random ones, one at a time: p50 %.3f ms, p99 %.3f ms\n",
			i.Connections, i.Sidecar, i.RSSHeldMB, i.AnonHeldMB, i.RSSBeforeMB, i.PeerRSSMB, i.OpenSeconds, i.Sampled, i.P50, i.P99)
	}
}
