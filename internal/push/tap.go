package push

import (
	"context"
	"errors"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// TapRelay is what the Tap stream needs of the tap hub (internal/tap): a
// proxy's stream joins with its service and gets that service's tap
// requests; its events are delivered under its node id. kicked closes when
// the stream must end (it could not keep up, or the node reconnected).
type TapRelay interface {
	Join(node, service string) (requests <-chan *meshv1.TapRequest, kicked <-chan struct{}, leave func())
	Deliver(node string, events *meshv1.TapEvents)
}

// Tap keeps a registered proxy's Tap stream: tap requests for its service
// out, its events in. The caller must be the node it names (as Watch
// checks), so a proxy reports only as itself, to taps of its own service.
func (m *meshService) Tap(stream grpc.BidiStreamingServer[meshv1.TapEvents, meshv1.TapRequest]) error {
	s := m.s
	if s.o.Tap == nil {
		return status.Error(codes.Unimplemented, "this control plane does not relay taps")
	}
	n, _, err := openNodeStream(s, stream) // the first message names the node only
	if err != nil || n == nil {
		return err
	}
	reqs, kicked, leave := s.o.Tap.Join(n.id, n.service+"."+n.namespace)
	defer leave()
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	recvErr := make(chan error, 1)
	go func() {
		for {
			msg, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			s.o.Tap.Deliver(n.id, msg)
		}
	}()
	for {
		select {
		case r := <-reqs:
			if err := stream.Send(r); err != nil {
				return err
			}
		case <-kicked:
			return status.Error(codes.ResourceExhausted, "tap stream replaced or too slow: reconnect")
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case <-s.done:
			return status.Error(codes.Unavailable, "control plane shutting down: reconnect")
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// OpenTap opens a Tap stream on the current connection, ended with ctx.
func (c *Client) OpenTap(ctx context.Context) (meshv1.Mesh_TapClient, error) {
	mesh, _ := c.current()
	if mesh == nil {
		return nil, errors.New("push: tap: client closed")
	}
	st, err := mesh.Tap(ctx)
	if err != nil {
		return nil, rpcError("tap", c.o.Addr, err)
	}
	return st, nil
}
