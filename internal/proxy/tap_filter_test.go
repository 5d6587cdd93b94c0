package proxy

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/tap"
)

// takeEvents drains what a proxy's taps queued.
func takeEvents(p *Proxy) []*meshv1.TapEvent { return p.Taps().Take(1 << 20).GetEvents() }

// TestTapSeesBothSides: one request through a client proxy and the orders
// proxy shows up once on each side with the request's fields, the query
// string and every header value outside the allow-list left out; a refused
// request (no such service) is tapped too; nothing is queued while no tap
// runs.
func TestTapSeesBothSides(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	orders := startServer(t, ca, "orders", app, port(80, app, meshv1.Protocol_HTTP))
	client := startClient(t, ca, Options{Identity: spiffeFor("frontend")})
	if err := client.Update(snapshot("1", orders.svc)); err != nil {
		t.Fatal(err)
	}
	c := proxyClient(client)
	secretHdrs := map[string]string{"Authorization": "Bearer s3cret-token", "Cookie": "session=s3cret-cookie", "User-Agent": "tap-test", "X-Api-Key": "s3cret-key"}

	get(t, c, "http://orders/untapped", nil)
	if client.Taps().Load() != nil || len(takeEvents(client)) != 0 || len(takeEvents(orders.proxy)) != 0 {
		t.Fatal("events queued while no tap runs")
	}
	for _, p := range []*Proxy{client, orders.proxy} {
		if err := p.Taps().Apply(&meshv1.TapRequest{TapId: "t1"}); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	if resp, _ := get(t, c, "http://orders/api/items?token=s3cret-query", secretHdrs); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if resp, _ := get(t, c, "http://nosuch/x", nil); resp.StatusCode != 503 {
		t.Fatalf("unknown service: status %d", resp.StatusCode)
	}
	out, in := takeEvents(client), takeEvents(orders.proxy)
	if len(out) != 2 || len(in) != 1 {
		t.Fatalf("%d outbound and %d inbound events, want 2 and 1", len(out), len(in))
	}
	o, r, i := out[0], out[1], in[0]
	if o.GetTapId() != "t1" || o.GetDirection() != "outbound" || o.GetMethod() != "GET" || o.GetAuthority() != "orders" ||
		o.GetPath() != "/api/items" || o.GetStatus() != 200 || o.GetSourceIdentity() != spiffeFor("frontend") ||
		o.GetDestinationIdentity() != spiffeFor("orders") || o.GetSourceService() != "frontend.default" ||
		o.GetDestinationService() != "orders.default" || o.GetResponseFlags() != "-" {
		t.Errorf("outbound event %v", o)
	}
	if st := time.Unix(0, o.GetStartUnixNano()); st.Before(start.Add(-time.Second)) || o.GetLatencyNanos() <= 0 || o.GetLatencyNanos() > int64(10*time.Second) {
		t.Errorf("outbound event start %v latency %v", st, time.Duration(o.GetLatencyNanos()))
	}
	if i.GetDirection() != "inbound" || i.GetPath() != "/api/items" || i.GetStatus() != 200 ||
		i.GetSourceIdentity() != spiffeFor("frontend") || i.GetDestinationIdentity() != spiffeFor("orders") ||
		i.GetDestinationService() != "orders.default" {
		t.Errorf("inbound event %v", i)
	}
	if r.GetStatus() != 503 || r.GetResponseFlags() != "NC" || r.GetPath() != "/x" {
		t.Errorf("refused request's event %v", r)
	}
	for _, ev := range []*meshv1.TapEvent{o, i} {
		if ev.GetHeaders()["user-agent"] != "tap-test" {
			t.Errorf("%s event headers %v: want the allow-listed user-agent", ev.GetDirection(), ev.GetHeaders())
		}
		if s := ev.String(); strings.Contains(s, "s3cret") {
			t.Errorf("%s event carries a secret: %s", ev.GetDirection(), s)
		}
	}
}

// TestTapFilters: a tap gets only what its path, method and destination
// filter match, at most its rate, and the rest is counted skipped.
func TestTapFilters(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	app := startApp(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	orders := startServer(t, ca, "orders", app, port(80, app, meshv1.Protocol_HTTP))
	client := startClient(t, ca, Options{Identity: spiffeFor("frontend")})
	if err := client.Update(snapshot("1", orders.svc)); err != nil {
		t.Fatal(err)
	}
	c := proxyClient(client)
	for _, r := range []*meshv1.TapRequest{
		{TapId: "path", PathPrefix: "/api/"},
		{TapId: "post", Method: "post"},
		{TapId: "to-other", To: "payments.default"},
		{TapId: "to-orders", To: "orders.default"},
		{TapId: "rate", MaxRps: 3},
	} {
		if err := client.Taps().Apply(r); err != nil {
			t.Fatal(err)
		}
	}
	for range 10 {
		get(t, c, "http://orders/api/a", nil)
		get(t, c, "http://orders/other", nil)
	}
	msg := client.Taps().Take(1 << 20)
	byTap := map[string]int{}
	for _, ev := range msg.GetEvents() {
		byTap[ev.GetTapId()]++
		if ev.GetTapId() == "path" && !strings.HasPrefix(ev.GetPath(), "/api/") {
			t.Errorf("path tap got %s", ev.GetPath())
		}
	}
	if byTap["path"] != 10 || byTap["post"] != 0 || byTap["to-other"] != 0 || byTap["to-orders"] != 20 || byTap["rate"] != 3 {
		t.Errorf("events by tap %v; want path 10, post 0, to-other 0, to-orders 20, rate 3", byTap)
	}
	skipped := map[string]uint64{}
	for _, s := range msg.GetSkipped() {
		skipped[s.GetTapId()] = s.GetCount()
	}
	if skipped["rate"] != 17 || len(skipped) != 1 {
		t.Errorf("skipped %v; want rate 17 only", skipped)
	}
}

// BenchmarkTapFilter: the tap slot alone, over a handler that answers at
// once (baseline: that handler without the slot). idle is what every request pays while nothing is tapped (one
// atomic load); nomatch a tap running for another path; sampled a tap
// taking every request (events dropped as the queue fills: the cost of
// building one is in the numbers only until then).
func BenchmarkTapFilter(b *testing.B) {
	for _, tc := range []struct {
		name string
		req  *meshv1.TapRequest
	}{
		{"baseline", nil}, // the handler alone, no tap slot
		{"idle", nil},
		{"nomatch", &meshv1.TapRequest{TapId: "x", PathPrefix: "/other"}},
		{"sampled", &meshv1.TapRequest{TapId: "x", MaxRps: tap.MaxMaxRPS}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			p, err := New(Options{Service: "frontend"})
			if err != nil {
				b.Fatal(err)
			}
			if tc.req != nil {
				if err := p.Taps().Apply(tc.req); err != nil {
					b.Fatal(err)
				}
			}
			ok := &Response{Status: 200}
			var h Handler = HandlerFunc(func(*Exchange) *Response { ok.Body = nil; return ok })
			if tc.name != "baseline" {
				h = p.tapFilter(false)(h)
			}
			hdr := http.Header{"User-Agent": []string{"bench"}}
			ex := p.exchanges.get()
			ex.ctx, ex.clientCtx = context.Background(), context.Background()
			ex.Method, ex.Authority, ex.Path, ex.Header, ex.Start = "GET", "api", "/b", hdr, time.Now()
			b.ReportAllocs()
			for b.Loop() {
				resp := h.Serve(ex)
				if resp.Body != nil {
					resp.Body.Close()
				}
				if tc.name == "sampled" {
					p.Taps().Take(1 << 20)
				}
			}
		})
	}
}
