package proxy

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

func testExchange() *Exchange {
	ex := new(exchangePool).get()
	ex.ctx, ex.clientCtx = context.Background(), context.Background()
	ex.Header = http.Header{}
	return ex
}

// TestTimeoutUntilResponseHeader: the route timeout cancels an attempt that
// has no response header by the deadline, and leaves alone one whose header
// came in time (its body may take longer).
func TestTimeoutUntilResponseHeader(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		slow := HandlerFunc(func(ex *Exchange) *Response {
			select {
			case <-ex.ctx.Done():
				return attemptFailed(ex, "app", ex.ctx.Err())
			case <-time.After(time.Hour):
				return &Response{Status: 200}
			}
		})
		ex := testExchange()
		start := time.Now()
		resp := requestTimeout(100 * time.Millisecond)(slow).Serve(ex)
		if resp.Status != http.StatusGatewayTimeout || ex.Flags != FlagUT || time.Since(start) != 100*time.Millisecond {
			t.Fatalf("slow upstream: %d %v after %v; want 504 UT after 100ms", resp.Status, ex.Flags, time.Since(start))
		}
		ex.release()

		var attemptCtx context.Context
		fast := HandlerFunc(func(ex *Exchange) *Response {
			attemptCtx = ex.ctx
			return &Response{Status: 200}
		})
		ex = testExchange()
		resp = requestTimeout(100 * time.Millisecond)(fast).Serve(ex)
		time.Sleep(time.Second)
		if resp.Status != 200 || attemptCtx.Err() != nil {
			t.Fatalf("answered in time: %d, context %v a second later; want 200 and a live context for the body", resp.Status, attemptCtx.Err())
		}
		// Released, it is kept for the exchange's next use (see
		// timeout_ctx.go), not ended: TestTimeoutCtxReuse.
		ex.release()
	})
}

// TestNoTimeoutNoFilter: a route without timeouts gets no timeout stage.
func TestNoTimeoutNoFilter(t *testing.T) {
	var end Handler = HandlerFunc(func(*Exchange) *Response { return nil })
	if h := requestTimeout(0)(end); h == nil || h.Serve(nil) != nil {
		t.Fatal("zero timeout changed the chain")
	}
}

// TestTimeoutCoversHeaderNotBody through real proxies: a stream whose
// header comes at once and whose body takes longer than the route timeout
// arrives whole.
func TestTimeoutCoversHeaderNotBody(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "header now, ")
		w.(http.Flusher).Flush()
		time.Sleep(300 * time.Millisecond)
		_, _ = io.WriteString(w, "body later")
	}))
	srv := startServer(t, ca, "stream", app, port(80, app, meshv1.Protocol_HTTP))
	client := startClient(t, ca, Options{})
	svc := withRoutes(srv.svc, &meshv1.Route{
		Backends: []*meshv1.Backend{{Service: "stream", Weight: 1}},
		Timeouts: &meshv1.RouteTimeouts{Request: durationpb.New(100 * time.Millisecond), BackendRequest: durationpb.New(100 * time.Millisecond)},
	})
	if err := client.Update(snapshot("1", svc)); err != nil {
		t.Fatal(err)
	}
	resp, body := get(t, proxyClient(client), "http://stream/", nil)
	if resp.StatusCode != 200 || body != "header now, body later" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}

// TestHeaderModifierApply pins Gateway API semantics on one header map, and
// that add never writes into an array another header shares.
func TestHeaderModifierApply(t *testing.T) {
	shared := make([]string, 1, 4)
	shared[0] = "a"
	other := http.Header{"X-Add": shared}
	h := http.Header{"X-Set": {"1", "2"}, "X-Add": shared, "X-Del": {"x"}}
	m := headerModifier{
		set:    []headerValue{{"X-Set", []string{"s"}}, {"X-New", []string{"n"}}},
		add:    []headerValue{{"X-Add", []string{"b"}}},
		remove: []string{"X-Del"},
	}
	m.apply(h)
	for k, want := range map[string]string{"X-Set": "s", "X-New": "n", "X-Add": "a,b", "X-Del": ""} {
		if got := strings.Join(h[k], ","); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	h2 := http.Header{"X-Add": other["X-Add"]}
	m2 := headerModifier{add: []headerValue{{"X-Add", []string{"c"}}}}
	m2.apply(h2)
	if got := strings.Join(h["X-Add"], ","); got != "a,b" {
		t.Fatalf("a second apply on a header sharing the array changed the first: %q", got)
	}
}

// TestPeerIDOncePerConnection: the inbound edge reads the peer's SPIFFE ID
// from its certificate on the connection's first request and reuses it, and
// the header value it hands the app is the same slice every time.
func TestPeerIDOncePerConnection(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	s := ca.svid(t, spiffeFor("frontend"))
	ctx := withConnInfo(context.Background(), nil)
	r := httptest.NewRequest("GET", "/", nil).WithContext(ctx)
	r.TLS = &tls.ConnectionState{PeerCertificates: s.Certificates}
	id, hdr := connPeer(r)
	if id != spiffeFor("frontend") || len(hdr) != 1 || hdr[0] != id {
		t.Fatalf("first request: %q %q", id, hdr)
	}
	// Later requests on the connection: no certificate is looked at again.
	r2 := httptest.NewRequest("GET", "/", nil).WithContext(ctx)
	r2.TLS = &tls.ConnectionState{}
	id2, hdr2 := connPeer(r2)
	if id2 != id || len(hdr2) != 1 || &hdr2[0] != &hdr[0] {
		t.Fatalf("second request: %q %q; want the first request's ID and header slice", id2, hdr2)
	}
	if n := testing.AllocsPerRun(100, func() { connPeer(r2) }); n != 0 {
		t.Fatalf("connPeer allocates %v per request", n)
	}
}
