package push

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// replicas starts n control planes sharing one registry and one snapshot
// source, as replicas on one store do; each names itself r1, r2...
func replicas(t *testing.T, ca *testCA, n int) []*env {
	t.Helper()
	reg, snaps := newFakeRegistry(), newFakeSnapshots("v")
	out := make([]*env, n)
	for i := range out {
		name := "r" + string(rune('1'+i))
		out[i] = startEnv(t, ca, "127.0.0.1:0", func(o *ServerOptions) {
			o.Registry, o.Snapshots, o.Replica = reg, snaps, name
		})
		out[i].reg, out[i].snaps = reg, snaps
	}
	return out
}

// attachedTo is the replica whose server has node's Watch stream.
func attachedTo(envs []*env, node string) *env {
	for _, e := range envs {
		if _, ok := statusOf(e.srv, node); ok {
			return e
		}
	}
	return nil
}

// onlyLease is the lease of the one registration.
func (r *fakeRegistry) onlyLease() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	for l := range r.leases {
		return l
	}
	return 0
}

func (r *fakeRegistry) heartbeats(lease int64) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.beats[lease]
}

// TestFailoverKeepsLeaseAndConfig: a proxy given every replica's address
// moves, when its replica dies abruptly, to another one: it keeps its
// lease (no new registration), is not sent its unchanged config again,
// heart-beats through the new replica and gets the next change from it.
func TestFailoverKeepsLeaseAndConfig(t *testing.T) {
	ca := newTestCA(t)
	envs := replicas(t, ca, 3)
	addrs := make([]string, len(envs))
	for i, e := range envs {
		addrs[i] = e.addr
	}
	dialer := *envs[0]
	dialer.addr = strings.Join(addrs, ",")
	p, c := runProxy(t, &dialer, "orders-1", "orders", 100*time.Millisecond)
	p.expect(t, "v0|orders.default")

	var first *env
	eventually(t, "a replica with the stream", func() bool { first = attachedTo(envs, "orders-1"); return first != nil })
	waitState(t, first.srv, "orders-1", StateSynced, "v0|orders.default")
	if got := c.Replica(); got != first.srv.o.Replica {
		t.Fatalf("client says it is attached to %q, the stream is on %q", got, first.srv.o.Replica)
	}
	_, eps, _ := first.reg.stats()
	if len(eps) != 1 {
		t.Fatalf("endpoints = %d, want 1", len(eps))
	}
	lease := first.reg.onlyLease()

	first.grpc.Stop() // abrupt: connections cut, listener closed
	start := time.Now()
	var next *env
	eventually(t, "re-attach to another replica", func() bool {
		next = attachedTo(envs, "orders-1")
		return next != nil && next != first
	})
	st := waitState(t, next.srv, "orders-1", StateSynced, "v0|orders.default")
	t.Logf("re-attached to %s in %s", st.Replica, time.Since(start))
	if st.Replica != next.srv.o.Replica {
		t.Fatalf("status replica = %q, want %q", st.Replica, next.srv.o.Replica)
	}
	if n, _, _ := next.reg.stats(); n != 1 {
		t.Fatalf("registrations = %d, want 1: the new replica adopts the lease", n)
	}
	if got := next.srv.Counters().Pushes; got != 0 {
		t.Fatalf("pushes from the new replica = %d, want 0 (config unchanged)", got)
	}
	select {
	case v := <-p.applied:
		t.Fatalf("applied %q again after failover", v)
	default:
	}
	beats := next.reg.heartbeats(lease)
	eventually(t, "heartbeats on the same lease", func() bool { return next.reg.heartbeats(lease) >= beats+3 })
	eventually(t, "client names the new replica", func() bool { return c.Replica() == next.srv.o.Replica })

	next.snaps.bump(true)
	p.expect(t, "v1|orders.default")
	waitState(t, next.srv, "orders-1", StateSynced, "v1|orders.default")
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.replica != next.srv.o.Replica {
		t.Fatalf("snapshot names replica %q, want %q", p.replica, next.srv.o.Replica)
	}
}

func TestParseAddrs(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
		err  string
	}{
		{in: "127.0.0.1:15010", want: []string{"127.0.0.1:15010"}},
		{in: "a:1, b:2 ,c:3", want: []string{"a:1", "b:2", "c:3"}},
		{in: "[::1]:1,[::1]:2", want: []string{"[::1]:1", "[::1]:2"}},
		{in: "", err: "required"},
		{in: "a:1,", err: "address 2"},
		{in: "a", err: "want host:port"},
		{in: ":1", err: "host required"},
		{in: "a:0", err: "1-65535"},
		{in: "a:http", err: "1-65535"},
		{in: "a:1,a:1", err: "listed twice"},
		{in: strings.Repeat("a:1,", 16) + "a:1", err: "at most 16"},
	} {
		got, err := ParseAddrs(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseAddrs(%q) = %v, %v; want error with %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || strings.Join(got, " ") != strings.Join(tc.want, " ") {
			t.Errorf("ParseAddrs(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

// TestAdoptChecksIdentity: a replica adopts a registration made through
// another only for the identity that made it, looked up in the caller's
// own namespace.
func TestAdoptChecksIdentity(t *testing.T) {
	ca := newTestCA(t)
	envs := replicas(t, ca, 2)
	om := rawWatch(t, envs[0], ca.workloadCert(t, spiffe("default", "orders"), time.Time{}))
	if _, err := om.Register(context.Background(), &meshv1.RegisterRequest{Endpoint: endpoint("orders-1", "orders")}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, id, want string
	}{
		{"another identity", spiffe("default", "payments"), "PermissionDenied"},
		{"another namespace", spiffe("prod", "orders"), "not registered"},
		{"the same identity", spiffe("default", "orders"), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := rawWatch(t, envs[1], ca.workloadCert(t, tc.id, time.Time{}))
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			s, err := m.Watch(ctx)
			if err != nil {
				t.Fatal(err)
			}
			_ = s.Send(&meshv1.WatchRequest{NodeId: "orders-1"})
			snap, err := s.Recv()
			if tc.want == "" {
				if err != nil || snap.GetReplica() != "r2" {
					t.Fatalf("adopted watch: %v, %v; want a snapshot from r2", snap, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v; want %q", err, tc.want)
			}
		})
	}
}

// flakyRegistry fails heart-beats and registrations while fail is set, as
// a replica whose store is unreachable does.
type flakyRegistry struct {
	*fakeRegistry
	fail *atomic.Bool
}

func (f flakyRegistry) Heartbeat(ctx context.Context, lease int64) error {
	if f.fail.Load() {
		return errors.New("etcd: context deadline exceeded")
	}
	return f.fakeRegistry.Heartbeat(ctx, lease)
}

func (f flakyRegistry) Register(ctx context.Context, ep *meshv1.Endpoint, ttl time.Duration) (int64, time.Duration, error) {
	if f.fail.Load() {
		return 0, 0, errors.New("etcd: context deadline exceeded")
	}
	return f.fakeRegistry.Register(ctx, ep, ttl)
}

// TestFailoverFromReplicaThatCannotServe: a replica that is up but fails
// heart-beats (its store is gone) is left for another before the lease
// runs out; the lease carries on there.
func TestFailoverFromReplicaThatCannotServe(t *testing.T) {
	ca := newTestCA(t)
	reg, snaps := newFakeRegistry(), newFakeSnapshots("v")
	fails := []*atomic.Bool{{}, {}}
	envs := make([]*env, 2)
	for i := range envs {
		envs[i] = startEnv(t, ca, "127.0.0.1:0", func(o *ServerOptions) {
			o.Registry, o.Snapshots, o.Replica = flakyRegistry{reg, fails[i]}, snaps, fmt.Sprintf("r%d", i+1)
		})
		envs[i].reg, envs[i].snaps = reg, snaps
	}
	dialer := *envs[0]
	dialer.addr = envs[0].addr + "," + envs[1].addr
	p, _ := runProxy(t, &dialer, "orders-1", "orders", 100*time.Millisecond)
	p.expect(t, "v0|orders.default")
	var first *env
	eventually(t, "a replica with the stream", func() bool { first = attachedTo(envs, "orders-1"); return first != nil })
	lease := reg.onlyLease()

	fails[slices.Index(envs, first)].Store(true)
	eventually(t, "the proxy on the other replica", func() bool {
		n := attachedTo(envs, "orders-1")
		return n != nil && n != first
	})
	beats := reg.heartbeats(lease)
	eventually(t, "heartbeats on the same lease", func() bool { return reg.heartbeats(lease) >= beats+3 })
	if n, _, _ := reg.stats(); n != 1 {
		t.Fatalf("registrations = %d, want 1", n)
	}
}

func TestAvoidingPutsAddressLast(t *testing.T) {
	addrs := []string{"a:1", "b:1", "c:1"}
	for range 20 {
		got := avoiding(addrs, "b:1")
		if len(got) != 3 || got[2] != "b:1" || !slices.Contains(got, "a:1") || !slices.Contains(got, "c:1") {
			t.Fatalf("avoiding b = %v", got)
		}
	}
	if got := avoiding(addrs, "z:1"); len(got) != 3 {
		t.Fatalf("avoiding an unknown address = %v, want all three", got)
	}
	if got := configuredAddr([]string{"localhost:1", "127.0.0.2:2"}, "127.0.0.1:1"); got != "localhost:1" {
		t.Fatalf("configuredAddr = %q, want localhost:1 (resolved)", got)
	}
}
