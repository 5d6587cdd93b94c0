package push

import (
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// QuotaAllocator is what the Quota stream needs of the global rate-limit
// allocator (internal/quota): a replica's demands in, its shares out; id is
// one stream, so a proxy that reconnects is a new replica and its old
// stream's demand is forgotten when that stream ends.
type QuotaAllocator interface {
	Report(id string, demands []*meshv1.QuotaDemand) *meshv1.QuotaGrant
	Forget(id string)
}

// Quota answers each report of a registered proxy with its shares. The
// caller must be the node it names (as Watch checks).
func (m *meshService) Quota(stream grpc.BidiStreamingServer[meshv1.QuotaReport, meshv1.QuotaGrant]) error {
	s := m.s
	if s.o.Quota == nil {
		return status.Error(codes.Unimplemented, "this control plane does not allocate global rate limits")
	}
	n, first, err := openNodeStream(s, stream)
	if err != nil || n == nil {
		return err
	}
	id := fmt.Sprintf("%s#%s", n.id, s.nextNonce())
	defer s.o.Quota.Forget(id)
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
		if err := stream.Send(s.o.Quota.Report(id, req.GetDemands())); err != nil {
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

// OpenQuota opens a Quota stream on the current connection, ended with ctx.
func (c *Client) OpenQuota(ctx context.Context) (meshv1.Mesh_QuotaClient, error) {
	mesh, _ := c.current()
	if mesh == nil {
		return nil, errors.New("push: quota: client closed")
	}
	st, err := mesh.Quota(ctx)
	if err != nil {
		return nil, rpcError("quota", c.o.Addr, err)
	}
	return st, nil
}
