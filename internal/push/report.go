package push

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// StatsSink is what the Report stream needs of the control plane's stats
// store (internal/stats): a node's report in, checked whole, and the newest
// window start held for the node out. own is the node's service
// ("name.namespace"), the only one it may report as the callee of; ttl is
// the node's lease: a node not heard from for that long is forgotten.
type StatsSink interface {
	Put(node, own string, ttl time.Duration, r *meshv1.StatsReport) (int64, error)
}

// Report keeps each report of a registered proxy and acknowledges it. The
// caller must be the node it names (as Watch checks). A report that fails
// the check ends the stream with INVALID_ARGUMENT naming the field; what
// the node sent before stays.
func (m *meshService) Report(stream grpc.BidiStreamingServer[meshv1.StatsReport, meshv1.StatsAck]) error {
	s := m.s
	if s.o.Stats == nil {
		return status.Error(codes.Unimplemented, "this control plane keeps no stats")
	}
	n, first, err := openNodeStream(s, stream)
	if err != nil || n == nil {
		return err
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	go func() {
		select {
		case <-s.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	for req := first; ; {
		through, err := s.o.Stats.Put(n.id, n.service+"."+n.namespace, max(n.ttl, s.o.MaxTTL), req)
		if err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
		if err := stream.Send(&meshv1.StatsAck{ThroughUnix: through}); err != nil {
			return err
		}
		if req, err = recvUntil(ctx, stream.Recv); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// recvUntil is recv, or UNAVAILABLE once ctx ends (shutdown).
func recvUntil[T any](ctx context.Context, recv func() (*T, error)) (*T, error) {
	type result struct {
		r   *T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		r, err := recv()
		ch <- result{r, err}
	}()
	select {
	case res := <-ch:
		return res.r, res.err
	case <-ctx.Done():
		return nil, status.Error(codes.Unavailable, "control plane shutting down: reconnect")
	}
}

// OpenReport opens a Report stream on the current connection, ended with ctx.
func (c *Client) OpenReport(ctx context.Context) (meshv1.Mesh_ReportClient, error) {
	mesh, _ := c.current()
	if mesh == nil {
		return nil, errors.New("push: report: client closed")
	}
	st, err := mesh.Report(ctx)
	if err != nil {
		return nil, rpcError("report", c.o.Addr, err)
	}
	return st, nil
}
