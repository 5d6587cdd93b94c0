package dns

import (
	"context"
	"net"
	"testing"

	mdns "github.com/miekg/dns"
)

// BenchmarkAnswer is the handler's work per query: unpack, answer, pack
// (what the server adds is socket I/O).
func BenchmarkAnswer(b *testing.B) {
	m := newMesh(b)
	for j := range 3 {
		m.endpoint("default", "svc", "svc-"+string(rune('a'+j)), net.JoinHostPort("127.3.0."+string(rune('1'+j)), "15006"), true)
	}
	h := m.handler(nil)
	wire, err := query("svc.default.svc.trellis.local.", mdns.TypeA).Pack()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		req := new(mdns.Msg)
		if err := req.Unpack(wire); err != nil {
			b.Fatal(err)
		}
		resp := h.answer(context.Background(), req, false)
		if _, err := resp.Pack(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkServerUDP is one query at a time over loopback UDP.
func BenchmarkServerUDP(b *testing.B) {
	m := newMesh(b)
	m.endpoint("default", "svc", "svc-a", "127.3.0.1:15006", true)
	s := startServer(b, m, Options{})
	m.caughtUp(s)
	conn, err := mdns.Dial("udp", s.Addr())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	q := query("svc.default.svc.trellis.local.", mdns.TypeA)
	b.ReportAllocs()
	for b.Loop() {
		if err := conn.WriteMsg(q); err != nil {
			b.Fatal(err)
		}
		if _, err := conn.ReadMsg(); err != nil {
			b.Fatal(err)
		}
	}
}
