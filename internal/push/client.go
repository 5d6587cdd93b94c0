package push

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// ClientOptions configure Dial.
type ClientOptions struct {
	// Addr is the control plane's gRPC host:port, or several replicas'
	// as a comma-separated list (host:port,host:port): the connection uses
	// one at a time (gRPC's pick_first over a static resolver, the list
	// shuffled per proxy so proxies spread over the replicas) and moves to
	// the next one that answers when it breaks.
	Addr string
	// RootCAs verify the control plane's certificate (from --ca-file).
	RootCAs *x509.CertPool
	// Roots, if set and not returning nil, replaces RootCAs per handshake:
	// the proxy's current trust bundle, so the control plane's certificate
	// can move to a rotated CA's chain without a restart.
	Roots func() *x509.CertPool
	// GetClientCertificate returns the current workload certificate
	// (hot-swapped); it may return an empty certificate before the first
	// Certify.
	GetClientCertificate func(*tls.CertificateRequestInfo) (*tls.Certificate, error)
	Logger               *slog.Logger
}

// Client talks to the control plane's Mesh service from a proxy.
type Client struct {
	o   ClientOptions
	log *slog.Logger

	// dial builds a connection that tries avoid ("" none) last; nil in
	// tests that inject mesh directly.
	dial func(avoid string) (*grpc.ClientConn, error)

	mu     sync.Mutex
	cc     *grpc.ClientConn
	mesh   meshv1.MeshClient
	gen    uint64
	closed bool

	// resub (buffer 1) asks the running watch to resend subscriptions.
	resub chan struct{}
	// replica is the control-plane replica the Watch is attached to.
	replica atomic.Pointer[string]
}

// Replica names the control-plane replica the session's Watch stream is
// attached to ("" before the first stream, or from a server that does not
// say).
func (c *Client) Replica() string {
	if r := c.replica.Load(); r != nil {
		return *r
	}
	return ""
}

// Dial prepares a client; it connects lazily, on the first RPC.
func Dial(o ClientOptions) (*Client, error) {
	if o.Addr == "" {
		return nil, errors.New("push: dial: address required")
	}
	if _, err := ParseAddrs(o.Addr); err != nil {
		return nil, fmt.Errorf("push: dial: %w", err)
	}
	if o.RootCAs == nil {
		return nil, errors.New("push: dial: root CAs required to verify the control plane (--ca-file)")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Client{o: o, log: o.Logger.With("component", "push-client"), resub: make(chan struct{}, 1)}
	c.dial = c.newConn
	cc, err := c.dial("")
	if err != nil {
		return nil, err
	}
	c.cc, c.mesh = cc, meshv1.NewMeshClient(cc)
	return c, nil
}

// newConn builds a connection over every address; avoid, when set, is
// tried last (see avoid).
func (c *Client) newConn(avoid string) (*grpc.ClientConn, error) {
	get := c.o.GetClientCertificate
	tc := &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    c.o.RootCAs,
		GetClientCertificate: func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if get == nil {
				return &tls.Certificate{}, nil
			}
			cert, err := get(cri)
			if err != nil || cert == nil {
				// No certificate yet: handshake without one (Certify with a token).
				return &tls.Certificate{}, err
			}
			return cert, nil
		},
	}
	if c.o.Roots != nil {
		// crypto/tls has no per-handshake RootCAs hook for clients:
		// verify in VerifyConnection instead, with the same checks.
		tc.InsecureSkipVerify = true //nolint:gosec // verified in VerifyConnection
		tc.VerifyConnection = c.verifyServer
	}
	addrs, err := ParseAddrs(c.o.Addr)
	if err != nil {
		return nil, fmt.Errorf("push: dial: %w", err)
	}
	serviceConfig := failoverServiceConfig
	if avoid != "" {
		addrs, serviceConfig = avoiding(addrs, avoid), orderedServiceConfig
	}
	// A resolver per connection: a redial builds a new one, and a static
	// list needs no updates. Each address carries its own host as the TLS
	// server name, as it would with one address as the target.
	r := manual.NewBuilderWithScheme(resolverScheme)
	state := resolver.State{Addresses: make([]resolver.Address, len(addrs))}
	for i, a := range addrs {
		host, _, _ := net.SplitHostPort(a)
		state.Addresses[i] = resolver.Address{Addr: a, ServerName: host}
	}
	r.InitialState(state)
	cc, err := grpc.NewClient(resolverScheme+":///control",
		grpc.WithResolvers(r),
		grpc.WithDefaultServiceConfig(serviceConfig),
		grpc.WithTransportCredentials(credentials.NewTLS(tc)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                clientPingEvery,
			Timeout:             clientPingTimeout,
			PermitWithoutStream: true,
		}),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  100 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   maxBackoff,
			},
			MinConnectTimeout: 5 * time.Second,
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("push: dial %s: %w", c.o.Addr, err)
	}
	return cc, nil
}

// verifyServer checks the control plane's chain and name as crypto/tls
// would, against Roots() (RootCAs while it returns nil).
func (c *Client) verifyServer(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("push: control plane presented no certificate")
	}
	roots := c.o.Roots()
	if roots == nil {
		roots = c.o.RootCAs
	}
	inter := x509.NewCertPool()
	for _, ic := range cs.PeerCertificates[1:] {
		inter.AddCert(ic)
	}
	// ServerName is the SNI sent, empty for an IP address: then the
	// connection does not say which of the replicas' addresses it dialled,
	// and a certificate for any of them will do.
	names := []string{cs.ServerName}
	if cs.ServerName == "" {
		names = names[:0]
		addrs, _ := ParseAddrs(c.o.Addr)
		for _, a := range addrs {
			if host, _, err := net.SplitHostPort(a); err == nil && host != "" {
				names = append(names, host)
			}
		}
	}
	if len(names) == 0 {
		return errors.New("push: control plane address has no host to verify")
	}
	var err error
	for _, name := range names {
		if _, err = cs.PeerCertificates[0].Verify(x509.VerifyOptions{
			DNSName:       name,
			Roots:         roots,
			Intermediates: inter,
		}); err == nil {
			return nil
		}
	}
	return fmt.Errorf("push: control plane certificate: %w", err)
}

// current returns the connection's client and its generation.
func (c *Client) current() (meshv1.MeshClient, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mesh, c.gen
}

// redial replaces connection generation gen with a fresh one. A TLS
// connection keeps the certificate of its handshake, so after the first
// Certify or an expiry the proxy needs a new connection to present its
// current certificate. Concurrent callers for the same gen redial once.
func (c *Client) redial(gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.replaceLocked(gen, "")
}

// avoid replaces connection generation gen with one that tries addr last:
// the replica at addr answers but fails calls a healthy replica serves
// (its store is unreachable), so the proxy moves to another before its
// lease runs out. Concurrent callers for the same gen move once; with one
// address there is nowhere to go.
func (c *Client) avoid(gen uint64, peerAddr string) {
	addrs, _ := ParseAddrs(c.o.Addr)
	if len(addrs) < 2 {
		return
	}
	addr := configuredAddr(addrs, peerAddr)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.log.Warn("control-plane replica fails requests; moving to another", "replica_addr", addr)
	c.replaceLocked(gen, addr)
}

// configuredAddr is the address of addrs that peer (an IP:port a call went
// to) was dialled from: itself, or the host:port whose host resolves to
// peer's IP. Unresolved, it is peer itself, which avoiding then leaves out
// of nothing (a plain reshuffle).
func configuredAddr(addrs []string, peer string) string {
	if slices.Contains(addrs, peer) {
		return peer
	}
	pip, pport, err := net.SplitHostPort(peer)
	if err != nil {
		return peer
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for _, a := range addrs {
		host, port, _ := net.SplitHostPort(a)
		if port != pport {
			continue
		}
		ips, err := net.DefaultResolver.LookupHost(ctx, host)
		if err == nil && slices.Contains(ips, pip) {
			return a
		}
	}
	return peer
}

func (c *Client) replaceLocked(gen uint64, avoid string) {
	if c.closed || gen != c.gen || c.dial == nil {
		return
	}
	cc, err := c.dial(avoid)
	if err != nil {
		c.log.Warn("redial failed", "err", err)
		return
	}
	if c.cc != nil {
		_ = c.cc.Close()
	}
	c.cc, c.mesh = cc, meshv1.NewMeshClient(cc)
	c.gen++
	c.log.Debug("reconnecting with the current certificate")
}

// Close closes the connection; a running session's RPCs fail and it should
// be stopped through its context first.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	if c.cc == nil {
		return nil
	}
	return c.cc.Close()
}

// Certify asks the control plane for a workload certificate for
// spiffe://<td>/ns/<ns>/sa/<sa>, with a bootstrap token or, when token is
// empty, as a renewal with the current certificate. It makes one attempt on a
// connection of its own (so the handshake carries the certificate current
// now), failing with ErrUnavailable (retry later) or ErrRejected.
func (c *Client) Certify(ctx context.Context, token string, csr []byte, ns, sa string) (*meshv1.CertifyResponse, error) {
	cc, err := c.newConn("")
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	resp, err := meshv1.NewMeshClient(cc).Certify(ctx, &meshv1.CertifyRequest{
		Token: token, Csr: csr, Namespace: ns, ServiceAccount: sa,
	})
	if err != nil {
		return nil, rpcError("certify", c.o.Addr, err)
	}
	if len(resp.GetCertChain()) == 0 {
		return nil, fmt.Errorf("push: certify: %w: empty certificate chain", ErrRejected)
	}
	return resp, nil
}

// rpcError turns a gRPC status into an error that says whether retrying helps.
func rpcError(op, addr string, err error) error {
	st := status.Convert(err)
	switch st.Code() {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.ResourceExhausted, codes.Aborted:
		return fmt.Errorf("push: %s: %w (%s): %s", op, ErrUnavailable, addr, st.Message())
	default:
		return fmt.Errorf("push: %s: %w: %s", op, ErrRejected, st.Message())
	}
}

// Resubscribe tells the running session that Subscriptions() changed; the
// watch sends the new set promptly. Calls coalesce.
func (c *Client) Resubscribe() { poke(c.resub) }
