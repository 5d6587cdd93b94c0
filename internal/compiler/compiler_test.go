package compiler

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/config"
	"trellis.dev/trellis/internal/registry"
	"trellis.dev/trellis/internal/store"
	"trellis.dev/trellis/internal/store/storetest"
	"trellis.dev/trellis/internal/view"
)

// env is a compiler on a view of a real bolt store, inside a synctest
// bubble.
type env struct {
	t   *testing.T
	st  *store.Bolt
	reg *registry.Registry
	v   *view.View
	c   *Compiler
}

// start runs a view of st and a compiler on it until the test ends.
func start(t *testing.T, st store.Store) (*view.View, *Compiler) {
	v := view.New(st, view.Options{})
	c := New(v, Options{
		TrustDomain: "trellis.local",
		Domain:      "trellis.local",
		Bundle:      func() [][]byte { return [][]byte{[]byte("root")} },
	})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { v.Run(ctx) })
	wg.Go(func() { c.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	return v, c
}

func newEnv(t *testing.T) *env {
	t.Helper()
	st := storetest.OpenBolt(t, store.BoltOptions{})
	v, c := start(t, st)
	return &env{t: t, st: st, reg: registry.New(st, nil), v: v, c: c}
}

// apply decodes YAML and stores every object; mod may adjust objects first.
func (e *env) apply(yaml string, mod ...func(config.Object)) {
	e.t.Helper()
	objs, err := config.Decode("test.yaml", []byte(yaml))
	if err != nil {
		e.t.Fatal(err)
	}
	var ops []store.Op
	for _, o := range objs {
		for _, m := range mod {
			m(o)
		}
		b, err := config.Encode(o)
		if err != nil {
			e.t.Fatal(err)
		}
		ops = append(ops, store.Put(config.StoreKey(o.Ref()), b, store.Any))
	}
	if _, err := e.st.Txn(context.Background(), ops...); err != nil {
		e.t.Fatal(err)
	}
	synctest.Wait()
}

func (e *env) delete(kind, ns, name string) {
	e.t.Helper()
	key := config.StoreKey(config.Ref{Kind: kind, Namespace: ns, Name: name})
	if _, err := e.st.Txn(context.Background(), store.Delete(key, store.Any)); err != nil {
		e.t.Fatal(err)
	}
	synctest.Wait()
}

func (e *env) register(id, svc, ns string, healthy bool, labels ...string) {
	e.t.Helper()
	l := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		l[labels[i]] = labels[i+1]
	}
	ep := &meshv1.Endpoint{Id: id, Service: svc, Namespace: ns, Address: "127.0.0.1:" + id, Labels: l, Healthy: healthy}
	if _, _, err := e.reg.Register(context.Background(), ep, time.Minute); err != nil {
		e.t.Fatal(err)
	}
	synctest.Wait()
}

func (e *env) snap(svc, ns string, subs ...string) *meshv1.Snapshot {
	e.t.Helper()
	s, err := e.c.Snapshot(context.Background(), Node{ID: svc + "-1", Service: svc, Namespace: ns, Subscriptions: subs})
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

func names(s *meshv1.Snapshot) string {
	var out []string
	for _, svc := range s.Services {
		out = append(out, svc.Name+"."+svc.Namespace)
	}
	return strings.Join(out, ",")
}

func service(t *testing.T, s *meshv1.Snapshot, name, ns string) *meshv1.Service {
	t.Helper()
	for _, svc := range s.Services {
		if svc.Name == name && svc.Namespace == ns {
			return svc
		}
	}
	t.Fatalf("service %s.%s not in snapshot (has %s)", name, ns, names(s))
	return nil
}

func endpointIDs(svc *meshv1.Service) string {
	var out []string
	for _, ep := range svc.Endpoints {
		out = append(out, ep.Id)
	}
	return strings.Join(out, ",")
}

func portsString(ps []*meshv1.Port) string {
	var out []string
	for _, p := range ps {
		out = append(out, fmt.Sprintf("%s:%d->%d/%s", p.Name, p.Port, p.TargetPort, p.Protocol))
	}
	return strings.Join(out, ",")
}

func routesString(svc *meshv1.Service) string {
	var out []string
	for _, r := range svc.Routes {
		m := r.Matches[0]
		s := fmt.Sprintf("%s %s:%s", r.Name, m.Path.Type, m.Path.Value)
		if m.Method != "" {
			s += " " + m.Method
		}
		for _, h := range m.Headers {
			s += fmt.Sprintf(" %s=%s", h.Name, h.Value)
		}
		for _, q := range m.QueryParams {
			s += fmt.Sprintf(" ?%s=%s", q.Name, q.Value)
		}
		if r.Port != 0 {
			s += fmt.Sprintf(" port=%d", r.Port)
		}
		var bs []string
		for _, b := range r.Backends {
			bs = append(bs, fmt.Sprintf("%s.%s:%d*%d", b.Service, b.Namespace, b.Port, b.Weight))
		}
		out = append(out, s+" -> "+strings.Join(bs, "+"))
	}
	return strings.Join(out, "\n")
}

func TestDefaultServiceWithoutResources(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		e.register("o1", "orders", "default", true)
		e.register("o2", "orders", "default", false)
		e.register("x1", "orders", "other", true)
		s := e.snap("orders", "default")
		if s.TrustDomain != "trellis.local" || s.Domain != "trellis.local" || len(s.TrustBundle) != 1 || s.Version == "" {
			t.Fatalf("snapshot header: td %q domain %q bundle %d version %q", s.TrustDomain, s.Domain, len(s.TrustBundle), s.Version)
		}
		if got, want := portsString(s.Inbound.Ports), "http:80->0/HTTP"; got != want {
			t.Errorf("inbound ports %s, want %s", got, want)
		}
		if s.Inbound.Name != "orders" || len(s.Inbound.Endpoints) != 0 {
			t.Errorf("inbound %v", s.Inbound)
		}
		if got := names(s); got != "orders.default" {
			t.Fatalf("services %s", got)
		}
		orders := s.Services[0]
		// Unhealthy o2 and o1's namesake in another namespace are excluded.
		if got := endpointIDs(orders); got != "o1" {
			t.Errorf("endpoints %s, want o1", got)
		}
		if len(orders.Routes) != 0 {
			t.Errorf("routes %v", orders.Routes)
		}

		// A subscription to a service nobody registered and nobody declared:
		// present, default port, no endpoints (the proxy answers 503).
		s = e.snap("orders", "default", "ghost.default")
		ghost := service(t, s, "ghost", "default")
		if len(ghost.Endpoints) != 0 || portsString(ghost.Ports) != "http:80->0/HTTP" {
			t.Errorf("ghost %v", ghost)
		}
	})
}

func TestServiceResourcePortsAndSelector(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		e.apply(`
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: inventory}
spec:
  ports:
  - {name: grpc, port: 9090, targetPort: 50051, protocol: grpc}
  - {name: metrics, port: 9100, protocol: http}
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: inventory-v1}
spec:
  selector: {app: inventory, version: v1}
  ports: [{name: http, port: 80}]
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: inventory-v2}
spec:
  selector: {app: inventory, version: v2}
  ports: [{name: http, port: 80}]
`)
		e.register("i1", "inventory", "default", true, "version", "v1")
		e.register("i2", "inventory", "default", true, "version", "v2")
		e.register("i3", "inventory", "default", true, "version", "v2")
		e.register("i4", "inventory", "default", false, "version", "v2")
		e.register("f1", "frontend", "default", true, "version", "v1")

		s := e.snap("inventory", "default")
		if got, want := portsString(s.Inbound.Ports), "grpc:9090->50051/GRPC,metrics:9100->9100/HTTP"; got != want {
			t.Errorf("inbound ports %s, want %s", got, want)
		}
		s = e.snap("frontend", "default", "inventory.default", "inventory-v1.default", "inventory-v2")
		if got, want := names(s), "frontend.default,inventory.default,inventory-v1.default,inventory-v2.default"; got != want {
			t.Fatalf("services %s, want %s", got, want)
		}
		for _, tt := range []struct{ svc, want string }{
			{"inventory", "i1,i2,i3"}, {"inventory-v1", "i1"}, {"inventory-v2", "i2,i3"}, {"frontend", "f1"},
		} {
			if got := endpointIDs(service(t, s, tt.svc, "default")); got != tt.want {
				t.Errorf("%s endpoints %s, want %s", tt.svc, got, tt.want)
			}
		}
	})
}

const splitRoute = `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: inventory-split}
spec:
  parentRefs: [{kind: Service, group: "", name: inventory, port: 80}]
  rules:
  - backendRefs:
    - {name: inventory-v1, port: 80, weight: 90}
    - {name: inventory-v2, port: 80, weight: 10}
`

func TestTransitiveBackendsAndScoping(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		e.apply(splitRoute)
		e.apply(`
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: v2-to-warehouse}
spec:
  parentRefs: [{kind: Service, name: inventory-v2}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /stock}}]
    backendRefs: [{name: warehouse, namespace: ops, port: 8080}]
  - backendRefs: [{name: inventory-v2}]
`)
		e.register("i1", "inventory", "default", true, "version", "v1")
		e.register("w1", "warehouse", "ops", true)
		e.register("p1", "payments", "default", true)

		// payments did not subscribe to inventory: none of it is there.
		s := e.snap("payments", "default")
		if got := names(s); got != "payments.default" {
			t.Fatalf("payments without subscriptions got %s", got)
		}
		s = e.snap("frontend", "default", "inventory.default")
		if got, want := names(s), "frontend.default,inventory.default,inventory-v1.default,inventory-v2.default,warehouse.ops"; got != want {
			t.Fatalf("services %s, want %s", got, want)
		}
		inv := service(t, s, "inventory", "default")
		if got, want := routesString(inv), "default/inventory-split/rules[0] PREFIX:/ port=80 -> inventory-v1.default:80*90+inventory-v2.default:80*10"; got != want {
			t.Errorf("routes\n%s\nwant\n%s", got, want)
		}
		if got := endpointIDs(service(t, s, "warehouse", "ops")); got != "w1" {
			t.Errorf("warehouse endpoints %q", got)
		}
		// Subscribing to the middle of the chain pulls only what follows it.
		s = e.snap("payments", "default", "inventory-v2.default")
		if got, want := names(s), "inventory-v2.default,payments.default,warehouse.ops"; got != want {
			t.Fatalf("services %s, want %s", got, want)
		}
	})
}

func TestRouteCycleTerminates(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		e.apply(`
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: a-to-b}
spec:
  parentRefs: [{kind: Service, name: a}]
  rules: [{backendRefs: [{name: b, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: b-to-a}
spec:
  parentRefs: [{kind: Service, name: b}]
  rules: [{backendRefs: [{name: a, port: 80}]}]
`)
		s := e.snap("c", "default", "a.default")
		if got, want := names(s), "a.default,b.default,c.default"; got != want {
			t.Fatalf("services %s, want %s", got, want)
		}
	})
}

func TestRoutePrecedence(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		at := func(ts time.Time) func(config.Object) {
			return func(o config.Object) {
				o.(*config.HTTPRoute).CreationTimestamp = metav1.NewTime(ts)
			}
		}
		// Newest route first in the store, to show age and not store order decides.
		e.apply(`
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: newer}
spec:
  parentRefs: [{kind: Service, name: shop}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: shop-new}]
  - matches:
    - {path: {type: PathPrefix, value: /api}}
    - {path: {type: Exact, value: /api/health}}
    backendRefs: [{name: api}]
  - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: X-Canary, value: "1"}]}]
    backendRefs: [{name: api-canary}]
  - matches: [{path: {type: PathPrefix, value: /api}, method: POST}]
    backendRefs: [{name: api-write}]
  - matches:
    - {path: {type: PathPrefix, value: /api}, queryParams: [{name: v, value: "2"}]}
    - {path: {type: PathPrefix, value: /api}, headers: [{name: X-Canary, value: "2"}], queryParams: [{name: v, value: "2"}]}
    - {path: {type: PathPrefix, value: /api}, queryParams: [{name: v, value: "3"}, {name: debug, value: "1"}]}
    backendRefs: [{name: api-query}]
`, at(t0.Add(time.Hour)))
		e.apply(`
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: older}
spec:
  parentRefs: [{kind: Service, name: shop}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: shop-old}]
  - matches: [{path: {type: PathPrefix, value: /api/v1}}]
    backendRefs: [{name: api-v1}]
`, at(t0))
		// Same timestamp as "older": store creation order, then name, break the tie.
		e.apply(`
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: a-same-age}
spec:
  parentRefs: [{kind: Service, name: shop}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: shop-same}]
`, at(t0))
		s := e.snap("web", "default", "shop.default")
		want := strings.Join([]string{
			"default/newer/rules[1] EXACT:/api/health -> api.default:0*1",
			"default/older/rules[1] PREFIX:/api/v1 -> api-v1.default:0*1",
			"default/newer/rules[3] PREFIX:/api POST -> api-write.default:0*1",
			// More header matches first; equal headers: more query params.
			"default/newer/rules[4] PREFIX:/api x-canary=2 ?v=2 -> api-query.default:0*1",
			"default/newer/rules[2] PREFIX:/api x-canary=1 -> api-canary.default:0*1",
			"default/newer/rules[4] PREFIX:/api ?v=3 ?debug=1 -> api-query.default:0*1",
			"default/newer/rules[4] PREFIX:/api ?v=2 -> api-query.default:0*1",
			"default/newer/rules[1] PREFIX:/api -> api.default:0*1",
			"default/older/rules[0] PREFIX:/ -> shop-old.default:0*1",
			"default/a-same-age/rules[0] PREFIX:/ -> shop-same.default:0*1",
			"default/newer/rules[0] PREFIX:/ -> shop-new.default:0*1",
		}, "\n")
		if got := routesString(service(t, s, "shop", "default")); got != want {
			t.Errorf("routes\n%s\nwant\n%s", got, want)
		}
	})
}

func TestVersionDeterministic(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		e.apply(splitRoute)
		e.register("i1", "inventory", "default", true, "version", "v1")
		a := e.snap("frontend", "default", "inventory.default")
		b := e.snap("frontend", "default", "inventory.default")
		if a.Version != b.Version {
			t.Fatalf("same input, versions %s and %s", a.Version, b.Version)
		}
		// Subscription order and spelling do not matter.
		c := e.snap("frontend", "default", "inventory", "inventory.default.svc.trellis.local")
		if c.Version != a.Version {
			t.Fatalf("equivalent subscriptions, versions %s and %s", a.Version, c.Version)
		}
		// A second compiler over the same store agrees.
		_, c2 := start(t, e.st)
		other, err := c2.Snapshot(context.Background(), Node{ID: "x", Service: "frontend", Namespace: "default", Subscriptions: []string{"inventory.default"}})
		if err != nil || other.Version != a.Version {
			t.Fatalf("second compiler: version %v err %v, want %s", other.GetVersion(), err, a.Version)
		}
		// Changes outside the node's scope keep its version.
		e.register("p1", "payments", "default", true)
		e.apply(`
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: payments}
spec: {ports: [{name: http, port: 8080}]}
`)
		if v := e.snap("frontend", "default", "inventory.default").Version; v != a.Version {
			t.Fatalf("unrelated change moved version %s -> %s", a.Version, v)
		}
		// A change in scope moves it: new endpoint in a backend, weight change.
		e.register("i2", "inventory", "default", true, "version", "v2")
		v2 := e.snap("frontend", "default", "inventory.default").Version
		if v2 == a.Version {
			t.Fatal("new backend endpoint kept the version")
		}
		e.apply(strings.Replace(splitRoute, "weight: 90", "weight: 80", 1))
		v3 := e.snap("frontend", "default", "inventory.default").Version
		if v3 == v2 {
			t.Fatal("weight change kept the version")
		}
		// And back: the same content gives the same version again.
		e.apply(splitRoute)
		if v := e.snap("frontend", "default", "inventory.default").Version; v != v2 {
			t.Fatalf("restored content: version %s, want %s", v, v2)
		}
		// Unhealthy endpoint registration moves the version of its own service
		// only through the endpoint list; deleting the route drops the backends.
		e.delete("HTTPRoute", "default", "inventory-split")
		s := e.snap("frontend", "default", "inventory.default")
		if got := names(s); got != "frontend.default,inventory.default" {
			t.Fatalf("after route delete: %s", got)
		}
	})
}

func TestSubscribeNotifies(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		ch, cancel := e.c.Subscribe()
		ch2, cancel2 := e.c.Subscribe()
		time.Sleep(50 * time.Millisecond) // past the debounce of the initial load
		synctest.Wait()
		drain := func(c <-chan struct{}) bool {
			select {
			case <-c:
				return true
			default:
				return false
			}
		}
		drain(ch)
		drain(ch2)
		e.register("o1", "orders", "default", true)
		time.Sleep(50 * time.Millisecond)
		synctest.Wait()
		if !drain(ch) || !drain(ch2) {
			t.Fatal("no notification after a registration")
		}
		// A burst coalesces into one pending notification, and nobody blocks.
		for i := range 20 {
			e.register(fmt.Sprintf("b%d", i), "orders", "default", true)
		}
		time.Sleep(50 * time.Millisecond)
		synctest.Wait()
		if !drain(ch) || drain(ch) {
			t.Fatal("want exactly one buffered notification after a burst")
		}
		cancel()
		cancel() // idempotent
		e.register("o2", "orders", "default", true)
		time.Sleep(50 * time.Millisecond)
		synctest.Wait()
		if drain(ch) {
			t.Fatal("notified after cancel")
		}
		if !drain(ch2) {
			t.Fatal("other subscriber missed the change")
		}
		cancel2()
	})
}

func TestDebounceDelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		ch, cancel := e.c.Subscribe()
		defer cancel()
		time.Sleep(50 * time.Millisecond) // past the debounce of the initial load
		synctest.Wait()
		select {
		case <-ch:
		default:
		}
		start := time.Now()
		e.register("o1", "orders", "default", true)
		<-ch
		if d := time.Since(start); d == 0 || d > 20*time.Millisecond {
			t.Fatalf("notification after %v, want a debounce of at most 20ms", d)
		}
	})
}

func TestSnapshotWaitsForFirstListing(t *testing.T) {
	c := New(view.New(nil, view.Options{}), Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if _, err := c.Snapshot(ctx, Node{ID: "n", Service: "a", Namespace: "default"}); err == nil {
		t.Fatal("snapshot before the first listing succeeded")
	}
	if _, err := c.Snapshot(context.Background(), Node{ID: "n"}); err == nil || !strings.Contains(err.Error(), "required") {
		t.Fatalf("node without service: %v", err)
	}
}

func FuzzParseSubscription(f *testing.F) {
	for _, s := range []string{"orders", "orders.default", "orders.default.svc.trellis.local", "a.b.c", "", ".", "x..y"} {
		f.Add(s)
	}
	c := New(nil, Options{Domain: "trellis.local"})
	f.Fuzz(func(t *testing.T, s string) {
		k, ok := c.parseSubscription(s, "default")
		if !ok {
			return
		}
		if k.name == "" || k.ns == "" || strings.Contains(k.name, ".") || strings.Contains(k.ns, ".") {
			t.Fatalf("%q parsed to %+v", s, k)
		}
		if again, ok := c.parseSubscription(k.String(), "other"); !ok || again != k {
			t.Fatalf("%q -> %v -> %v", s, k, again)
		}
	})
}

// TestSnapshotRevision: a snapshot carries the view revision it was compiled
// from; a change elsewhere moves the revision, not the version.
func TestSnapshotRevision(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		e.apply(splitRoute)
		a := e.snap("frontend", "default", "inventory.default")
		if want := e.v.Revision(); a.Revision != want || want == 0 {
			t.Fatalf("snapshot revision %d, want the view's %d", a.Revision, want)
		}
		e.register("p1", "payments", "default", true)
		b := e.snap("frontend", "default", "inventory.default")
		if b.Revision != e.v.Revision() || b.Revision <= a.Revision {
			t.Fatalf("after an unrelated write: revision %d (was %d), view at %d", b.Revision, a.Revision, e.v.Revision())
		}
		if b.Version != a.Version {
			t.Fatalf("unrelated write moved the version %s -> %s", a.Version, b.Version)
		}
	})
}

// TestServiceCache: within one view state a service is compiled once and
// shared by every snapshot that includes it.
func TestServiceCache(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		e.apply(splitRoute)
		a := service(t, e.snap("frontend", "default", "inventory.default"), "inventory", "default")
		b := service(t, e.snap("web", "default", "inventory"), "inventory", "default")
		if a != b {
			t.Fatal("two snapshots of one state compiled inventory twice")
		}
		// A write outside the mesh view: a newer revision, the same content,
		// so the same compiled service.
		r, err := e.st.Txn(context.Background(), store.Put("/ca/other", nil, store.Any))
		if err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		s := e.snap("web", "default", "inventory")
		if s.Revision != r || service(t, s, "inventory", "default") != a {
			t.Fatalf("after a write outside the view: revision %d (want %d), recompiled %v", s.Revision, r, service(t, s, "inventory", "default") != a)
		}
		e.register("i1", "inventory", "default", true)
		if c := service(t, e.snap("web", "default", "inventory"), "inventory", "default"); c == a || endpointIDs(c) != "i1" {
			t.Fatalf("after a change: same compiled service %v, endpoints %q", c == a, endpointIDs(c))
		}
	})
}

// TestParentRefPorts: a parentRef without a port covers every port, so a
// second one naming a port adds no routes; two ports give a route each.
func TestParentRefPorts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		e.apply(`
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: all-ports}
spec:
  parentRefs: [{kind: Service, name: a, port: 80}, {kind: Service, name: a}]
  rules: [{backendRefs: [{name: a-v1}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: two-ports}
spec:
  parentRefs: [{kind: Service, name: b, port: 8080}, {kind: Service, name: b, port: 80}]
  rules: [{backendRefs: [{name: b-v1}]}]
`)
		s := e.snap("web", "default", "a", "b")
		if got, want := routesString(service(t, s, "a", "default")), "default/all-ports/rules[0] PREFIX:/ -> a-v1.default:0*1"; got != want {
			t.Errorf("a routes\n%s\nwant\n%s", got, want)
		}
		want := "default/two-ports/rules[0] PREFIX:/ port=80 -> b-v1.default:0*1\ndefault/two-ports/rules[0] PREFIX:/ port=8080 -> b-v1.default:0*1"
		if got := routesString(service(t, s, "b", "default")); got != want {
			t.Errorf("b routes\n%s\nwant\n%s", got, want)
		}
	})
}

// TestRouteFiltersCompile: a mirror's backend is in the snapshot like a
// route's backends, and a rule's ExtensionRef resolves to the
// FaultInjection of the view (and follows it when it changes).
func TestRouteFiltersCompile(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t)
		e.apply(`
apiVersion: trellis.dev/v1alpha1
kind: FaultInjection
metadata: {name: slow}
spec: {delay: {fixedDelay: 50ms, percentage: 10}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{kind: Service, name: shop}]
  rules:
  - filters:
    - {type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 80}}}
    - {type: ExtensionRef, extensionRef: {group: trellis.dev, kind: FaultInjection, name: slow}}
    backendRefs: [{name: shop-v1}]
`)
		s := e.snap("web", "default", "shop.default")
		if got, want := names(s), "shadow.default,shop.default,shop-v1.default,web.default"; got != want {
			t.Fatalf("services %s, want %s", got, want)
		}
		fs := service(t, s, "shop", "default").Routes[0].Filters
		if len(fs) != 2 || fs[1].GetFault().GetDelay().GetPercent() != 10 {
			t.Fatalf("filters %v", fs)
		}
		e.apply(`
apiVersion: trellis.dev/v1alpha1
kind: FaultInjection
metadata: {name: slow}
spec: {abort: {httpStatus: 418, percentage: 100}}
`)
		s2 := e.snap("web", "default", "shop.default")
		fs = service(t, s2, "shop", "default").Routes[0].Filters
		if fs[1].GetFault().GetAbort().GetHttpStatus() != 418 || s2.Version == s.Version {
			t.Fatalf("changed FaultInjection not followed: %v (versions %s %s)", fs[1], s.Version, s2.Version)
		}
	})
}
