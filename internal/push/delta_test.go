package push

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

func svc(name string, addrs ...string) *meshv1.Service {
	s := &meshv1.Service{Name: name, Namespace: "default", Ports: []*meshv1.Port{{Name: "http", Port: 80}}}
	for i, a := range addrs {
		s.Endpoints = append(s.Endpoints, &meshv1.Endpoint{Id: fmt.Sprintf("%s-%d", name, i), Service: name, Namespace: "default", Address: a, Healthy: true})
	}
	return s
}

func snapOf(version string, svcs ...*meshv1.Service) *meshv1.Snapshot {
	return &meshv1.Snapshot{Version: version, TrustDomain: "trellis.local", TrustBundle: [][]byte{[]byte("root")},
		Inbound: &meshv1.Service{Name: "web", Namespace: "default"}, Services: svcs, Revision: 7}
}

func names(svcs []*meshv1.Service) []string {
	var out []string
	for _, s := range svcs {
		out = append(out, ServiceKey(s))
	}
	return out
}

func TestDiffSnapshot(t *testing.T) {
	a, b, c := svc("a", "10.0.0.1:1"), svc("b", "10.0.0.2:1"), svc("c", "10.0.0.3:1")
	base := baseOf(snapOf("v1", a, b, c))
	tests := []struct {
		name        string
		next        *meshv1.Snapshot
		wantNil     bool
		wantChanged []string
		wantRemoved []string
		wantBundle  bool // the delta carries the bundle (it changed)
	}{
		{name: "one endpoint changed", next: snapOf("v2", a, svc("b", "10.0.0.2:1", "10.0.0.9:1"), c), wantChanged: []string{"b.default"}},
		{name: "added", next: snapOf("v2", a, b, c, svc("d")), wantChanged: []string{"d.default"}},
		{name: "removed", next: snapOf("v2", a, c), wantRemoved: []string{"b.default"}},
		{name: "added and removed", next: snapOf("v2", a, svc("d")), wantChanged: []string{"d.default"}, wantRemoved: []string{"b.default", "c.default"}},
		// Only a top-level field moved (the inbound policy, the bundle).
		{name: "no service changed", next: snapOf("v2", a, b, c)},
		// Equal content in new messages (a recompiled index) is unchanged.
		{name: "equal copies", next: snapOf("v2", svc("a", "10.0.0.1:1"), svc("b", "10.0.0.2:1"), c)},
		// The bundle is left out when unchanged, so even this is smaller.
		{name: "all changed", next: snapOf("v2", svc("a"), svc("b"), svc("c")), wantChanged: []string{"a.default", "b.default", "c.default"}},
		{name: "all changed, new bundle: full is as small", next: withBundle(snapOf("v2", svc("a"), svc("b"), svc("c")), "root2"), wantNil: true},
		{name: "bundle emptied: a delta cannot say so", next: withBundle(snapOf("v2", a, b, c)), wantNil: true},
		{name: "bundle rotated", next: withBundle(snapOf("v2", a, b, svc("c")), "root", "root2"), wantChanged: []string{"c.default"}, wantBundle: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := diffSnapshot(base, tt.next)
			if tt.wantNil {
				if d != nil {
					t.Fatalf("delta = %v, want nil (send full)", d)
				}
				return
			}
			if d == nil {
				t.Fatal("delta = nil, want one")
			}
			if !d.GetIncremental() || d.GetVersion() != "v2" || d.GetRevision() != 7 || d.GetInbound().GetName() != "web" {
				t.Fatalf("delta top level = %v", d)
			}
			if got := names(d.GetServices()); !slices.Equal(got, tt.wantChanged) {
				t.Errorf("changed = %v, want %v", got, tt.wantChanged)
			}
			if got := len(d.GetTrustBundle()) > 0; got != tt.wantBundle {
				t.Errorf("delta carries the bundle: %v, want %v", got, tt.wantBundle)
			}
			if got := d.GetRemovedServices(); !slices.Equal(got, tt.wantRemoved) {
				t.Errorf("removed = %v, want %v", got, tt.wantRemoved)
			}
			if tt.next.GetIncremental() || len(tt.next.GetServices()) == 0 {
				t.Error("diff modified its input")
			}
			// Merging it onto the base gives back the full snapshot.
			merged, err := ApplyDelta(snapOf("v1", a, b, c), d)
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(merged, tt.next) {
				t.Fatalf("merged = %v\nwant %v", merged, tt.next)
			}
		})
	}
}

func withBundle(s *meshv1.Snapshot, roots ...string) *meshv1.Snapshot {
	s.TrustBundle = nil
	for _, r := range roots {
		s.TrustBundle = append(s.TrustBundle, []byte(r))
	}
	return s
}

func TestApplyDeltaRefuses(t *testing.T) {
	base := snapOf("v1", svc("a"), svc("b"))
	delta := func(f func(d *meshv1.Snapshot)) *meshv1.Snapshot {
		d := snapOf("v2")
		d.Incremental = true
		f(d)
		return d
	}
	tests := []struct {
		name  string
		base  *meshv1.Snapshot
		delta *meshv1.Snapshot
		want  string
	}{
		{name: "no base", delta: delta(func(*meshv1.Snapshot) {}), want: ErrNoBase.Error()},
		{name: "removed unknown", base: base, delta: delta(func(d *meshv1.Snapshot) { d.RemovedServices = []string{"zz.default"} }),
			want: `removed_services: "zz.default" is not in the base snapshot v1`},
		{name: "changed and removed", base: base, delta: delta(func(d *meshv1.Snapshot) {
			d.Services = []*meshv1.Service{svc("a")}
			d.RemovedServices = []string{"a.default"}
		}), want: `services[0]: "a.default" is also in removed_services`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ApplyDelta(tt.base, tt.delta)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
	if _, err := ApplyDelta(nil, delta(func(*meshv1.Snapshot) {})); !errors.Is(err, ErrNoBase) {
		t.Fatalf("no base: %v is not ErrNoBase", err)
	}
	if len(base.GetServices()) != 2 {
		t.Fatal("ApplyDelta modified its base")
	}
}

// FuzzDelta: for any two service sets, the delta merged onto the first is
// the second (the server's diff and the proxy's merge agree).
func FuzzDelta(f *testing.F) {
	f.Add([]byte("abc"), []byte("abd"))
	f.Add([]byte(""), []byte("a"))
	f.Add([]byte("aAbB"), []byte("ab"))
	f.Fuzz(func(t *testing.T, from, to []byte) {
		build := func(spec []byte) *meshv1.Snapshot {
			// Each byte is a service: its low 3 bits name it, the rest is
			// its endpoint's port; later bytes replace earlier ones.
			m := map[string]*meshv1.Service{}
			for _, b := range spec {
				name := string(rune('a' + b&7))
				m[name] = svc(name, fmt.Sprintf("10.0.0.1:%d", b>>3+1))
			}
			var out []*meshv1.Service
			for _, k := range slices.Sorted(func(yield func(string) bool) {
				for k := range m {
					if !yield(k) {
						return
					}
				}
			}) {
				out = append(out, m[k])
			}
			return snapOf(string(spec), out...)
		}
		base, next := build(from), build(to)
		d := diffSnapshot(baseOf(base), next)
		if d == nil {
			d = next
		}
		got, err := ApplyDelta(base, d)
		if err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(got, next) {
			t.Fatalf("merged %v\nwant %v", got, next)
		}
	})
}

// meshSnapshots serves every node the same services, versioned by content
// like the compiler; set replaces one service, remove drops it.
type meshSnapshots struct {
	mu   sync.Mutex
	svcs map[string]*meshv1.Service
	rev  int64
	subs []chan struct{}
}

func newMeshSnapshots(svcs ...*meshv1.Service) *meshSnapshots {
	m := &meshSnapshots{svcs: map[string]*meshv1.Service{}, rev: 1}
	for _, s := range svcs {
		m.svcs[ServiceKey(s)] = s
	}
	return m
}

func (m *meshSnapshots) full() *meshv1.Snapshot {
	m.mu.Lock()
	defer m.mu.Unlock()
	snap := snapOf("")
	snap.Revision = m.rev
	h := sha256.New()
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range m.svcs {
			if !yield(k) {
				return
			}
		}
	}) {
		snap.Services = append(snap.Services, m.svcs[k])
		b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(m.svcs[k])
		h.Write(b)
	}
	snap.Version = hex.EncodeToString(h.Sum(nil)[:8])
	return snap
}

func (m *meshSnapshots) Snapshot(context.Context, Node) (*meshv1.Snapshot, error) {
	return m.full(), nil
}

func (m *meshSnapshots) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	m.mu.Lock()
	m.subs = append(m.subs, ch)
	m.mu.Unlock()
	return ch, func() {}
}

func (m *meshSnapshots) change(f func(svcs map[string]*meshv1.Service)) {
	m.mu.Lock()
	f(m.svcs)
	m.rev++
	for _, ch := range m.subs {
		poke(ch)
	}
	m.mu.Unlock()
}

// deltaProxy records the whole snapshots Apply got and can refuse some.
type deltaProxy struct {
	applied chan *meshv1.Snapshot
	mu      sync.Mutex
	refuse  int // refuse this many more snapshots
}

func (p *deltaProxy) apply(s *meshv1.Snapshot) error {
	p.applied <- s
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.refuse > 0 {
		p.refuse--
		return errors.New("route web/r: bad regex")
	}
	return nil
}

func (p *deltaProxy) next(t *testing.T) *meshv1.Snapshot {
	t.Helper()
	select {
	case s := <-p.applied:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("no snapshot applied")
		return nil
	}
}

func startDeltaEnv(t *testing.T, full bool, svcs ...*meshv1.Service) (*env, *meshSnapshots, *deltaProxy) {
	t.Helper()
	ms := newMeshSnapshots(svcs...)
	e := startEnv(t, newTestCA(t), "127.0.0.1:0", func(o *ServerOptions) { o.Snapshots = ms })
	c := e.dial(t, e.ca.workloadCert(t, spiffe("default", "web"), time.Time{}))
	p := &deltaProxy{applied: make(chan *meshv1.Snapshot, 100)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- c.RunSession(ctx, SessionOptions{Endpoint: endpoint("web-1", "web"), Heartbeat: time.Second, Apply: p.apply, FullSnapshots: full})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("RunSession: %v", err)
		}
	})
	return e, ms, p
}

func meshOf(n int) []*meshv1.Service {
	var out []*meshv1.Service
	for i := range n {
		out = append(out, svc(fmt.Sprintf("s%02d", i), fmt.Sprintf("10.0.%d.1:8080", i), fmt.Sprintf("10.0.%d.2:8080", i)))
	}
	return out
}

func equalButNonce(a, b *meshv1.Snapshot) bool {
	a, b = shallowCopy(a), shallowCopy(b)
	a.Nonce, b.Nonce = "", ""
	return proto.Equal(a, b)
}

// TestIncrementalPush: over real gRPC, a change to one service's endpoints
// after an ACK goes out as a delta of that service alone, exactly the size
// of the expected delta, and the proxy applies the whole merged snapshot.
func TestIncrementalPush(t *testing.T) {
	e, ms, p := startDeltaEnv(t, false, meshOf(20)...)
	first := p.next(t)
	if !equalButNonce(first, ms.full()) {
		t.Fatal("first snapshot is not the full one")
	}
	waitState(t, e.srv, "web-1", StateSynced, first.GetVersion())
	before := e.srv.Counters()

	ms.change(func(m map[string]*meshv1.Service) {
		m["s07.default"] = svc("s07", "10.0.7.1:8080", "10.0.7.2:8080", "10.0.7.3:8080")
	})
	got := p.next(t)
	want := ms.full()
	if !equalButNonce(got, want) {
		t.Fatalf("applied %v\nwant the full %v", got, want)
	}
	waitState(t, e.srv, "web-1", StateSynced, want.GetVersion())
	eventually(t, "the push counted", func() bool { return e.srv.Counters().Pushes > before.Pushes })
	after := e.srv.Counters()
	if after.Incremental-before.Incremental != 1 || after.Pushes-before.Pushes != 1 {
		t.Fatalf("pushes %d, incremental %d; want one delta", after.Pushes-before.Pushes, after.Incremental-before.Incremental)
	}
	wire := shallowCopy(want)
	wire.Services = []*meshv1.Service{want.Services[7]}
	wire.TrustBundle = nil // unchanged
	wire.Incremental, wire.Nonce = true, got.GetNonce()
	sent := after.PushedBytes - before.PushedBytes
	if sent != uint64(proto.Size(wire)) {
		t.Fatalf("delta was %d bytes, want %d (one service)", sent, proto.Size(wire))
	}
	if fullSize := proto.Size(want); int(sent)*5 > fullSize {
		t.Fatalf("delta %d bytes is not much smaller than the full snapshot's %d", sent, fullSize)
	}
	t.Logf("one endpoint added: delta %d bytes, full snapshot %d bytes", sent, proto.Size(want))

	// A removal is a delta too.
	ms.change(func(m map[string]*meshv1.Service) { delete(m, "s03.default") })
	got = p.next(t)
	waitState(t, e.srv, "web-1", StateSynced, got.GetVersion())
	if want := ms.full(); !equalButNonce(got, want) || len(got.Services) != 19 {
		t.Fatalf("after removal applied %d services, want the full 19", len(got.Services))
	}
	if c := e.srv.Counters(); c.Incremental-before.Incremental != 2 {
		t.Fatalf("removal: incremental pushes %d, want 2", c.Incremental-before.Incremental)
	}
}

// TestOldProxyGetsFullSnapshots: a proxy that does not ask for deltas never
// gets one.
func TestOldProxyGetsFullSnapshots(t *testing.T) {
	e, ms, p := startDeltaEnv(t, true, meshOf(5)...)
	first := p.next(t)
	waitState(t, e.srv, "web-1", StateSynced, first.GetVersion())
	ms.change(func(m map[string]*meshv1.Service) { m["s01.default"] = svc("s01") })
	p.next(t)
	waitState(t, e.srv, "web-1", StateSynced, ms.full().GetVersion())
	if c := e.srv.Counters(); c.Incremental != 0 || c.Pushes != 2 {
		t.Fatalf("counters %+v; want 2 full pushes to a proxy that did not ask for deltas", c)
	}
}

// rawDeltaWatch opens a raw Watch stream of node web-1 that asks for deltas;
// recv fails unless the next snapshot's incremental flag is wantIncr, and
// answer ACKs (errMsg "") or NACKs it. Snapshots arrive on in.
func rawDeltaWatch(t *testing.T, ms *meshSnapshots) (e *env, in <-chan *meshv1.Snapshot, recv func(wantIncr bool) *meshv1.Snapshot, answer func(s *meshv1.Snapshot, errMsg string)) {
	t.Helper()
	e = startEnv(t, newTestCA(t), "127.0.0.1:0", func(o *ServerOptions) { o.Snapshots = ms })
	mesh := rawWatch(t, e, e.ca.workloadCert(t, spiffe("default", "web"), time.Time{}))
	if _, err := mesh.Register(context.Background(), &meshv1.RegisterRequest{Endpoint: endpoint("web-1", "web")}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ws, err := mesh.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ws.Send(&meshv1.WatchRequest{NodeId: "web-1", SupportsIncremental: true}); err != nil {
		t.Fatal(err)
	}
	ch := make(chan *meshv1.Snapshot, 10)
	go func() {
		defer close(ch)
		for {
			s, err := ws.Recv()
			if err != nil {
				return
			}
			ch <- s
		}
	}()
	recv = func(wantIncr bool) *meshv1.Snapshot {
		t.Helper()
		var s *meshv1.Snapshot
		select {
		case s = <-ch:
		case <-time.After(10 * time.Second):
		}
		if s == nil {
			t.Fatal("no snapshot")
		}
		if s.GetIncremental() != wantIncr {
			t.Fatalf("snapshot %s incremental = %v, want %v", s.GetVersion(), s.GetIncremental(), wantIncr)
		}
		return s
	}
	answer = func(s *meshv1.Snapshot, errMsg string) {
		t.Helper()
		nacks := e.srv.Counters().Nacks
		if err := ws.Send(&meshv1.WatchRequest{Version: s.GetVersion(), Nonce: s.GetNonce(), Error: errMsg}); err != nil {
			t.Fatal(err)
		}
		if errMsg == "" {
			waitState(t, e.srv, "web-1", StateSynced, s.GetVersion())
		} else {
			eventually(t, "the NACK", func() bool { return e.srv.Counters().Nacks == nacks+1 })
		}
	}
	return e, ch, recv, answer
}

// TestRefusedDelta: a delta the proxy could not merge (no base) is resent
// whole at once; one whose result the proxy found invalid is not (the whole
// snapshot is as invalid), and the next change goes out whole.
func TestRefusedDelta(t *testing.T) {
	ms := newMeshSnapshots(meshOf(5)...)
	e, in, recv, answer := rawDeltaWatch(t, ms)
	answer(recv(false), "")

	ms.change(func(m map[string]*meshv1.Service) { m["s01.default"] = svc("s01") })
	d := recv(true)
	answer(d, ErrNoBase.Error())
	if again := recv(false); again.GetVersion() != d.GetVersion() {
		t.Fatalf("resent %s, want the refused delta's version %s whole", again.GetVersion(), d.GetVersion())
	} else {
		answer(again, "")
	}

	ms.change(func(m map[string]*meshv1.Service) { m["s02.default"] = svc("s02") })
	answer(recv(true), "route web/r: bad regex")
	// Nothing is resent: a bounded wait for what must not come.
	select {
	case s := <-in:
		t.Fatalf("after an invalid delta the server resent %s at once", s.GetVersion())
	case <-time.After(300 * time.Millisecond):
	}
	ms.change(func(m map[string]*meshv1.Service) { m["s03.default"] = svc("s03") })
	if s := recv(false); len(s.GetServices()) != 5 {
		t.Fatalf("after a refused delta: %d services, want the whole 5", len(s.GetServices()))
	}
	// Counted after Send returns, which may be after the proxy has it.
	eventually(t, "5 pushes", func() bool { return e.srv.Counters().Pushes == 5 })
	if c := e.srv.Counters(); c.Incremental != 2 || c.Nacks != 2 {
		t.Fatalf("counters %+v; want 5 pushes, 2 of them deltas, 2 NACKs", c)
	}
}

// TestNoDeltaBeforeAck: the server bases a delta only on a snapshot the
// proxy ACKed. A snapshot sent while the previous one is unanswered, or
// after a NACK, is full, so a proxy never gets a delta onto what it does
// not run.
func TestNoDeltaBeforeAck(t *testing.T) {
	ms := newMeshSnapshots(meshOf(5)...)
	_, _, recv, answer := rawDeltaWatch(t, ms)
	recv(false) // the first on a stream is full
	ms.change(func(m map[string]*meshv1.Service) { m["s01.default"] = svc("s01") })
	s2 := recv(false) // the first is unanswered
	answer(s2, "bad")
	ms.change(func(m map[string]*meshv1.Service) { m["s02.default"] = svc("s02") })
	s3 := recv(false) // after a NACK
	answer(s3, "")
	ms.change(func(m map[string]*meshv1.Service) { m["s03.default"] = svc("s03") })
	if s4 := recv(true); len(s4.GetServices()) != 1 || ServiceKey(s4.GetServices()[0]) != "s03.default" {
		t.Fatalf("delta after the ACK carries %v, want [s03.default]", names(s4.GetServices()))
	}
}

// TestApplyDeltaKeepsOrder: a base in the compiler's order stays in it
// (added services take their place); any other order is kept, changed
// services in place and added ones last.
func TestApplyDeltaKeepsOrder(t *testing.T) {
	delta := snapOf("v2", svc("b", "10.0.0.9:1"), svc("c"))
	delta.Incremental = true
	for _, tt := range []struct {
		base []*meshv1.Service
		want []string
	}{
		{[]*meshv1.Service{svc("a"), svc("b"), svc("d")}, []string{"a.default", "b.default", "c.default", "d.default"}},
		{[]*meshv1.Service{svc("d"), svc("b"), svc("a")}, []string{"d.default", "b.default", "a.default", "c.default"}},
	} {
		got, err := ApplyDelta(snapOf("v1", tt.base...), delta)
		if err != nil {
			t.Fatal(err)
		}
		if n := names(got.GetServices()); !slices.Equal(n, tt.want) {
			t.Errorf("merged onto %v: %v, want %v", names(tt.base), n, tt.want)
		}
		if len(got.GetServices()[slices.Index(names(got.GetServices()), "b.default")].GetEndpoints()) != 1 {
			t.Error("b was not replaced by its changed version")
		}
	}
}
