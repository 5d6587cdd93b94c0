package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/http1"
	"trellis.dev/trellis/internal/lb"
)

// namedReplicas starts n proxies of service name whose apps answer with
// their own name (X-App: name-i), so a response says which replica served.
func namedReplicas(t *testing.T, ca *testCA, name string, n int) *meshv1.Service {
	t.Helper()
	svc := &meshv1.Service{Name: name, Namespace: "default"}
	for i := range n {
		app := startApp(t, whoami(fmt.Sprintf("%s-%d", name, i)))
		s := startServer(t, ca, name, app, port(80, app, meshv1.Protocol_HTTP))
		svc.Ports = s.svc.Ports
		svc.Endpoints = append(svc.Endpoints, s.svc.Endpoints...)
	}
	return svc
}

// replicaOf sends one request through c and returns the replica that
// answered.
func replicaOf(t *testing.T, c *http.Client, url string, hdr map[string]string) string {
	t.Helper()
	resp, body := get(t, c, url, hdr)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %q", url, resp.StatusCode, body)
	}
	return resp.Header.Get("X-App")
}

// TestHashingEndToEnd: through real proxies, a service hashed by header,
// cookie or query parameter sends each key to one replica every time, and
// different keys to different replicas; requests without the key spread.
func TestHashingEndToEnd(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	base := namedReplicas(t, ca, "orders", 4)
	type keyed func(i int) (url string, hdr map[string]string)
	kinds := []struct {
		name string
		hash *meshv1.HashPolicy
		req  keyed
	}{
		{"header", &meshv1.HashPolicy{Key: &meshv1.HashPolicy_Header{Header: "x-user"}},
			func(i int) (string, map[string]string) {
				return "http://orders/cart", map[string]string{"X-User": fmt.Sprint("user", i)}
			}},
		{"cookie", &meshv1.HashPolicy{Key: &meshv1.HashPolicy_Cookie{Cookie: "session"}},
			func(i int) (string, map[string]string) {
				return "http://orders/cart", map[string]string{"Cookie": fmt.Sprintf("theme=dark; session=s%d", i)}
			}},
		{"query", &meshv1.HashPolicy{Key: &meshv1.HashPolicy_QueryParam{QueryParam: "user"}},
			func(i int) (string, map[string]string) {
				return fmt.Sprintf("http://orders/cart?page=2&user=u%%20%d", i), nil
			}},
	}
	for _, lbk := range []meshv1.LoadBalancer{meshv1.LoadBalancer_RING_HASH, meshv1.LoadBalancer_MAGLEV} {
		for _, k := range kinds {
			t.Run(lbk.String()+"/"+k.name, func(t *testing.T) {
				svc := proto.CloneOf(base)
				svc.BackendPolicy = &meshv1.BackendPolicy{LoadBalancer: lbk, Hash: k.hash}
				client := startClient(t, ca, Options{})
				if err := client.Update(snapshot("1", svc)); err != nil {
					t.Fatal(err)
				}
				c := proxyClient(client)
				seen := map[string]bool{}
				for i := range 24 {
					url, hdr := k.req(i)
					home := replicaOf(t, c, url, hdr)
					for range 4 {
						if got := replicaOf(t, c, url, hdr); got != home {
							t.Fatalf("key %d went to %s, then to %s", i, home, got)
						}
					}
					seen[home] = true
				}
				if len(seen) < 3 {
					t.Fatalf("24 keys reached only %v of 4 replicas", seen)
				}
				// No key: balanced randomly.
				spread := map[string]bool{}
				for range 40 {
					spread[replicaOf(t, c, "http://orders/cart", nil)] = true
				}
				if len(spread) < 3 {
					t.Fatalf("40 requests without the key reached only %v", spread)
				}
			})
		}
	}
}

// TestHashingBySourceIdentity: hashed by source identity, every request of
// one client proxy goes to one replica (its identity is the key), and
// clients of other identities spread over the replicas.
func TestHashingBySourceIdentity(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	svc := namedReplicas(t, ca, "orders", 4)
	svc.BackendPolicy = &meshv1.BackendPolicy{
		LoadBalancer: meshv1.LoadBalancer_MAGLEV,
		Hash:         &meshv1.HashPolicy{Key: &meshv1.HashPolicy_SourceIdentity{SourceIdentity: true}},
	}
	seen := map[string]bool{}
	for i := range 12 {
		client := startClient(t, ca, Options{Identity: spiffeFor(fmt.Sprint("caller", i))})
		if err := client.Update(snapshot("1", svc)); err != nil {
			t.Fatal(err)
		}
		c := proxyClient(client)
		home := replicaOf(t, c, "http://orders/", nil)
		for range 5 {
			if got := replicaOf(t, c, "http://orders/", map[string]string{"X-User": "varies"}); got != home {
				t.Fatalf("caller %d went to %s, then to %s", i, home, got)
			}
		}
		seen[home] = true
	}
	if len(seen) < 3 {
		t.Fatalf("12 identities reached only %v of 4 replicas", seen)
	}
}

// TestHashingPickerAcrossSwaps: the ring is built at compile, and kept
// while the policy and the endpoint set stay; a changed endpoint set builds
// a new one, under which the keys of the replicas that stayed stay.
func TestHashingPickerAcrossSwaps(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	svc := namedReplicas(t, ca, "orders", 4)
	svc.BackendPolicy = &meshv1.BackendPolicy{
		LoadBalancer: meshv1.LoadBalancer_RING_HASH,
		Hash:         &meshv1.HashPolicy{Key: &meshv1.HashPolicy_Header{Header: "x-user"}},
	}
	client := startClient(t, ca, Options{})
	if err := client.Update(snapshot("1", svc)); err != nil {
		t.Fatal(err)
	}
	picker := func() lb.Picker { return client.cfg.Load().byKey["orders.default"].picker }
	first := picker()
	if _, ok := first.(*lb.RingHashPicker); !ok {
		t.Fatalf("picker %T, want ring hash", first)
	}
	if err := client.Update(snapshot("2", svc)); err != nil {
		t.Fatal(err)
	}
	if picker() != first {
		t.Fatal("an unchanged policy and endpoint set rebuilt the ring")
	}
	c := proxyClient(client)
	before := map[int]string{}
	for i := range 40 {
		before[i] = replicaOf(t, c, "http://orders/", map[string]string{"X-User": fmt.Sprint("user", i)})
	}
	// Drop the replica serving user0 (replica i is endpoint i).
	gone := before[0]
	smaller := proto.CloneOf(svc)
	smaller.Endpoints = nil
	for i, e := range svc.Endpoints {
		if gone != fmt.Sprint("orders-", i) {
			smaller.Endpoints = append(smaller.Endpoints, e)
		}
	}
	if err := client.Update(snapshot("3", smaller)); err != nil {
		t.Fatal(err)
	}
	if picker() == first {
		t.Fatal("a changed endpoint set kept the old ring")
	}
	for i := range 40 {
		got := replicaOf(t, c, "http://orders/", map[string]string{"X-User": fmt.Sprint("user", i)})
		if before[i] != gone && got != before[i] {
			t.Fatalf("user%d moved from %s to %s though only %s left", i, before[i], got, gone)
		}
		if got == gone {
			t.Fatalf("user%d still reaches %s, which left", i, gone)
		}
	}
}

// TestCompileBalancer: every snapshot load balancer, hash policy and slow
// start becomes its picker, and bad values are refused with their field.
func TestCompileBalancer(t *testing.T) {
	hdr := &meshv1.HashPolicy{Key: &meshv1.HashPolicy_Header{Header: "x-user"}}
	tests := []struct {
		name    string
		bp      *meshv1.BackendPolicy
		want    string // picker type
		wantErr string
	}{
		{"unset: the proxy default", nil, "*lb.RoundRobinPicker", ""},
		{"p2c-ewma", &meshv1.BackendPolicy{LoadBalancer: meshv1.LoadBalancer_P2C_PEAK_EWMA}, "*lb.PeakEWMAPicker", ""},
		{"round robin", &meshv1.BackendPolicy{LoadBalancer: meshv1.LoadBalancer_ROUND_ROBIN}, "*lb.RoundRobinPicker", ""},
		{"random", &meshv1.BackendPolicy{LoadBalancer: meshv1.LoadBalancer_RANDOM}, "*lb.RandomPicker", ""},
		{"least request", &meshv1.BackendPolicy{LoadBalancer: meshv1.LoadBalancer_LEAST_REQUEST}, "*lb.LeastRequestPicker", ""},
		{"ring hash", &meshv1.BackendPolicy{LoadBalancer: meshv1.LoadBalancer_RING_HASH, Hash: hdr}, "*lb.RingHashPicker", ""},
		{"maglev", &meshv1.BackendPolicy{LoadBalancer: meshv1.LoadBalancer_MAGLEV, Hash: hdr}, "*lb.MaglevPicker", ""},
		{"maglev without a key", &meshv1.BackendPolicy{LoadBalancer: meshv1.LoadBalancer_MAGLEV}, "*lb.MaglevPicker", ""},
		{"slow start", &meshv1.BackendPolicy{LoadBalancer: meshv1.LoadBalancer_LEAST_REQUEST, SlowStart: durationpb.New(time.Minute)}, "*lb.LeastRequestPicker", ""},
		{"unknown balancer", &meshv1.BackendPolicy{LoadBalancer: 42}, "", "services[0].backend_policy.load_balancer: unknown balancer 42"},
		{"bad header name", &meshv1.BackendPolicy{LoadBalancer: meshv1.LoadBalancer_RING_HASH,
			Hash: &meshv1.HashPolicy{Key: &meshv1.HashPolicy_Header{Header: "x user"}}}, "", `services[0].backend_policy.hash.header: "x user" is not a header name`},
		{"empty cookie", &meshv1.BackendPolicy{LoadBalancer: meshv1.LoadBalancer_MAGLEV,
			Hash: &meshv1.HashPolicy{Key: &meshv1.HashPolicy_Cookie{}}}, "", `services[0].backend_policy.hash.cookie: "" is not a cookie name`},
		{"empty query param", &meshv1.BackendPolicy{LoadBalancer: meshv1.LoadBalancer_MAGLEV,
			Hash: &meshv1.HashPolicy{Key: &meshv1.HashPolicy_QueryParam{}}}, "", "services[0].backend_policy.hash.query_param: empty"},
		{"negative slow start", &meshv1.BackendPolicy{SlowStart: durationpb.New(-time.Second)}, "", "services[0].backend_policy.slow_start: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := backendSvc("orders")
			svc.BackendPolicy = tt.bp
			svc.Endpoints = []*meshv1.Endpoint{{Address: "127.0.0.1:1", Identity: spiffeFor("orders"), Healthy: true}}
			c, err := compile(&meshv1.Snapshot{Services: []*meshv1.Service{svc}}, testEnv(t))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := fmt.Sprintf("%T", c.byKey["orders.default"].picker); got != tt.want {
				t.Fatalf("picker %s, want %s", got, tt.want)
			}
		})
	}
}

// TestCompileBalancerConfig: what the picker is built with, field by field.
func TestCompileBalancerConfig(t *testing.T) {
	tests := []struct {
		name string
		bp   *meshv1.BackendPolicy
		def  lb.Policy
		want lb.Config
	}{
		{"default", nil, lb.PeakEWMA, lb.Config{Policy: lb.PeakEWMA}},
		{"default hashing takes the hash", &meshv1.BackendPolicy{Hash: &meshv1.HashPolicy{Key: &meshv1.HashPolicy_Cookie{Cookie: "s"}}},
			lb.Maglev, lb.Config{Policy: lb.Maglev, Hash: lb.HashKey{Kind: lb.HashCookie, Name: "s"}}},
		{"hash dropped for a non-hashing balancer", &meshv1.BackendPolicy{LoadBalancer: meshv1.LoadBalancer_RANDOM,
			Hash: &meshv1.HashPolicy{Key: &meshv1.HashPolicy_Header{Header: "x"}}}, lb.PeakEWMA, lb.Config{Policy: lb.Random}},
		{"source identity", &meshv1.BackendPolicy{LoadBalancer: meshv1.LoadBalancer_RING_HASH,
			Hash: &meshv1.HashPolicy{Key: &meshv1.HashPolicy_SourceIdentity{SourceIdentity: true}}}, lb.PeakEWMA,
			lb.Config{Policy: lb.RingHash, Hash: lb.HashKey{Kind: lb.HashSource}}},
		{"source identity false is no key", &meshv1.BackendPolicy{LoadBalancer: meshv1.LoadBalancer_RING_HASH,
			Hash: &meshv1.HashPolicy{Key: &meshv1.HashPolicy_SourceIdentity{}}}, lb.PeakEWMA, lb.Config{Policy: lb.RingHash}},
		{"query", &meshv1.BackendPolicy{LoadBalancer: meshv1.LoadBalancer_MAGLEV,
			Hash: &meshv1.HashPolicy{Key: &meshv1.HashPolicy_QueryParam{QueryParam: "u"}}}, lb.PeakEWMA,
			lb.Config{Policy: lb.Maglev, Hash: lb.HashKey{Kind: lb.HashQuery, Name: "u"}}},
		{"slow start", &meshv1.BackendPolicy{SlowStart: durationpb.New(30 * time.Second)}, lb.RoundRobin,
			lb.Config{Policy: lb.RoundRobin, SlowStart: 30 * time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := compileBalancer("bp", tt.bp, tt.def)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("config %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestPickRequestAllocations: filling the balancer's view of the request
// and hashing it allocates nothing per attempt.
func TestPickRequestAllocations(t *testing.T) {
	eps := []*lb.Endpoint{lb.NewEndpoint("127.0.0.1:1"), lb.NewEndpoint("127.0.0.1:2")}
	cfg := lb.Config{Policy: lb.Maglev, Hash: lb.HashKey{Kind: lb.HashQuery, Name: "user"}}
	pk, err := lb.NewPicker(cfg, eps)
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{opts: Options{Identity: spiffeFor("frontend")}}
	svc := &service{key: "orders.default", eps: eps, peers: []*peer{{}, {}}, picker: pk}
	ex := p.exchanges.get()
	defer ex.release()
	ex.Method, ex.Path, ex.RawQuery = "GET", "/", "user=alice"
	ex.Header = http.Header{"X-User": {"alice"}}
	ex.clientCtx = t.Context()
	ex.Backend = &backend{svc: svc}
	var picked *lb.Endpoint
	h := p.pickFilter(HandlerFunc(func(ex *Exchange) *Response {
		picked = ex.Endpoint
		return &ex.resp
	}))
	allocs := testing.AllocsPerRun(1000, func() {
		ex.Tried = ex.Tried[:0]
		h.Serve(ex)
	})
	if allocs > 0 {
		t.Fatalf("%.1f allocations per pick, want 0", allocs)
	}
	first := picked
	for range 20 {
		ex.Tried = ex.Tried[:0]
		if h.Serve(ex); picked != first {
			t.Fatal("the query key did not reach the balancer: picks vary")
		}
	}
}

// TestSlowStartFromSnapshot: slow_start reaches the service's picker, and an
// endpoint's ramp starts when this proxy first sees it (a later snapshot),
// not when its service appeared; the same endpoint keeps its age across
// swaps.
func TestSlowStartFromSnapshot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, err := New(Options{Service: "frontend", ClientTLS: func(string) *tls.Config { return nil }})
		if err != nil {
			t.Fatal(err)
		}
		svc := backendSvc("orders")
		svc.BackendPolicy = &meshv1.BackendPolicy{LoadBalancer: meshv1.LoadBalancer_RANDOM, SlowStart: durationpb.New(time.Minute)}
		for i := range 3 {
			svc.Endpoints = append(svc.Endpoints, &meshv1.Endpoint{Address: fmt.Sprintf("127.0.0.1:%d", 1000+i), Identity: spiffeFor("orders"), Healthy: true})
		}
		if err := p.Update(snapshot("1", svc)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Hour)
		svc.Endpoints = append(svc.Endpoints, &meshv1.Endpoint{Address: "127.0.0.1:2000", Identity: spiffeFor("orders"), Healthy: true})
		share := func(version string) float64 {
			if err := p.Update(snapshot(version, svc)); err != nil {
				t.Fatal(err)
			}
			s := p.cfg.Load().byKey["orders.default"]
			hits := 0
			for range 4000 {
				c, _ := s.picker.Pick(nil, s.eps, nil)
				if c.Endpoint().Addr() == "127.0.0.1:2000" {
					hits++
				}
				c.Done(lb.Abandoned)
			}
			return float64(hits) / 4000
		}
		// Weight 0.1 against three full ones: 0.1/3.1 ≈ 3%.
		if got := share("2"); got > 0.06 {
			t.Fatalf("a new endpoint drew %.3f of picks at once, want ~0.03", got)
		}
		time.Sleep(30 * time.Second)
		// Half way: 0.5/3.5 ≈ 14%.
		if got := share("3"); got < 0.09 || got > 0.2 {
			t.Fatalf("half way through slow start the endpoint drew %.3f, want ~0.14", got)
		}
		time.Sleep(30 * time.Second)
		if got := share("4"); got < 0.2 || got > 0.3 {
			t.Fatalf("after slow start the endpoint drew %.3f, want ~0.25", got)
		}
	})
}

// TestEjectedEndpointSkipped: through real proxies, an ejected replica
// draws no request while others are left, and with every replica ejected
// requests are still served (ejection never empties a service).
func TestEjectedEndpointSkipped(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	svc := namedReplicas(t, ca, "orders", 3)
	svc.BackendPolicy = &meshv1.BackendPolicy{LoadBalancer: meshv1.LoadBalancer_ROUND_ROBIN}
	client := startClient(t, ca, Options{})
	if err := client.Update(snapshot("1", svc)); err != nil {
		t.Fatal(err)
	}
	eps := client.cfg.Load().byKey["orders.default"].eps
	c := proxyClient(client)
	eps[1].Eject(time.Now().Add(time.Hour))
	for range 12 {
		if got := replicaOf(t, c, "http://orders/", nil); got == "orders-1" {
			t.Fatal("the ejected replica served a request")
		}
	}
	for _, e := range eps {
		e.Eject(time.Now().Add(time.Hour))
	}
	seen := map[string]bool{}
	for range 12 {
		seen[replicaOf(t, c, "http://orders/", nil)] = true
	}
	if len(seen) != 3 {
		t.Fatalf("with every replica ejected, requests reached %v; want all three", seen)
	}
	eps[1].Eject(time.Time{})
	for range 6 {
		if got := replicaOf(t, c, "http://orders/", nil); got != "orders-1" {
			t.Fatalf("with the others ejected, %s served; want orders-1, which returned", got)
		}
	}
}

// TestPickLatencyLeavesOutTheDial: an attempt that had to make its
// connection (a new endpoint's TLS handshake) is charged only its
// request's latency, so the endpoint is not shunned for the handshake.
func TestPickLatencyLeavesOutTheDial(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fresh, warm := lb.NewEndpoint("127.0.0.1:1"), lb.NewEndpoint("127.0.0.1:2")
		eps := []*lb.Endpoint{fresh, warm}
		pk, err := lb.NewPicker(lb.Config{Policy: lb.PeakEWMA}, eps)
		if err != nil {
			t.Fatal(err)
		}
		p := &Proxy{opts: Options{Identity: spiffeFor("frontend")}}
		svc := &service{key: "orders.default", eps: eps, peers: []*peer{{}, {}}, picker: pk}
		dialed := map[*lb.Endpoint]bool{}
		h := p.pickFilter(HandlerFunc(func(ex *Exchange) *Response {
			if ex.Endpoint == fresh && !dialed[fresh] {
				dialed[fresh] = true
				time.Sleep(50 * time.Millisecond) // its handshake...
				ex.NoteDial(49 * time.Millisecond)
				return &ex.resp // ...and a 1 ms request
			}
			if ex.Endpoint == fresh {
				time.Sleep(time.Millisecond)
			} else {
				time.Sleep(5 * time.Millisecond)
			}
			return &ex.resp
		}))
		picks := map[*lb.Endpoint]int{}
		for i := range 40 {
			ex := p.exchanges.get()
			ex.Method, ex.Path = "GET", "/"
			ex.clientCtx = t.Context()
			ex.Backend = &backend{svc: svc}
			h.Serve(ex)
			if i >= 10 { // both have been sampled by then
				picks[ex.Endpoint]++
			}
			ex.release()
		}
		if picks[fresh] < picks[warm] {
			t.Errorf("the 1 ms endpoint got %d of 30 picks, the 5 ms one %d: its handshake was charged as latency", picks[fresh], picks[warm])
		}
	})
}

// TestRoundTripNotesDial: an attempt over the HTTP/1.1 transport tells
// its exchange how long the connection it made took, and a reused
// connection adds nothing.
func TestRoundTripNotesDial(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := &http1.Transport{Dial: func(context.Context, string) (net.Conn, error) {
			time.Sleep(20 * time.Millisecond)
			client, server := net.Pipe()
			go func() {
				defer server.Close()
				br := bufio.NewReader(server)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, req.Body)
					if _, err := io.WriteString(server, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"); err != nil {
						return
					}
				}
			}()
			return client, nil
		}}
		defer tr.CloseIdleConnections()
		p := &Proxy{}
		for i, want := range []time.Duration{20 * time.Millisecond, 0} {
			ex := p.exchanges.get()
			ex.Method, ex.Path, ex.Authority = "GET", "/", "orders"
			ex.ctx, ex.clientCtx = t.Context(), t.Context()
			resp := roundTrip(ex, tr, "http", "orders:80", outHeader(ex, 0))
			if resp.Status != 200 {
				t.Fatalf("attempt %d: %d", i, resp.Status)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if ex.dialed != want {
				t.Errorf("attempt %d noted %v of dialing, want %v", i, ex.dialed, want)
			}
			ex.release()
		}
	})
}
