package dns

import (
	"context"
	"fmt"
	"testing"

	mdns "github.com/miekg/dns"
)

// FuzzHandle: arbitrary bytes off the wire → unpack → handler, over UDP and
// TCP, forwarding on and off. A message that does not unpack gets the UDP
// loop's FORMERR, which must pack, or nothing; anything else gets no reply
// only if it is a response,
// and every reply packs, fits the transport's size, echoes the id, and
// unpacks again.
func FuzzHandle(f *testing.F) {
	for _, q := range []*mdns.Msg{
		query("orders.default.svc.trellis.local.", mdns.TypeA),
		query("_grpc._tcp.orders.default.svc.trellis.local.", mdns.TypeSRV),
		query("orders.default.", mdns.TypeAAAA),
		query("big.default.svc.trellis.local.", mdns.TypeA).SetEdns0(1232, true),
		query("trellis.local.", mdns.TypeAXFR),
		query("example.com.", mdns.TypeANY),
		{MsgHdr: mdns.MsgHdr{Opcode: mdns.OpcodeUpdate}},
	} {
		wire, err := q.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(wire, false, false)
		f.Add(wire, true, true)
	}
	m := shopMesh(f)
	for i := range 60 {
		m.endpoint("default", "big", fmt.Sprintf("big-%02d", i),
			fmt.Sprintf("127.2.0.%d:15001", i+1), true)
	}
	plain := m.handler(nil)
	forwarding := m.handler(&fakeUpstream{})
	f.Fuzz(func(t *testing.T, wire []byte, tcp, fwd bool) {
		req := new(mdns.Msg)
		if err := req.Unpack(wire); err != nil {
			// The UDP loop answers FORMERR when the header reads.
			if resp := formErr(wire); resp != nil {
				out, err := resp.Pack()
				back := new(mdns.Msg)
				if err != nil || back.Unpack(out) != nil || back.Rcode != mdns.RcodeFormatError ||
					back.Id != uint16(wire[0])<<8|uint16(wire[1]) {
					t.Fatalf("FORMERR reply %x (%v) to %x", out, err, wire)
				}
			}
			return
		}
		h := plain
		if fwd {
			h = forwarding
		}
		resp := h.answer(context.Background(), req, tcp)
		if resp == nil {
			if !req.Response {
				t.Fatalf("no reply to a query: %v", req)
			}
			return
		}
		out, err := resp.Pack()
		if err != nil {
			t.Fatalf("reply does not pack: %v\n%v", err, resp)
		}
		opt, _ := requestOPT(req)
		if limit := replySize(opt, tcp); len(out) > limit {
			t.Fatalf("reply of %d bytes, the client takes %d", len(out), limit)
		}
		back := new(mdns.Msg)
		if err := back.Unpack(out); err != nil {
			t.Fatalf("reply does not unpack: %v", err)
		}
		if back.Id != req.Id || !back.Response {
			t.Fatalf("reply id %d response %v, want %d true", back.Id, back.Response, req.Id)
		}
	})
}
