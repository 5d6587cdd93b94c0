package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// scrape reads p's /metrics through its admin handler (in process, so it
// works after Shutdown too) and returns the requests_total series by their
// label set, as `direction,destination,code,flags`: direction is the
// reporter's side of the hop (source: outbound, destination: inbound),
// destination "name.namespace" (or unknown), summed over the other labels.
func scrape(t *testing.T, p *Proxy) map[string]float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	p.adminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	out := map[string]float64{}
	for l := range strings.SplitSeq(rec.Body.String(), "\n") {
		rest, ok := strings.CutPrefix(l, "trellis_requests_total{")
		if !ok {
			continue
		}
		labels, val, _ := strings.Cut(rest, "} ")
		lv := map[string]string{}
		for kv := range strings.SplitSeq(labels, ",") {
			k, v, _ := strings.Cut(kv, "=")
			lv[k] = strings.Trim(v, `"`)
		}
		f, err := strconv.ParseFloat(val, 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", l, err)
		}
		dir := map[string]string{"source": "outbound", "destination": "inbound"}[lv["reporter"]]
		dst := lv["destination_service"]
		if dst != "unknown" {
			dst += "." + lv["destination_namespace"]
		}
		out[dir+","+dst+","+lv["response_code"]+","+lv["response_flags"]] += f
	}
	return out
}

// waitCounted waits until p has counted want (the exchange is counted when
// its response body is closed, which may be just after the client has read
// it) and then checks it is the only request of that direction.
func waitCounted(t *testing.T, p *Proxy, dir, want string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	var got map[string]float64
	for {
		got = scrape(t, p)
		if got[want] >= 1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	var total float64
	for k, v := range got {
		if strings.HasPrefix(k, dir+",") {
			total += v
		}
	}
	if got[want] != 1 || total != 1 {
		t.Fatalf("want exactly one %s request counted as %s; got %v", dir, want, got)
	}
}

// rawRequest writes raw to addr and reads one response.
func rawRequest(t *testing.T, addr, raw string) *http.Response {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// deadAddr is a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().String()
	ln.Close()
	return a
}

// peerClient talks to an inbound listener directly, as frontend's proxy.
func peerClient(t *testing.T, ca *testCA, server string) *http.Client {
	s := ca.svid(t, spiffeFor("frontend"))
	cfg := ca.clientTLS(s)(spiffeFor(server))
	cfg.NextProtos = []string{"http/1.1"}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 5 * time.Second}
}

type flagEnv struct {
	t      *testing.T
	ca     *testCA
	orders *server
}

func (e *flagEnv) client(o Options, svcs ...*meshv1.Service) *Proxy {
	c := startClient(e.t, e.ca, o)
	if err := c.Update(snapshot("1", svcs...)); err != nil {
		e.t.Fatal(err)
	}
	return c
}

// statusOf sends GET url through p's outbound listener.
func statusOf(t *testing.T, p *Proxy, url string) int {
	t.Helper()
	resp, _ := get(t, proxyClient(p), url, nil)
	return resp.StatusCode
}

func withRoutes(s *meshv1.Service, rs ...*meshv1.Route) *meshv1.Service {
	c := renamed(s, s.Name)
	c.Routes = rs
	return c
}

// TestEveryRequestCountedWithFlag drives every way a request can be refused
// or fail through real listeners, and checks the status, the response flag
// and that the proxy counted exactly one request for it.
func TestEveryRequestCountedWithFlag(t *testing.T) {
	type result = flagResult
	for _, tc := range []struct {
		name   string
		run    func(e *flagEnv) result
		series string // direction,service,code,flags
		status int    // the client's status, when it saw one
	}{
		{"malformed host", func(e *flagEnv) result {
			c := e.client(Options{}, e.orders.svc)
			return result{c, rawRequest(e.t, c.OutboundAddr(), "GET / HTTP/1.1\r\nHost: orders..default\r\n\r\n").StatusCode}
		}, "outbound,unknown,400,DPE", 400},
		{"connect without port", func(e *flagEnv) result {
			c := e.client(Options{}, e.orders.svc)
			return result{c, rawRequest(e.t, c.OutboundAddr(), "CONNECT orders HTTP/1.1\r\nHost: orders\r\n\r\n").StatusCode}
		}, "outbound,unknown,400,DPE", 400},
		{"connect on an upstream port", func(e *flagEnv) result {
			c := e.client(Options{Upstreams: map[string]string{"orders": "127.0.0.1:0"}}, e.orders.svc)
			return result{c, rawRequest(e.t, c.UpstreamAddr("orders"), "CONNECT orders:80 HTTP/1.1\r\nHost: orders:80\r\n\r\n").StatusCode}
		}, "outbound,unknown,405,DPE", 405},
		{"outside the registry, REGISTRY_ONLY", func(e *flagEnv) result {
			c := startClient(e.t, e.ca, Options{})
			s := snapshot("1", e.orders.svc)
			s.OutboundTrafficPolicy = &meshv1.OutboundTrafficPolicy{Mode: meshv1.OutboundTrafficPolicy_REGISTRY_ONLY}
			if err := c.Update(s); err != nil {
				e.t.Fatal(err)
			}
			return result{c, statusOf(e.t, c, "http://www.example.com/")}
		}, "outbound,unknown,502,EG", 502},
		{"unknown service, subscribe wait timed out", func(e *flagEnv) result {
			c := e.client(Options{Subscribe: func(string) {}}, e.orders.svc)
			return result{c, statusOf(e.t, c, "http://nosuch/")}
		}, "outbound,unknown,503,NC", 503},
		{"no route", func(e *flagEnv) result {
			c := e.client(Options{}, withRoutes(e.orders.svc, &meshv1.Route{
				Matches:  []*meshv1.Match{{Path: &meshv1.PathMatch{Value: "/api"}}},
				Backends: []*meshv1.Backend{{Service: "orders", Weight: 1}},
			}))
			return result{c, statusOf(e.t, c, "http://orders/other")}
		}, "outbound,orders.default,404,NR", 404},
		{"no healthy endpoint", func(e *flagEnv) result {
			c := e.client(Options{}, &meshv1.Service{Name: "empty", Namespace: "default"})
			return result{c, statusOf(e.t, c, "http://empty/")}
		}, "outbound,empty.default,503,UH", 503},
		{"upstream connect failure", func(e *flagEnv) result {
			dead := renamed(e.orders.svc, "orders")
			dead.Endpoints = []*meshv1.Endpoint{{Address: deadAddr(e.t), Identity: spiffeFor("orders"), Healthy: true}}
			c := e.client(Options{}, dead)
			return result{c, statusOf(e.t, c, "http://orders/")}
		}, "outbound,orders.default,502,UF", 502},
		{"upstream identity mismatch", func(e *flagEnv) result {
			bad := renamed(e.orders.svc, "orders")
			bad.Endpoints = []*meshv1.Endpoint{{Address: e.orders.proxy.InboundAddr(), Identity: spiffeFor("payments"), Healthy: true}}
			c := e.client(Options{}, bad)
			return result{c, statusOf(e.t, c, "http://orders/")}
		}, "outbound,orders.default,502,UF", 502},
		{"upstream reset mid-body", func(e *flagEnv) result {
			app := startApp(e.t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				// A stream (no length): its first chunk is flushed through
				// both proxies before the app breaks off.
				_, _ = io.WriteString(w, "first chunk")
				w.(http.Flusher).Flush()
				panic(http.ErrAbortHandler)
			}))
			srv := startServer(e.t, e.ca, "broken", app, port(80, app, meshv1.Protocol_HTTP))
			c := e.client(Options{}, srv.svc)
			resp, err := proxyClient(c).Get("http://broken/")
			if err != nil {
				e.t.Fatal(err)
			}
			if _, err := io.ReadAll(resp.Body); err == nil {
				e.t.Error("client read a whole body from an upstream that broke off")
			}
			resp.Body.Close()
			return result{c, resp.StatusCode}
		}, "outbound,broken.default,200,UR", 200},
		{"downstream closed", func(e *flagEnv) result {
			entered := make(chan struct{})
			app := startApp(e.t, http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
				close(entered)
				<-r.Context().Done()
			}))
			srv := startServer(e.t, e.ca, "slow", app, port(80, app, meshv1.Protocol_HTTP))
			c := e.client(Options{}, srv.svc)
			ctx, cancel := context.WithCancel(context.Background())
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://slow/", nil)
			go func() { <-entered; cancel() }()
			if resp, err := proxyClient(c).Do(req); err == nil {
				resp.Body.Close()
				e.t.Error("request answered after the client canceled it")
			}
			return result{c, 0}
		}, "outbound,slow.default,499,DC", 0},
		{"request timeout", func(e *flagEnv) result {
			return slowBackend(e, &meshv1.RouteTimeouts{Request: durationpb.New(100 * time.Millisecond)})
		}, "outbound,slow.default,504,UT", 504},
		{"backend request timeout", func(e *flagEnv) result {
			return slowBackend(e, &meshv1.RouteTimeouts{BackendRequest: durationpb.New(100 * time.Millisecond)})
		}, "outbound,slow.default,504,UT", 504},
		{"shutting down", func(e *flagEnv) result {
			asked := make(chan struct{})
			c := e.client(Options{Subscribe: func(string) { close(asked) }}, e.orders.svc)
			c.subscribeWait = 10 * time.Second
			got := make(chan int, 1)
			go func() {
				resp, err := proxyClient(c).Get("http://nosuch/")
				if err != nil {
					got <- -1
					return
				}
				resp.Body.Close()
				got <- resp.StatusCode
			}()
			<-asked
			if err := c.Shutdown(context.Background()); err != nil {
				e.t.Fatal(err)
			}
			return result{c, <-got}
		}, "outbound,unknown,503,SD", 503},
		// Inbound: the orders proxy refuses or fails.
		{"inbound malformed port header", func(e *flagEnv) result {
			req, _ := http.NewRequest("GET", "https://"+e.orders.proxy.InboundAddr()+"/", nil)
			req.Header.Set(headerPort, "eighty")
			resp, err := peerClient(e.t, e.ca, "orders").Do(req)
			if err != nil {
				e.t.Fatal(err)
			}
			resp.Body.Close()
			return result{e.orders.proxy, resp.StatusCode}
		}, "inbound,orders.default,400,DPE", 400},
		{"inbound undeclared port", func(e *flagEnv) result {
			c := e.client(Options{}, e.orders.svc)
			return result{e.orders.proxy, statusOf(e.t, c, "http://orders:9999/")}
		}, "inbound,orders.default,404,NR", 404},
		{"inbound no local app", func(e *flagEnv) result {
			s := e.ca.svid(e.t, spiffeFor("noapp"))
			p := startProxy(e.t, Options{Service: "noapp", InboundAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
				ServerTLS: e.ca.serverTLS(s), ClientTLS: e.ca.clientTLS(s)})
			if err := p.Update(&meshv1.Snapshot{Inbound: &meshv1.Service{Name: "noapp", Namespace: "default"}}); err != nil {
				e.t.Fatal(err)
			}
			c := e.client(Options{}, &meshv1.Service{Name: "noapp", Namespace: "default", Endpoints: []*meshv1.Endpoint{
				{Address: p.InboundAddr(), Identity: spiffeFor("noapp"), Healthy: true}}})
			return result{p, statusOf(e.t, c, "http://noapp/")}
		}, "inbound,noapp.default,503,LA", 503},
		{"inbound app refuses connections", func(e *flagEnv) result {
			dead := deadAddr(e.t)
			srv := startServer(e.t, e.ca, "gone", dead, port(80, dead, meshv1.Protocol_HTTP))
			c := e.client(Options{}, srv.svc)
			return result{srv.proxy, statusOf(e.t, c, "http://gone/")}
		}, "inbound,gone.default,502,UF", 502},
		{"inbound app resets before answering", func(e *flagEnv) result {
			app := startApp(e.t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic(http.ErrAbortHandler) }))
			srv := startServer(e.t, e.ca, "reset", app, port(80, app, meshv1.Protocol_HTTP))
			c := e.client(Options{}, srv.svc)
			// POST: a bodiless GET that gets reset is retried by the transport.
			resp, err := proxyClient(c).Post("http://reset/", "text/plain", strings.NewReader("x"))
			if err != nil {
				e.t.Fatal(err)
			}
			resp.Body.Close()
			return result{srv.proxy, resp.StatusCode}
		}, "inbound,reset.default,502,UR", 502},
		{"inbound no identity", func(e *flagEnv) result {
			// TLS refuses a peer without a SPIFFE ID before any request, so
			// this drives the inbound edge itself with a request without one.
			rec := httptest.NewRecorder()
			(&edge{p: e.orders.proxy, kind: inboundListener}).ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
			return result{e.orders.proxy, rec.Code}
		}, "inbound,orders.default,403,NI", 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ca := newTestCA(t, "trellis.local")
			app := startApp(t, whoami("orders"))
			orders := startServer(t, ca, "orders", app, port(80, app, meshv1.Protocol_HTTP))
			e := &flagEnv{t: t, ca: ca, orders: orders}
			r := tc.run(e)
			if tc.status != 0 && r.status != tc.status {
				t.Fatalf("client saw %d, want %d", r.status, tc.status)
			}
			dir, _, _ := strings.Cut(tc.series, ",")
			waitCounted(t, r.p, dir, tc.series)
		})
	}
}

// TestFlagsString pins the label values: one flag, several, none.
func TestFlagsString(t *testing.T) {
	for f, want := range map[Flags]string{0: "-", FlagUF: "UF", FlagDPE: "DPE", FlagSD: "SD", FlagUR | FlagDC: "UR,DC"} {
		if got := f.String(); got != want {
			t.Errorf("%b: %q, want %q", f, got, want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { _ = FlagUH.String() }); n != 0 {
		t.Errorf("one flag's String allocates %v times", n)
	}
}

// slowBackend sends one request through a route with timeouts to an app
// that answers only when the request is canceled (or after 5s).
func slowBackend(e *flagEnv, timeouts *meshv1.RouteTimeouts) flagResult {
	app := startApp(e.t, http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}))
	srv := startServer(e.t, e.ca, "slow", app, port(80, app, meshv1.Protocol_HTTP))
	c := e.client(Options{}, withRoutes(srv.svc, &meshv1.Route{
		Backends: []*meshv1.Backend{{Service: "slow", Weight: 1}},
		Timeouts: timeouts,
	}))
	return flagResult{c, statusOf(e.t, c, "http://slow/")}
}

// flagResult is what one case of TestEveryRequestCountedWithFlag saw.
type flagResult struct {
	p      *Proxy // whose metrics to check
	status int    // what the client saw; 0 when it saw none
}
