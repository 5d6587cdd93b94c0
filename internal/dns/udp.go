package dns

import (
	"errors"
	"net"
	"net/netip"

	mdns "github.com/miekg/dns"
)

// serveUDP answers one UDP socket in this goroutine: read, answer, write,
// with its buffers reused. miekg/dns's server starts a goroutine per packet;
// on a busy machine the hand-off costs more than the answer (an index
// lookup and a pack), so only forwarded queries, which wait on the
// upstream, get a goroutine of their own. TCP stays with miekg/dns.
//
// The socket is bound to one address or a wildcard; on a wildcard a reply
// leaves from the address the kernel picks for the client, which on
// loopback and single-address hosts is the one asked.
func (s *Server) serveUDP(pc *net.UDPConn) {
	in := make([]byte, mdns.MaxMsgSize)
	out := make([]byte, 0, maxUDPSize)
	for {
		n, from, err := pc.ReadFromUDPAddrPort(in)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Debug("udp read", "err", err)
			continue
		}
		req := new(mdns.Msg)
		if err := req.Unpack(in[:n]); err != nil {
			s.reply(pc, from, formErr(in[:n]), out)
			continue
		}
		resp, forward := s.h.local(req, false)
		switch {
		case forward:
			select {
			case s.forwarding <- struct{}{}:
				s.wg.Go(func() {
					defer func() { <-s.forwarding }()
					s.reply(pc, from, s.h.forward(s.ctx, req, false), nil)
				})
			default:
				s.log.Debug("forwarding full, query dropped", "remote", from.String())
			}
		case resp != nil:
			s.reply(pc, from, resp, out)
		}
	}
}

// reply packs resp into buf (nil: a new buffer) and sends it to.
func (s *Server) reply(pc *net.UDPConn, to netip.AddrPort, resp *mdns.Msg, buf []byte) {
	if resp == nil {
		return
	}
	wire, err := resp.PackBuffer(buf)
	if err != nil {
		s.log.Debug("pack reply", "err", err)
		return
	}
	s.o.Metrics.Reply(resp.Rcode, false)
	if _, err := pc.WriteToUDPAddrPort(wire, to); err != nil {
		s.log.Debug("write reply", "remote", to.String(), "err", err)
	}
}

// formErr is the reply to a query that does not unpack: FORMERR with the
// query's id and opcode, or nil (no reply) when not even its header reads
// or it is a response.
func formErr(wire []byte) *mdns.Msg {
	const headerLen = 12
	if len(wire) < headerLen || wire[2]&0x80 != 0 {
		return nil
	}
	resp := &mdns.Msg{MsgHdr: mdns.MsgHdr{Id: uint16(wire[0])<<8 | uint16(wire[1]), Response: true,
		Opcode: int(wire[2]>>3) & 0xF, Rcode: mdns.RcodeFormatError}}
	return resp
}
