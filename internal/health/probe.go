package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// A probe runs one check within ctx (which carries the timeout) and
// returns "" when it passed, else the reason it failed.
type probe interface {
	check(ctx context.Context) string
	close()
}

// newProbe returns the probe for s (after WithDefaults and Validate).
func newProbe(s Spec) (probe, error) {
	switch s.Type {
	case HTTP:
		return newHTTPProbe(s), nil
	case GRPC:
		return newGRPCProbe(s)
	}
	return tcpProbe{addr: s.Addr, timeout: s.Timeout}, nil
}

// tcpProbe passes when the app accepts a connection.
type tcpProbe struct {
	addr    string
	timeout time.Duration
}

func (p tcpProbe) check(ctx context.Context) string {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return dialReason(ctx, err, p.timeout)
	}
	c.Close()
	return ""
}

func (tcpProbe) close() {}

// dialReason is a failed connection's reason in a few bounded words.
func dialReason(ctx context.Context, err error, timeout time.Duration) string {
	var ne net.Error
	switch {
	case ctx.Err() != nil, errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout after " + timeout.String()
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connect refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	}
	return "connect failed: " + err.Error()
}

// httpProbe GETs the path on a fresh connection each time (a kept-alive
// one could pass while the app no longer accepts new ones); 2xx and 3xx
// pass, redirects are not followed.
type httpProbe struct {
	url     string
	timeout time.Duration
	client  *http.Client
}

func newHTTPProbe(s Spec) *httpProbe {
	tr := &http.Transport{DisableKeepAlives: true, Proxy: nil}
	return &httpProbe{
		url:     "http://" + s.Addr + s.Path,
		timeout: s.Timeout,
		client: &http.Client{
			Transport:     tr,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
}

func (p *httpProbe) check(ctx context.Context) string {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url, nil)
	if err != nil {
		return "bad request: " + err.Error()
	}
	req.Header.Set("User-Agent", "trellis-health/1")
	resp, err := p.client.Do(req)
	if err != nil {
		return dialReason(ctx, err, p.timeout)
	}
	// A little of the body is read so the app sees a clean close.
	_, _ = io.CopyN(io.Discard, resp.Body, 4096)
	resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode < 400 {
		return ""
	}
	return fmt.Sprintf("HTTP %d", resp.StatusCode)
}

func (p *httpProbe) close() { p.client.CloseIdleConnections() }

// grpcProbe asks grpc.health.v1.Health/Check over one kept connection
// (gRPC reconnects it itself); SERVING passes.
type grpcProbe struct {
	service string
	timeout time.Duration
	conn    *grpc.ClientConn
	client  healthpb.HealthClient
}

func newGRPCProbe(s Spec) (*grpcProbe, error) {
	conn, err := grpc.NewClient("passthrough:///"+s.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("health: grpc client for %s: %w", s.Addr, err)
	}
	return &grpcProbe{service: s.Path, timeout: s.Timeout, conn: conn, client: healthpb.NewHealthClient(conn)}, nil
}

func (p *grpcProbe) check(ctx context.Context) string {
	resp, err := p.client.Check(ctx, &healthpb.HealthCheckRequest{Service: p.service}, grpc.WaitForReady(false))
	if err != nil {
		return grpcReason(ctx, err, p.timeout)
	}
	if st := resp.GetStatus(); st != healthpb.HealthCheckResponse_SERVING {
		return "gRPC " + st.String()
	}
	return ""
}

func (p *grpcProbe) close() { _ = p.conn.Close() }

func grpcReason(ctx context.Context, err error, timeout time.Duration) string {
	st := status.Convert(err)
	switch {
	case ctx.Err() != nil || st.Code() == codes.DeadlineExceeded:
		return "timeout after " + timeout.String()
	case st.Code() == codes.Unimplemented:
		return "gRPC health service not implemented"
	case st.Code() == codes.NotFound:
		return "gRPC health: unknown service"
	case st.Code() == codes.Unavailable && errors.Is(err, syscall.ECONNREFUSED):
		return "connect refused"
	case st.Code() == codes.Unavailable && strings.Contains(st.Message(), "connection refused"):
		return "connect refused"
	}
	return "gRPC " + st.Code().String()
}
