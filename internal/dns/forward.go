package dns

import (
	"context"
	"fmt"
	"net"
	"time"

	mdns "github.com/miekg/dns"
)

// upstream forwards non-mesh queries to one resolver, over the transport
// the client used: a UDP client gets the upstream's UDP reply (TC included)
// and comes back over TCP, which is then forwarded over TCP.
type upstream struct {
	addr     string
	udp, tcp *mdns.Client
}

func newUpstream(addr string, timeout time.Duration) *upstream {
	return &upstream{
		addr: addr,
		// UDPSize lets the client read what the upstream sends back for an
		// EDNS0 query; the reply is cut to the client's own size later.
		udp: &mdns.Client{Net: "udp", Timeout: timeout, UDPSize: mdns.MaxMsgSize},
		tcp: &mdns.Client{Net: "tcp", Timeout: timeout},
	}
}

// Exchange implements exchanger.
func (u *upstream) Exchange(ctx context.Context, req *mdns.Msg, tcp bool) (*mdns.Msg, error) {
	c := u.udp
	if tcp {
		c = u.tcp
	}
	reply, _, err := c.ExchangeContext(ctx, req, u.addr)
	if err != nil {
		return nil, fmt.Errorf("dns: forward to %s: %w", u.addr, err)
	}
	return reply, nil
}

// upstreamAddr accepts "host" or "host:port" (port 53 by default).
func upstreamAddr(s string) (string, error) {
	if _, _, err := net.SplitHostPort(s); err == nil {
		return s, nil
	}
	if s == "" {
		return "", fmt.Errorf("dns: forward: empty address")
	}
	addr := net.JoinHostPort(s, "53")
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", fmt.Errorf("dns: forward: %q: %w", s, err)
	}
	return addr, nil
}
