package dns

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"google.golang.org/protobuf/proto"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/config"
	"trellis.dev/trellis/internal/registry"
	"trellis.dev/trellis/internal/store"
	"trellis.dev/trellis/internal/view"
)

// testMesh is a real bolt store with a running view over it: what the
// control plane gives the DNS server.
type testMesh struct {
	t    testing.TB
	st   *store.Bolt
	view *view.View
	rev  int64
}

func newMesh(t testing.TB) *testMesh {
	t.Helper()
	st, err := store.NewBolt(filepath.Join(t.TempDir(), "store.db"), store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	v := view.New(st, view.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { v.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; st.Close() })
	return &testMesh{t: t, st: st, view: v}
}

// service stores a Service; ports are "name:port" or "port".
func (m *testMesh) service(ns, name string, ports ...string) {
	m.t.Helper()
	var ps []string
	for _, p := range ports {
		pname, num, named := strings.Cut(p, ":")
		if !named {
			ps = append(ps, fmt.Sprintf(`{"port":%s}`, p))
			continue
		}
		ps = append(ps, fmt.Sprintf(`{"name":%q,"port":%s}`, pname, num))
	}
	b := fmt.Appendf(nil, `{"apiVersion":"trellis.dev/v1alpha1","kind":"Service","metadata":{"name":%q,"namespace":%q},"spec":{"ports":[%s]}}`,
		name, ns, strings.Join(ps, ","))
	m.txn(store.Put(config.StoreKey(config.Ref{Kind: "Service", Namespace: ns, Name: name}), b, store.Any))
}

// endpoint stores an endpoint of ns/svc at addr (as the registry would,
// with app=<svc>).
func (m *testMesh) endpoint(ns, svc, id, addr string, healthy bool) {
	m.t.Helper()
	ep := &meshv1.Endpoint{Id: id, Service: svc, Namespace: ns, Address: addr, Healthy: healthy,
		Labels: map[string]string{"app": svc}}
	b, err := proto.Marshal(ep)
	if err != nil {
		m.t.Fatal(err)
	}
	m.txn(store.Put(registry.Key(ns, svc, id), b, store.Any))
}

func (m *testMesh) txn(ops ...store.Op) {
	m.t.Helper()
	rev, err := m.st.Txn(context.Background(), ops...)
	if err != nil {
		m.t.Fatal(err)
	}
	m.rev = rev
}

// state waits for the view to reflect every write so far.
func (m *testMesh) state() *view.State {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := m.view.WaitFor(ctx, m.rev)
	if err != nil {
		m.t.Fatal(err)
	}
	<-m.view.Ready()
	return st
}

// handlerFor is a handler answering from the mesh's current state.
func (m *testMesh) handler(fwd exchanger) *handler {
	m.t.Helper()
	idx := build(m.state(), true, buildOptions{origin: "trellis.local.", ttl: 5, log: discard()})
	return &handler{index: func() *index { return idx }, fwd: fwd, log: discard()}
}

// query is a plain recursive-desired query, as dig sends.
func query(name string, qtype uint16) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetQuestion(name, qtype)
	return m
}

// names returns the answer's data, as "A 127.0.0.1", "SRV 15001 target.".
func rdata(rrs []mdns.RR) []string {
	var out []string
	for _, rr := range rrs {
		switch r := rr.(type) {
		case *mdns.A:
			out = append(out, "A "+r.A.String())
		case *mdns.AAAA:
			out = append(out, "AAAA "+r.AAAA.String())
		case *mdns.SRV:
			out = append(out, fmt.Sprintf("SRV %d %s", r.Port, r.Target))
		case *mdns.SOA:
			out = append(out, "SOA "+r.Hdr.Name)
		case *mdns.NS:
			out = append(out, "NS "+r.Ns)
		case *mdns.OPT:
			out = append(out, "OPT")
		default:
			out = append(out, rr.String())
		}
	}
	return out
}
