package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"

	mdns "github.com/miekg/dns"
)

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// shopMesh: orders (declared, two named ports, two healthy endpoints on one
// host and one unhealthy), web (implicit: endpoints only, IPv6), and a
// declared service with no endpoints.
func shopMesh(t testing.TB) *testMesh {
	m := newMesh(t)
	m.service("default", "orders", "http:80", "grpc:9090")
	m.endpoint("default", "orders", "orders-default-00000001", "127.0.0.1:15001", true)
	m.endpoint("default", "orders", "orders-default-00000002", "127.0.0.1:15002", true)
	m.endpoint("default", "orders", "orders-default-00000003", "127.0.0.3:15003", false)
	m.endpoint("default", "web", "web-default-00000001", "[::1]:16001", true)
	m.service("shop", "empty", "8080")
	return m
}

type want struct {
	rcode         int
	aa            bool
	answer, extra []string // sorted rdata; extra without OPT
	ns            []string
	noQuestion    bool
}

func TestHandler(t *testing.T) {
	h := shopMesh(t).handler(nil)
	const z = "trellis.local."
	soa := []string{"SOA " + z}
	tests := []struct {
		name string
		req  *mdns.Msg
		want want
	}{
		{"service A: healthy endpoints, one record per host",
			query("orders.default.svc."+z, mdns.TypeA),
			want{rcode: mdns.RcodeSuccess, aa: true, answer: []string{"A 127.0.0.1"}}},
		{"implicit service AAAA",
			query("web.default.svc."+z, mdns.TypeAAAA),
			want{rcode: mdns.RcodeSuccess, aa: true, answer: []string{"AAAA ::1"}}},
		{"short name A",
			query("orders.default.", mdns.TypeA),
			want{rcode: mdns.RcodeSuccess, aa: true, answer: []string{"A 127.0.0.1"}}},
		{"short name NODATA has its own SOA",
			query("orders.default.", mdns.TypeAAAA),
			want{rcode: mdns.RcodeSuccess, aa: true, ns: []string{"SOA orders.default."}}},
		{"below a short name: NXDOMAIN",
			query("x.orders.default.", mdns.TypeA),
			want{rcode: mdns.RcodeNameError, aa: true, ns: []string{"SOA orders.default."}}},
		{"case-insensitive",
			query("ORDERS.Default.SVC.Trellis.LOCAL.", mdns.TypeA),
			want{rcode: mdns.RcodeSuccess, aa: true, answer: []string{"A 127.0.0.1"}}},
		{"SRV: the inbound port, a per-endpoint target, its address as glue",
			query("_grpc._tcp.orders.default.svc."+z, mdns.TypeSRV),
			want{rcode: mdns.RcodeSuccess, aa: true,
				answer: []string{"SRV 15001 orders-default-00000001.orders.default.svc." + z,
					"SRV 15002 orders-default-00000002.orders.default.svc." + z},
				extra: []string{"A 127.0.0.1", "A 127.0.0.1"}}},
		{"implicit service has _http",
			query("_http._tcp.web.default.svc."+z, mdns.TypeSRV),
			want{rcode: mdns.RcodeSuccess, aa: true,
				answer: []string{"SRV 16001 web-default-00000001.web.default.svc." + z}, extra: []string{"AAAA ::1"}}},
		{"SRV target resolves",
			query("orders-default-00000002.orders.default.svc."+z, mdns.TypeA),
			want{rcode: mdns.RcodeSuccess, aa: true, answer: []string{"A 127.0.0.1"}}},
		{"unhealthy endpoint has no name",
			query("orders-default-00000003.orders.default.svc."+z, mdns.TypeA),
			want{rcode: mdns.RcodeNameError, aa: true, ns: soa}},
		{"unknown port: NXDOMAIN",
			query("_admin._tcp.orders.default.svc."+z, mdns.TypeSRV),
			want{rcode: mdns.RcodeNameError, aa: true, ns: soa}},
		{"udp: NXDOMAIN",
			query("_http._udp.orders.default.svc."+z, mdns.TypeSRV),
			want{rcode: mdns.RcodeNameError, aa: true, ns: soa}},
		{"unnamed port: no SRV name",
			query("_tcp.empty.shop.svc."+z, mdns.TypeSRV),
			want{rcode: mdns.RcodeNameError, aa: true, ns: soa}},
		{"NODATA: no AAAA",
			query("orders.default.svc."+z, mdns.TypeAAAA),
			want{rcode: mdns.RcodeSuccess, aa: true, ns: soa}},
		{"NODATA: SRV asked at the service name",
			query("orders.default.svc."+z, mdns.TypeSRV),
			want{rcode: mdns.RcodeSuccess, aa: true, ns: soa}},
		{"NODATA: declared, no endpoints",
			query("empty.shop.svc."+z, mdns.TypeA),
			want{rcode: mdns.RcodeSuccess, aa: true, ns: soa}},
		{"NODATA: a namespace is an empty non-terminal",
			query("default.svc."+z, mdns.TypeA),
			want{rcode: mdns.RcodeSuccess, aa: true, ns: soa}},
		{"NODATA: _tcp is an empty non-terminal",
			query("_tcp.orders.default.svc."+z, mdns.TypeSRV),
			want{rcode: mdns.RcodeSuccess, aa: true, ns: soa}},
		{"NXDOMAIN: unknown service",
			query("payments.default.svc."+z, mdns.TypeA),
			want{rcode: mdns.RcodeNameError, aa: true, ns: soa}},
		{"NXDOMAIN: unknown namespace",
			query("orders.nowhere.svc."+z, mdns.TypeA),
			want{rcode: mdns.RcodeNameError, aa: true, ns: soa}},
		{"NXDOMAIN: in the zone, not svc",
			query("orders."+z, mdns.TypeA),
			want{rcode: mdns.RcodeNameError, aa: true, ns: soa}},
		{"apex SOA",
			query(z, mdns.TypeSOA),
			want{rcode: mdns.RcodeSuccess, aa: true, answer: soa}},
		{"apex NS",
			query(z, mdns.TypeNS),
			want{rcode: mdns.RcodeSuccess, aa: true, answer: []string{"NS ns." + z}}},
		{"not ours: REFUSED",
			query("example.com.", mdns.TypeA),
			want{rcode: mdns.RcodeRefused}},
		{"unknown short name: REFUSED, not NXDOMAIN",
			query("payments.default.", mdns.TypeA),
			want{rcode: mdns.RcodeRefused}},
		{"AXFR: REFUSED",
			query(z, mdns.TypeAXFR),
			want{rcode: mdns.RcodeRefused}},
		{"IXFR: REFUSED",
			query(z, mdns.TypeIXFR),
			want{rcode: mdns.RcodeRefused}},
		{"CHAOS class: REFUSED",
			func() *mdns.Msg {
				m := query("version.bind.", mdns.TypeTXT)
				m.Question[0].Qclass = mdns.ClassCHAOS
				return m
			}(),
			want{rcode: mdns.RcodeRefused}},
		{"CHAOS class for a mesh name: REFUSED",
			func() *mdns.Msg {
				m := query("orders.default.svc."+z, mdns.TypeA)
				m.Question[0].Qclass = mdns.ClassCHAOS
				return m
			}(),
			want{rcode: mdns.RcodeRefused}},
		{"NOTIFY: NOTIMP",
			func() *mdns.Msg { m := query(z, mdns.TypeSOA); m.Opcode = mdns.OpcodeNotify; return m }(),
			want{rcode: mdns.RcodeNotImplemented}},
		{"UPDATE: NOTIMP",
			func() *mdns.Msg { m := query(z, mdns.TypeSOA); m.Opcode = mdns.OpcodeUpdate; return m }(),
			want{rcode: mdns.RcodeNotImplemented}},
		{"no question: FORMERR",
			&mdns.Msg{MsgHdr: mdns.MsgHdr{Id: 7}},
			want{rcode: mdns.RcodeFormatError, noQuestion: true}},
		{"two questions: FORMERR",
			func() *mdns.Msg {
				m := query(z, mdns.TypeA)
				m.Question = append(m.Question, m.Question[0])
				return m
			}(),
			want{rcode: mdns.RcodeFormatError, noQuestion: true}},
		{"two OPT records: FORMERR",
			func() *mdns.Msg {
				m := query(z, mdns.TypeSOA).SetEdns0(1232, false)
				m.Extra = append(m.Extra, m.Extra[0])
				return m
			}(),
			want{rcode: mdns.RcodeFormatError}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.Id = 4242
			resp := h.answer(context.Background(), tc.req, false)
			check(t, tc.req, resp, tc.want)
		})
	}
}

func check(t *testing.T, req, resp *mdns.Msg, w want) {
	t.Helper()
	if resp == nil {
		t.Fatal("no reply")
	}
	if resp.Rcode != w.rcode {
		t.Errorf("rcode %s, want %s", mdns.RcodeToString[resp.Rcode], mdns.RcodeToString[w.rcode])
	}
	if !resp.Response || resp.Id != req.Id {
		t.Errorf("reply header: response %v id %d, want true %d", resp.Response, resp.Id, req.Id)
	}
	if resp.Authoritative != w.aa {
		t.Errorf("AA %v, want %v", resp.Authoritative, w.aa)
	}
	if !w.noQuestion && (len(resp.Question) != 1 || resp.Question[0] != req.Question[0]) {
		t.Errorf("question %v, want %v", resp.Question, req.Question)
	}
	var extra []mdns.RR
	for _, rr := range resp.Extra {
		if _, ok := rr.(*mdns.OPT); !ok {
			extra = append(extra, rr)
		}
	}
	for _, sec := range []struct {
		name      string
		got, want []string
	}{{"answer", rdata(resp.Answer), w.answer}, {"authority", rdata(resp.Ns), w.ns}, {"additional", rdata(extra), w.extra}} {
		slices.Sort(sec.got)
		slices.Sort(sec.want)
		if !slices.Equal(sec.got, sec.want) {
			t.Errorf("%s %q, want %q", sec.name, sec.got, sec.want)
		}
	}
	if _, err := resp.Pack(); err != nil {
		t.Errorf("reply does not pack: %v", err)
	}
}

func TestHandlerTTL(t *testing.T) {
	m := shopMesh(t)
	idx := build(m.state(), true, buildOptions{origin: "trellis.local.", ttl: 42, log: discard()})
	h := &handler{index: func() *index { return idx }, log: discard()}
	for _, q := range []*mdns.Msg{
		query("orders.default.svc.trellis.local.", mdns.TypeA),
		query("_http._tcp.orders.default.svc.trellis.local.", mdns.TypeSRV),
		query("nope.default.svc.trellis.local.", mdns.TypeA),
	} {
		resp := h.answer(context.Background(), q, false)
		for _, rr := range slices.Concat(resp.Answer, resp.Ns, resp.Extra) {
			if rr.Header().Ttl != 42 {
				t.Errorf("%s: TTL %d, want 42", rr.Header().Name, rr.Header().Ttl)
			}
			if soa, ok := rr.(*mdns.SOA); ok && soa.Minttl != 42 {
				t.Errorf("SOA minimum %d, want 42 (the negative TTL)", soa.Minttl)
			}
		}
	}
}

func TestHandlerNotReady(t *testing.T) {
	m := shopMesh(t)
	idx := build(m.state(), false, buildOptions{origin: "trellis.local.", ttl: 5, log: discard()})
	h := &handler{index: func() *index { return idx }, log: discard()}
	for _, tc := range []struct {
		name  string
		rcode int
	}{
		{"orders.default.svc.trellis.local.", mdns.RcodeServerFailure},
		{"example.com.", mdns.RcodeRefused}, // not ours: refused at once
	} {
		req := query(tc.name, mdns.TypeA)
		check(t, req, h.answer(context.Background(), req, false), want{rcode: tc.rcode})
	}
}

func TestHandlerDropsResponses(t *testing.T) {
	h := newMesh(t).handler(nil)
	m := query("trellis.local.", mdns.TypeSOA)
	m.Response = true
	if resp := h.answer(context.Background(), m, false); resp != nil {
		t.Fatalf("answered a response: %v", resp)
	}
}

func TestHandlerEDNS(t *testing.T) {
	h := shopMesh(t).handler(nil)
	req := query("orders.default.svc.trellis.local.", mdns.TypeA).SetEdns0(4096, true)
	resp := h.answer(context.Background(), req, false)
	opt := resp.IsEdns0()
	if opt == nil || opt.UDPSize() != advertisedUDPSize || opt.Version() != 0 {
		t.Fatalf("OPT %v, want version 0 size %d", opt, advertisedUDPSize)
	}
	if resp := h.answer(context.Background(), query("orders.default.svc.trellis.local.", mdns.TypeA), false); resp.IsEdns0() != nil {
		t.Error("OPT in the reply to a query without EDNS0")
	}

	bad := query("orders.default.svc.trellis.local.", mdns.TypeA).SetEdns0(1232, false)
	bad.IsEdns0().SetVersion(1)
	resp = h.answer(context.Background(), bad, false)
	if resp.Rcode != mdns.RcodeBadVers || resp.IsEdns0() == nil || len(resp.Answer) != 0 {
		t.Fatalf("EDNS version 1: rcode %s, OPT %v, answer %v; want BADVERS with OPT, no answer",
			mdns.RcodeToString[resp.Rcode], resp.IsEdns0(), resp.Answer)
	}
	// BADVERS is an extended rcode: it only packs with the OPT record.
	if _, err := resp.Pack(); err != nil {
		t.Fatal(err)
	}
}

// bigMesh has one service with n endpoints on distinct hosts.
func bigMesh(t testing.TB, n int) *testMesh {
	m := newMesh(t)
	for i := range n {
		m.endpoint("default", "big", fmt.Sprintf("big-%03d", i), fmt.Sprintf("127.1.%d.%d:15001", i/250, i%250+1), true)
	}
	return m
}

func TestHandlerTruncation(t *testing.T) {
	h := bigMesh(t, 100).handler(nil)
	name := "big.default.svc.trellis.local."
	tests := []struct {
		name    string
		req     *mdns.Msg
		tcp     bool
		limit   int
		tc      bool
		answers int // -1: fewer than all
	}{
		{"udp, no EDNS0: 512 bytes, TC", query(name, mdns.TypeA), false, 512, true, -1},
		{"udp, EDNS0 1232: TC", query(name, mdns.TypeA).SetEdns0(1232, false), false, 1232, true, -1},
		{"udp, EDNS0 4096: all fit", query(name, mdns.TypeA).SetEdns0(4096, false), false, 4096, false, 100},
		{"udp, EDNS0 65000: capped at 4096, still all fit", query(name, mdns.TypeA).SetEdns0(65000, false), false, 4096, false, 100},
		{"udp, EDNS0 below 512 counts as 512", query(name, mdns.TypeA).SetEdns0(100, false), false, 512, true, -1},
		{"tcp: all", query(name, mdns.TypeA), true, mdns.MaxMsgSize, false, 100},
		{"SRV over udp: TC", query("_http._tcp."+name, mdns.TypeSRV), false, 512, true, -1},
		{"SRV over tcp: all", query("_http._tcp."+name, mdns.TypeSRV), true, mdns.MaxMsgSize, false, 100},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp := h.answer(context.Background(), tc.req, tc.tcp)
			wire, err := resp.Pack()
			if err != nil {
				t.Fatal(err)
			}
			if len(wire) > tc.limit {
				t.Errorf("reply is %d bytes, limit %d", len(wire), tc.limit)
			}
			if resp.Truncated != tc.tc {
				t.Errorf("TC %v, want %v", resp.Truncated, tc.tc)
			}
			switch {
			case tc.answers < 0 && len(resp.Answer) >= 100:
				t.Errorf("%d answers in a truncated reply", len(resp.Answer))
			case tc.answers >= 0 && len(resp.Answer) != tc.answers:
				t.Errorf("%d answers, want %d", len(resp.Answer), tc.answers)
			}
			if (tc.req.IsEdns0() != nil) != (resp.IsEdns0() != nil) {
				t.Errorf("OPT in reply %v, in request %v", resp.IsEdns0() != nil, tc.req.IsEdns0() != nil)
			}
		})
	}
}

func TestHandlerShufflesPerAnswer(t *testing.T) {
	h := bigMesh(t, 10).handler(nil)
	firsts := map[string]bool{}
	for range 50 {
		resp := h.answer(context.Background(), query("big.default.svc.trellis.local.", mdns.TypeA), false)
		if len(resp.Answer) != 10 {
			t.Fatalf("%d answers, want 10", len(resp.Answer))
		}
		firsts[resp.Answer[0].(*mdns.A).A.String()] = true
	}
	// Fixed order would give one first record; 50 shuffles of 10 give one
	// with probability 10^-49.
	if len(firsts) < 2 {
		t.Fatalf("the same first record in 50 answers: %v", firsts)
	}
}

// fakeUpstream records what it is asked and answers example.com.
type fakeUpstream struct {
	asked []*mdns.Msg
	tcp   []bool
	err   error
}

func (f *fakeUpstream) Exchange(_ context.Context, req *mdns.Msg, tcp bool) (*mdns.Msg, error) {
	f.asked = append(f.asked, req)
	f.tcp = append(f.tcp, tcp)
	if f.err != nil {
		return nil, f.err
	}
	resp := new(mdns.Msg).SetReply(req)
	resp.RecursionAvailable = true
	if rr, err := mdns.NewRR(req.Question[0].Name + " 60 IN A 192.0.2.1"); err == nil {
		resp.Answer = []mdns.RR{rr}
	}
	return resp, nil
}

func TestHandlerForward(t *testing.T) {
	up := &fakeUpstream{}
	h := shopMesh(t).handler(up)
	req := query("Example.com.", mdns.TypeA)
	req.Id = 99
	resp := h.answer(context.Background(), req, true)
	check(t, req, resp, want{rcode: mdns.RcodeSuccess, answer: []string{"A 192.0.2.1"}})
	if len(up.asked) != 1 || !up.tcp[0] || up.asked[0].Question[0].Name != "Example.com." {
		t.Fatalf("upstream asked %v over tcp %v, want Example.com. once over tcp", up.asked, up.tcp)
	}
	if !resp.RecursionAvailable {
		t.Error("RA not set with forwarding on")
	}

	// Mesh names, transfers and in-zone NXDOMAINs never go upstream.
	for _, q := range []*mdns.Msg{
		query("orders.default.svc.trellis.local.", mdns.TypeA),
		query("nope.default.svc.trellis.local.", mdns.TypeA),
		query("orders.default.", mdns.TypeA),
		query("example.com.", mdns.TypeAXFR),
	} {
		h.answer(context.Background(), q, false)
	}
	if len(up.asked) != 1 {
		t.Fatalf("upstream asked %d times, want once", len(up.asked))
	}

	// Other classes are refused, not forwarded.
	chaos := query("version.bind.", mdns.TypeTXT)
	chaos.Question[0].Qclass = mdns.ClassCHAOS
	check(t, chaos, h.answer(context.Background(), chaos, false), want{rcode: mdns.RcodeRefused})
	if len(up.asked) != 1 {
		t.Fatalf("CHAOS query forwarded")
	}

	up.err = errors.New("upstream down")
	req = query("example.com.", mdns.TypeA)
	check(t, req, h.answer(context.Background(), req, false), want{rcode: mdns.RcodeServerFailure})
}

func TestLastLabels(t *testing.T) {
	for _, tc := range []struct{ name, want string }{
		{"orders.default.", "orders.default."},
		{"a.orders.default.", "orders.default."},
		{"default.", ""},
		{".", ""},
		{"", ""},
		{"no-dot", ""},
	} {
		if got := lastLabels(tc.name, 2); got != tc.want {
			t.Errorf("lastLabels(%q) = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestEndpointLabel(t *testing.T) {
	taken := map[string]bool{}
	if got := endpointLabel("orders-default-1a2b3c4d", taken); got != "orders-default-1a2b3c4d" {
		t.Errorf("a label id: %q", got)
	}
	got := endpointLabel("Orders/with.dots", taken)
	if !strings.HasPrefix(got, "ep-") || len(got) != len("ep-")+12 {
		t.Errorf("a non-label id: %q, want ep-<12 hex>", got)
	}
	if again := endpointLabel("orders-default-1a2b3c4d", taken); !strings.HasPrefix(again, "ep-") {
		t.Errorf("a taken id: %q, want its hash", again)
	}
	if none := endpointLabel("orders-default-1a2b3c4d", taken); none != "" {
		t.Errorf("id and hash both taken: %q, want none", none)
	}
}
