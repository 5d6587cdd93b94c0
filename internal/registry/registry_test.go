package registry

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"google.golang.org/protobuf/proto"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/store"
	"trellis.dev/trellis/internal/store/storetest"
)

func newStore(t *testing.T) *store.Bolt {
	t.Helper()
	return storetest.OpenBolt(t, store.BoltOptions{LeaseCheckInterval: 100 * time.Millisecond})
}

func endpoint(id, svc string) *meshv1.Endpoint {
	return &meshv1.Endpoint{
		Id: id, Service: svc, Namespace: "default", Address: "127.0.0.1:15006",
		Labels: map[string]string{"version": "v1"}, Identity: "spiffe://trellis.local/ns/default/sa/" + svc,
		Healthy: true,
	}
}

func ids(t *testing.T, r *Registry) []string {
	t.Helper()
	eps, err := r.Endpoints(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, ep := range eps {
		out = append(out, ep.Namespace+"/"+ep.Service+"/"+ep.Id)
	}
	return out
}

func TestRegisterStoresEndpointWithAppLabel(t *testing.T) {
	st := newStore(t)
	r := New(st, nil)
	ep := endpoint("p1", "orders")
	lease, ttl, err := r.Register(t.Context(), ep, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if lease == 0 || ttl != 5*time.Second {
		t.Fatalf("lease %d ttl %v, want nonzero lease and 5s", lease, ttl)
	}
	kv, err := st.Get(t.Context(), "/registry/endpoints/default/orders/p1")
	if err != nil {
		t.Fatal(err)
	}
	if kv.Lease != store.LeaseID(lease) {
		t.Errorf("key lease %d, want %d", kv.Lease, lease)
	}
	got, err := Decode(kv.Value)
	if err != nil {
		t.Fatal(err)
	}
	if got.Labels["app"] != "orders" || got.Labels["version"] != "v1" || got.Address != ep.Address {
		t.Errorf("stored %v", got)
	}
	if _, ok := ep.Labels["app"]; ok {
		t.Error("Register modified the caller's endpoint")
	}
}

func TestRegisterRejectsInvalid(t *testing.T) {
	r := New(newStore(t), nil)
	tests := []struct {
		name string
		mod  func(*meshv1.Endpoint)
		want string
	}{
		{"no id", func(e *meshv1.Endpoint) { e.Id = "" }, "id: required"},
		{"no service", func(e *meshv1.Endpoint) { e.Service = "" }, "service: required"},
		{"slash in service", func(e *meshv1.Endpoint) { e.Service = "a/b" }, `service: "a/b" is not a valid name`},
		{"slash in id", func(e *meshv1.Endpoint) { e.Id = "a/b" }, "must not contain"},
		// Accepted before the registry used meshname's label rule:
		{"upper-case service", func(e *meshv1.Endpoint) { e.Service = "Orders" }, `service: "Orders" is not a valid name`},
		{"underscore in service", func(e *meshv1.Endpoint) { e.Service = "orders_v2" }, `'_' is not allowed`},
		{"dot in namespace", func(e *meshv1.Endpoint) { e.Namespace = "shop.eu" }, `namespace: "shop.eu" is not a valid name`},
		{"long namespace", func(e *meshv1.Endpoint) { e.Namespace = strings.Repeat("n", 64) }, "longer than 63"},
		{"no namespace", func(e *meshv1.Endpoint) { e.Namespace = "" }, "namespace: required"},
		{"no address", func(e *meshv1.Endpoint) { e.Address = "" }, "address: required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ep := endpoint("p1", "orders")
			tt.mod(ep)
			_, _, err := r.Register(t.Context(), ep, time.Second)
			if !errors.Is(err, ErrInvalidEndpoint) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want ErrInvalidEndpoint containing %q", err, tt.want)
			}
		})
	}
	if _, _, err := r.Register(t.Context(), nil, time.Second); !errors.Is(err, ErrInvalidEndpoint) {
		t.Fatalf("nil endpoint: %v", err)
	}
	if got := ids(t, r); len(got) != 0 {
		t.Fatalf("invalid registrations left %v", got)
	}
}

func TestClampTTL(t *testing.T) {
	for _, tt := range []struct{ in, want time.Duration }{
		{0, DefaultTTL}, {-time.Second, DefaultTTL}, {time.Millisecond, MinTTL},
		{12500 * time.Millisecond, 12500 * time.Millisecond}, {time.Hour, MaxTTL},
	} {
		if got := ClampTTL(tt.in); got != tt.want {
			t.Errorf("ClampTTL(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestReRegisterReplaces(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st := newStore(t)
		r := New(st, nil)
		ctx := t.Context()
		first, _, err := r.Register(ctx, endpoint("p1", "orders"), 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		ep := endpoint("p1", "orders")
		ep.Address = "127.0.0.1:25006"
		second, _, err := r.Register(ctx, ep, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if first == second {
			t.Fatal("re-register reused the lease")
		}
		// The old lease is gone and its expiry must not take the new key.
		if err := r.Heartbeat(ctx, first); !errors.Is(err, ErrLeaseExpired) {
			t.Errorf("heartbeat on replaced lease: %v, want ErrLeaseExpired", err)
		}
		time.Sleep(3 * time.Second)
		synctest.Wait()
		eps, err := r.Endpoints(ctx)
		if err != nil || len(eps) != 1 || eps[0].Address != "127.0.0.1:25006" {
			t.Fatalf("endpoints %v, %v; want the second registration only", eps, err)
		}

		// Moving the id to another service leaves no stale key.
		if _, _, err := r.Register(ctx, endpoint("p1", "payments"), 10*time.Second); err != nil {
			t.Fatal(err)
		}
		if got := ids(t, r); len(got) != 1 || got[0] != "default/payments/p1" {
			t.Fatalf("after move: %v", got)
		}
	})
}

func TestHeartbeatKeepsAliveAndExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st := newStore(t)
		r := New(st, nil)
		ctx := t.Context()
		kept, _, err := r.Register(ctx, endpoint("kept", "orders"), 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := r.Register(ctx, endpoint("dropped", "orders"), 2*time.Second); err != nil {
			t.Fatal(err)
		}
		// Heartbeat "kept" every second for 6s; "dropped" never heartbeats.
		for range 6 {
			time.Sleep(time.Second)
			if err := r.Heartbeat(ctx, kept); err != nil {
				t.Fatalf("heartbeat: %v", err)
			}
		}
		synctest.Wait()
		if got := ids(t, r); len(got) != 1 || got[0] != "default/orders/kept" {
			t.Fatalf("after 6s: %v, want only the heart-beating endpoint", got)
		}
		// Stop heart-beating: gone within the TTL plus one check interval.
		time.Sleep(2*time.Second + 200*time.Millisecond)
		synctest.Wait()
		if got := ids(t, r); len(got) != 0 {
			t.Fatalf("after expiry: %v", got)
		}
		err = r.Heartbeat(ctx, kept)
		if !errors.Is(err, ErrLeaseExpired) {
			t.Fatalf("heartbeat after expiry: %v, want ErrLeaseExpired", err)
		}
		if err := r.Heartbeat(ctx, 0); !errors.Is(err, ErrLeaseExpired) {
			t.Fatalf("heartbeat lease 0: %v", err)
		}
	})
}

func TestDeregister(t *testing.T) {
	r := New(newStore(t), nil)
	lease, _, err := r.Register(t.Context(), endpoint("p1", "orders"), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Deregister(t.Context(), lease); err != nil {
		t.Fatal(err)
	}
	if got := ids(t, r); len(got) != 0 {
		t.Fatalf("after deregister: %v", got)
	}
	if err := r.Deregister(t.Context(), lease); err != nil {
		t.Fatalf("second deregister: %v", err)
	}
}

func TestEndpointsOrderedAndStoreErrors(t *testing.T) {
	st := newStore(t)
	r := New(st, nil)
	for _, e := range []*meshv1.Endpoint{endpoint("b", "orders"), endpoint("a", "orders"), endpoint("z", "cart")} {
		if _, _, err := r.Register(t.Context(), e, 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"default/cart/z", "default/orders/a", "default/orders/b"}
	if got := ids(t, r); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("got %v want %v", got, want)
	}
	st.Close()
	if _, _, err := r.Register(context.Background(), endpoint("c", "orders"), time.Second); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("register on closed store: %v", err)
	}
	if err := r.Heartbeat(context.Background(), 1); err == nil || errors.Is(err, ErrLeaseExpired) {
		t.Fatalf("heartbeat on closed store: %v, want a store error, not expiry", err)
	}
}

func TestParseKey(t *testing.T) {
	ns, svc, id, err := ParseKey(Key("prod", "orders", "p-1"))
	if err != nil || ns != "prod" || svc != "orders" || id != "p-1" {
		t.Fatalf("got %q %q %q %v", ns, svc, id, err)
	}
	for _, bad := range []string{"/resources/x", "/registry/endpoints/a/b", "/registry/endpoints/a//c", "/registry/endpoints/a/b/c/d"} {
		if _, _, _, err := ParseKey(bad); err == nil {
			t.Errorf("ParseKey(%q) succeeded", bad)
		}
	}
}

func FuzzDecode(f *testing.F) {
	b, _ := proto.Marshal(endpoint("p1", "orders"))
	f.Add(b)
	f.Add([]byte{0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		ep, err := Decode(data)
		if err == nil && ep == nil {
			t.Fatal("nil endpoint without error")
		}
	})
}
