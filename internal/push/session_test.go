package push

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// fakeMesh is an in-memory control plane for the session's timing logic,
// so it can run inside a synctest bubble (no network).
type fakeMesh struct {
	mu           sync.Mutex
	registerErrs []error // returned by successive Register calls, then success
	hbErr        func(n int) error
	registers    []time.Time
	ttls         []int64
	heartbeats   []time.Time
	hbLeases     []int64
	// regHealth and hbHealth are the verdicts sent, "healthy:reason".
	regHealth, hbHealth []string
}

func (f *fakeMesh) Certify(context.Context, *meshv1.CertifyRequest, ...grpc.CallOption) (*meshv1.CertifyResponse, error) {
	return nil, status.Error(codes.Unimplemented, "fake")
}

func (f *fakeMesh) Register(_ context.Context, in *meshv1.RegisterRequest, _ ...grpc.CallOption) (*meshv1.RegisterResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.registers = append(f.registers, time.Now())
	f.ttls = append(f.ttls, in.GetTtlSeconds())
	f.regHealth = append(f.regHealth, fmt.Sprintf("%v:%s", in.GetEndpoint().GetHealthy(), in.GetEndpoint().GetHealthReason()))
	if len(f.registerErrs) > 0 {
		err := f.registerErrs[0]
		f.registerErrs = f.registerErrs[1:]
		return nil, err
	}
	return &meshv1.RegisterResponse{LeaseId: int64(len(f.registers)), TtlSeconds: in.GetTtlSeconds()}, nil
}

func (f *fakeMesh) Heartbeat(_ context.Context, in *meshv1.HeartbeatRequest, _ ...grpc.CallOption) (*meshv1.HeartbeatResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.heartbeats = append(f.heartbeats, time.Now())
	f.hbLeases = append(f.hbLeases, in.GetLeaseId())
	f.hbHealth = append(f.hbHealth, fmt.Sprintf("%v:%s", in.GetHealthy(), in.GetHealthReason()))
	if f.hbErr != nil {
		if err := f.hbErr(len(f.heartbeats)); err != nil {
			return nil, err
		}
	}
	return &meshv1.HeartbeatResponse{}, nil
}

// Watch hangs until the session ends: these tests are about the lease.
func (f *fakeMesh) Quota(context.Context, ...grpc.CallOption) (grpc.BidiStreamingClient[meshv1.QuotaReport, meshv1.QuotaGrant], error) {
	return nil, status.Error(codes.Unimplemented, "fake")
}

func (f *fakeMesh) Tap(context.Context, ...grpc.CallOption) (grpc.BidiStreamingClient[meshv1.TapEvents, meshv1.TapRequest], error) {
	return nil, status.Error(codes.Unimplemented, "fake")
}

func (f *fakeMesh) Report(context.Context, ...grpc.CallOption) (grpc.BidiStreamingClient[meshv1.StatsReport, meshv1.StatsAck], error) {
	return nil, status.Error(codes.Unimplemented, "fake")
}

func (f *fakeMesh) Watch(ctx context.Context, _ ...grpc.CallOption) (grpc.BidiStreamingClient[meshv1.WatchRequest, meshv1.Snapshot], error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func fakeClient(m meshv1.MeshClient) *Client {
	return &Client{o: ClientOptions{Addr: "fake"}, log: slog.New(slog.DiscardHandler), mesh: m, resub: make(chan struct{}, 1)}
}

func noApply(*meshv1.Snapshot) error { return nil }

func TestSessionRegisterBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		down := status.Error(codes.Unavailable, "connection refused")
		m := &fakeMesh{registerErrs: []error{down, down, down, down, down, down, down, down, down}}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() {
			done <- fakeClient(m).RunSession(ctx, SessionOptions{Endpoint: endpoint("orders-1", "orders"), Apply: noApply})
		}()
		time.Sleep(time.Minute)
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("RunSession: %v", err)
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		if len(m.registers) != 10 {
			t.Fatalf("register attempts = %d, want 10 (9 failures then success)", len(m.registers))
		}
		var prev time.Duration
		for i := 1; i < len(m.registers); i++ {
			gap := m.registers[i].Sub(m.registers[i-1])
			ideal := min(minBackoff<<(i-1), maxBackoff)
			if gap < ideal/2 || gap > ideal {
				t.Errorf("gap %d = %s, want within [%s, %s]", i, gap, ideal/2, ideal)
			}
			if i > 6 && gap < prev/2 {
				t.Errorf("gap %d = %s shrank from %s", i, gap, prev)
			}
			prev = gap
		}
		if m.ttls[0] != 12 {
			t.Errorf("requested ttl = %ds, want 12 (2.5×5s, rounded down)", m.ttls[0])
		}
		// Heartbeats every 5s after registration, for the rest of the minute.
		want := int(time.Minute-m.registers[9].Sub(m.registers[0])) / int(DefaultHeartbeat)
		if got := len(m.heartbeats); got < want-1 || got > want {
			t.Errorf("heartbeats = %d, want about %d", got, want)
		}
	})
}

func TestSessionHeartbeatNotFound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := &fakeMesh{hbErr: func(n int) error {
			if n == 3 {
				return status.Error(codes.NotFound, "lease expired")
			}
			if n == 5 {
				return status.Error(codes.Unavailable, "blip")
			}
			return nil
		}}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		start := time.Now()
		go func() {
			done <- fakeClient(m).RunSession(ctx, SessionOptions{Endpoint: endpoint("orders-1", "orders"), Heartbeat: 2 * time.Second, Apply: noApply})
		}()
		time.Sleep(13 * time.Second)
		synctest.Wait()
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		// Registered at 0; heartbeats at 2, 4, 6 (NOT_FOUND → register at 6),
		// 8, 10 (unavailable: no re-register), 12.
		if len(m.registers) != 2 || m.registers[1].Sub(start) != 6*time.Second {
			t.Fatalf("registers at %v, want [0s 6s]", m.registers)
		}
		if m.ttls[0] != 5 {
			t.Errorf("ttl = %d, want 5", m.ttls[0])
		}
		wantLeases := []int64{1, 1, 1, 2, 2, 2}
		if len(m.hbLeases) != len(wantLeases) {
			t.Fatalf("heartbeat leases = %v, want %v", m.hbLeases, wantLeases)
		}
		for i := range wantLeases {
			if m.hbLeases[i] != wantLeases[i] {
				t.Fatalf("heartbeat leases = %v, want %v", m.hbLeases, wantLeases)
			}
		}
	})
}

func TestSessionPermanentErrors(t *testing.T) {
	tests := []struct {
		name string
		o    SessionOptions
		err  error
		want string
	}{
		{name: "no endpoint", o: SessionOptions{Apply: noApply}, want: "endpoint required"},
		{name: "no apply", o: SessionOptions{Endpoint: endpoint("a", "orders")}, want: "apply func required"},
		{name: "invalid endpoint", o: SessionOptions{Endpoint: endpoint("a", "orders"), Apply: noApply},
			err: status.Error(codes.InvalidArgument, "endpoint.address: bad"), want: "endpoint.address"},
		{name: "not ours", o: SessionOptions{Endpoint: endpoint("a", "orders"), Apply: noApply},
			err: status.Error(codes.PermissionDenied, "endpoint.namespace: no"), want: "endpoint.namespace"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				m := &fakeMesh{}
				if tt.err != nil {
					m.registerErrs = []error{tt.err}
				}
				err := fakeClient(m).RunSession(t.Context(), tt.o)
				if err == nil || !errors.Is(err, ErrRejected) && tt.err != nil || !contains(err.Error(), tt.want) {
					t.Fatalf("err = %v; want %q", err, tt.want)
				}
			})
		})
	}
}

func TestBackoffBounds(t *testing.T) {
	var b expBackoff
	for i := range 40 {
		d := b.next()
		ideal := min(minBackoff<<min(i, 16), maxBackoff)
		if d < ideal/2 || d > ideal || d > maxBackoff {
			t.Fatalf("attempt %d: %s outside [%s, %s]", i, d, ideal/2, ideal)
		}
	}
	b.reset()
	if d := b.next(); d > minBackoff {
		t.Fatalf("after reset: %s", d)
	}
}

// TestSessionHealthChange: the session registers with the app's verdict
// and sends a heartbeat carrying a new verdict at once, not at the next
// lease tick.
func TestSessionHealthChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := &fakeMesh{}
		var mu sync.Mutex
		healthy, reason := false, "no check passed yet"
		changed := make(chan struct{}, 1)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() {
			done <- fakeClient(m).RunSession(ctx, SessionOptions{
				Endpoint: endpoint("orders-1", "orders"), Apply: noApply,
				Health: func() (bool, string) {
					mu.Lock()
					defer mu.Unlock()
					return healthy, reason
				},
				HealthChanged: changed,
			})
		}()
		time.Sleep(1500 * time.Millisecond)
		mu.Lock()
		healthy, reason = true, ""
		mu.Unlock()
		changed <- struct{}{}
		synctest.Wait()
		start := time.Now()
		m.mu.Lock()
		if len(m.regHealth) != 1 || m.regHealth[0] != "false:no check passed yet" {
			t.Errorf("registered with %v, want unhealthy, no check passed yet", m.regHealth)
		}
		if len(m.hbHealth) != 1 || m.hbHealth[0] != "true:" {
			t.Errorf("heartbeats right after the change: %v, want one, healthy", m.hbHealth)
		}
		m.mu.Unlock()
		time.Sleep(DefaultHeartbeat - time.Since(start) + time.Millisecond)
		synctest.Wait()
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		// The tick was reset by the change: the next heartbeat is a full
		// interval after it.
		if len(m.hbHealth) != 2 || m.heartbeats[1].Sub(m.heartbeats[0]) != DefaultHeartbeat {
			t.Errorf("heartbeats at %v, want the next one %s after the change", m.heartbeats, DefaultHeartbeat)
		}
	})
}
