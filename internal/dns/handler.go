package dns

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"strings"

	mdns "github.com/miekg/dns"
)

// Sizes of replies.
const (
	// advertisedUDPSize is the EDNS0 buffer size the server announces: the
	// DNS Flag Day 2020 value, which fits any path's MTU.
	advertisedUDPSize = 1232
	// maxUDPSize caps a client's announced buffer: past it UDP fragments,
	// and a client that wants more can use TCP.
	maxUDPSize = 4096
)

// exchanger sends a query to the upstream resolver (forwarding).
type exchanger interface {
	Exchange(ctx context.Context, req *mdns.Msg, tcp bool) (*mdns.Msg, error)
}

// handler answers queries from the current index. It is a plain function of
// (request, index) rather than a chain of plugins: the steps below always
// run in this order and none is optional except forwarding.
type handler struct {
	index func() *index
	fwd   exchanger // nil: forwarding off
	log   *slog.Logger
}

// answer is the reply to req, received over TCP if tcp. It returns nil for
// a message that gets no reply (a response: answering it could loop).
func (h *handler) answer(ctx context.Context, req *mdns.Msg, tcp bool) *mdns.Msg {
	resp, forward := h.local(req, tcp)
	if forward {
		return h.forward(ctx, req, tcp)
	}
	return resp
}

// local is answer without the upstream: forward is true (and resp nil)
// when req is for the upstream, which the caller then asks. The UDP loop
// answers local queries inline and only forwarded ones in a goroutine.
func (h *handler) local(req *mdns.Msg, tcp bool) (resp *mdns.Msg, forward bool) {
	if req.Response {
		return nil, false
	}
	resp = &mdns.Msg{MsgHdr: mdns.MsgHdr{Id: req.Id, Response: true, Opcode: req.Opcode,
		RecursionDesired: req.RecursionDesired, CheckingDisabled: req.CheckingDisabled,
		RecursionAvailable: h.fwd != nil}}
	if len(req.Question) == 1 {
		resp.Question = []mdns.Question{req.Question[0]}
	}
	opt, optOK := requestOPT(req)
	switch {
	case req.Opcode != mdns.OpcodeQuery:
		resp.Rcode = mdns.RcodeNotImplemented
	case len(req.Question) != 1 || !optOK:
		resp.Rcode = mdns.RcodeFormatError
	case opt != nil && opt.Version() != 0:
		resp.Rcode = mdns.RcodeBadVers
	default:
		if h.resolve(req, resp) {
			return nil, true
		}
	}
	return finish(resp, opt, tcp), false
}

// resolve fills resp for a well-formed query, or says the name is for the
// upstream.
func (h *handler) resolve(req, resp *mdns.Msg) (forward bool) {
	q := req.Question[0]
	if q.Qtype == mdns.TypeAXFR || q.Qtype == mdns.TypeIXFR {
		// The zone changes with every endpoint; nobody should copy it.
		resp.Rcode = mdns.RcodeRefused
		return false
	}
	if q.Qclass != mdns.ClassINET {
		// CHAOS (version.bind), HESIOD, ANY: nothing of the mesh, and
		// nothing to ask an upstream for either.
		resp.Rcode = mdns.RcodeRefused
		return false
	}
	idx := h.index()
	n, z, ours := idx.lookup(strings.ToLower(q.Name))
	switch {
	case !ours && h.fwd != nil:
		return true
	case !ours:
		resp.Rcode = mdns.RcodeRefused
	case !idx.ready:
		// Before the view has listed the store every name would look
		// absent, and a cached NXDOMAIN would outlive the start.
		resp.Rcode = mdns.RcodeServerFailure
	default:
		authoritative(resp, q.Qtype, n, z)
	}
	return false
}

// authoritative fills in an answer from the index: records (in a new random
// order per reply), NODATA (the name exists, not the type) or NXDOMAIN, the
// last two with the zone's SOA in the authority section (RFC 2308).
func authoritative(resp *mdns.Msg, qtype uint16, n *node, z *zone) {
	resp.Authoritative = true
	if n == nil {
		resp.Rcode = mdns.RcodeNameError
		resp.Ns = []mdns.RR{z.soa}
		return
	}
	answer, extra := n.records(qtype)
	if len(answer) == 0 {
		resp.Ns = []mdns.RR{z.soa}
		return
	}
	// Fresh slices: the index's are shared by every concurrent reply, and
	// finish appends the OPT record to Extra.
	resp.Answer = make([]mdns.RR, len(answer))
	copy(resp.Answer, answer)
	rand.Shuffle(len(resp.Answer), func(i, j int) {
		resp.Answer[i], resp.Answer[j] = resp.Answer[j], resp.Answer[i]
	})
	if len(extra) > 0 {
		resp.Extra = make([]mdns.RR, len(extra), len(extra)+1)
		copy(resp.Extra, extra)
	}
}

// forward sends req upstream under a fresh id (so an off-path attacker
// cannot guess it from the client's) and relays the reply; SERVFAIL if the
// upstream fails.
func (h *handler) forward(ctx context.Context, req *mdns.Msg, tcp bool) *mdns.Msg {
	out := req.Copy()
	out.Id = mdns.Id()
	reply, err := h.fwd.Exchange(ctx, out, tcp)
	if err != nil || reply == nil {
		h.log.Debug("forward failed", "name", req.Question[0].Name, "err", err)
		resp := new(mdns.Msg)
		resp.SetRcode(req, mdns.RcodeServerFailure)
		resp.RecursionAvailable = true
		opt, _ := requestOPT(req)
		return finish(resp, opt, tcp)
	}
	reply.Id = req.Id
	// The upstream saw the client's OPT and sized its reply to it; cut it
	// to size anyway rather than trust it to.
	opt, _ := requestOPT(req)
	reply.Truncate(replySize(opt, tcp))
	return reply
}

// requestOPT returns the request's EDNS0 OPT record, nil if none; ok is
// false for more than one (FORMERR, RFC 6891 §6.1.1).
func requestOPT(req *mdns.Msg) (opt *mdns.OPT, ok bool) {
	for _, rr := range req.Extra {
		if o, isOPT := rr.(*mdns.OPT); isOPT {
			if opt != nil {
				return nil, false
			}
			opt = o
		}
	}
	return opt, true
}

// finish adds an OPT record when the client sent one and fits the reply in
// what the client can take, setting TC if records had to go (the client
// then asks again over TCP).
func finish(resp *mdns.Msg, opt *mdns.OPT, tcp bool) *mdns.Msg {
	if opt != nil {
		resp.SetEdns0(advertisedUDPSize, false)
	}
	resp.Truncate(replySize(opt, tcp))
	return resp
}

// replySize is the largest reply the client takes: 64 KiB over TCP, else
// its EDNS0 buffer size (at least 512, at most maxUDPSize), else 512.
func replySize(opt *mdns.OPT, tcp bool) int {
	switch {
	case tcp:
		return mdns.MaxMsgSize
	case opt == nil:
		return mdns.MinMsgSize
	}
	return min(max(int(opt.UDPSize()), mdns.MinMsgSize), maxUDPSize)
}
