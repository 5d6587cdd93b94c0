// Package dns is the control plane's DNS server: the mesh's services by name,
// over UDP and TCP, answered from the mesh view (miekg/dns).
//
// Names (domain default trellis.local; docs/dns.md has the full table):
//
//	<service>.<namespace>.svc.<domain>          A, AAAA: the healthy endpoints' hosts
//	<service>.<namespace>                       A, AAAA: the same (short form)
//	_<port>._tcp.<service>.<namespace>.svc.<domain>   SRV: per endpoint, its port and
//	<endpoint>.<service>.<namespace>.svc.<domain>     the endpoint's own name (A/AAAA)
//
// Answers come from an index built from one view State and replaced, never
// modified, when the view moves (Subscribe): a query reads one index without
// locks and never touches the store, and an endpoint change is in DNS as soon
// as the view — and so the compiler's next push — has it.
//
// The server is authoritative for the mesh domain and for each known
// service's short name. Anything else is REFUSED, or forwarded to an upstream
// resolver when Options.Forward is set.
package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mdns "github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"trellis.dev/trellis/internal/meshname"
	"trellis.dev/trellis/internal/view"
)

// Defaults.
const (
	DefaultAddr           = "127.0.0.1:8600"
	DefaultTTL            = 5 * time.Second
	DefaultForwardTimeout = 2 * time.Second
	shutdownTimeout       = 5 * time.Second
	// maxForwarding bounds the UDP queries waiting on the upstream; past it
	// new ones are dropped (the client retries), not queued without end.
	maxForwarding = 1024
)

// View is what the server needs of the mesh view.
type View interface {
	State() *view.State
	Ready() <-chan struct{}
	Subscribe() (<-chan struct{}, func())
}

// Metrics is what the server records: one call per reply, with its
// rcode (forwarded replies included) and whether it went over TCP.
type Metrics interface {
	Reply(rcode int, tcp bool)
}

type nopMetrics struct{}

func (nopMetrics) Reply(int, bool) {}

// Options configure a Server.
type Options struct {
	// Addr is host:port for both UDP and TCP; port 0 picks one free on both.
	// Default 127.0.0.1:8600.
	Addr string
	// Domain is the mesh domain (default trellis.local).
	Domain string
	// TTL of every record, and of negative answers (SOA minimum). Whole
	// seconds, at least 1s; default 5s.
	TTL time.Duration
	// Forward is an upstream resolver ("host" or "host:port") for names
	// outside the mesh; empty refuses them.
	Forward string
	// ForwardTimeout bounds one forwarded exchange (default 2s).
	ForwardTimeout time.Duration
	// Metrics records every reply; nil records nothing.
	Metrics Metrics
	// Logger; nil discards.
	Logger *slog.Logger
}

func (o *Options) setDefaults() {
	if o.Addr == "" {
		o.Addr = DefaultAddr
	}
	if o.Domain == "" {
		o.Domain = meshname.DefaultDomain
	}
	if o.TTL == 0 {
		o.TTL = DefaultTTL
	}
	if o.ForwardTimeout <= 0 {
		o.ForwardTimeout = DefaultForwardTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Metrics == nil {
		o.Metrics = nopMetrics{}
	}
}

// Server is a running DNS server.
type Server struct {
	o      Options
	log    *slog.Logger
	view   View
	h      *handler
	origin string
	ttl    uint32
	addrs  []netip.Addr // own addresses, for ns.<domain>

	idx     atomic.Pointer[index]
	pcs     []net.PacketConn // one per UDP reader, all on ln's port
	ln      net.Listener
	servers []*mdns.Server

	ctx        context.Context
	cancel     context.CancelFunc
	forwarding chan struct{} // a slot per UDP query waiting on the upstream
	wg         sync.WaitGroup

	mu    sync.Mutex
	moved chan struct{} // closed (and replaced) when the index moves

	stopOnce sync.Once
	stopErr  error
}

// Start binds UDP and TCP on o.Addr, builds the index from v and serves
// until Stop. An address already in use wraps syscall.EADDRINUSE.
func Start(v View, o Options) (_ *Server, err error) {
	o.setDefaults()
	origin, err := meshname.ParseDomain(o.Domain)
	if err != nil {
		return nil, fmt.Errorf("dns: domain: %w", err)
	}
	if o.TTL < time.Second || o.TTL%time.Second != 0 {
		return nil, fmt.Errorf("dns: ttl %s: must be whole seconds, at least 1s", o.TTL)
	}
	s := &Server{o: o, log: o.Logger.With("component", "dns"), view: v,
		origin: origin + ".", ttl: uint32(o.TTL / time.Second), moved: make(chan struct{}),
		forwarding: make(chan struct{}, maxForwarding)}
	s.h = &handler{index: s.idx.Load, log: s.log}
	if o.Forward != "" {
		addr, err := upstreamAddr(o.Forward)
		if err != nil {
			return nil, err
		}
		s.h.fwd = newUpstream(addr, o.ForwardTimeout)
	}
	if s.pcs, s.ln, err = listen(o.Addr, udpReaders()); err != nil {
		return nil, err
	}
	s.addrs = ownAddrs(s.ln.Addr())
	s.ctx, s.cancel = context.WithCancel(context.Background())

	sub, unsubscribe := v.Subscribe()
	s.rebuild()
	s.wg.Go(func() {
		defer unsubscribe()
		s.follow(sub)
	})
	if err := s.serve(); err != nil {
		s.Stop()
		return nil, err
	}
	s.log.Info("dns serving", "addr", s.Addr(), "domain", origin, "ttl", o.TTL, "forward", o.Forward)
	return s, nil
}

// udpReaders is how many UDP sockets share the port: one per CPU (at most
// 4). One socket's read loop is one goroutine in a syscall at a time; with
// several the kernel spreads clients over them (SO_REUSEPORT).
func udpReaders() int { return min(runtime.GOMAXPROCS(0), 4) }

// listen binds TCP and n UDP sockets on the same address. With port 0 the
// kernel picks the TCP port and UDP takes the same one; if UDP's is taken,
// it tries again. TCP binds without SO_REUSEPORT, so a second server on the
// same port fails there, whatever UDP would allow.
func listen(addr string, n int) ([]net.PacketConn, net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("dns: address %q: %w", addr, err)
	}
	tries := 1
	if port == "0" {
		tries = 10
	}
	for i := 0; ; i++ {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("dns: listen tcp: %w", err)
		}
		bound := net.JoinHostPort(host, strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
		pcs, err := listenUDP(bound, n)
		if err == nil {
			return pcs, ln, nil
		}
		ln.Close()
		if i+1 >= tries {
			return nil, nil, fmt.Errorf("dns: listen udp: %w", err)
		}
	}
}

func listenUDP(addr string, n int) ([]net.PacketConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		return serr
	}}
	var pcs []net.PacketConn
	for range n {
		pc, err := lc.ListenPacket(context.Background(), "udp", addr)
		if err != nil {
			for _, p := range pcs {
				p.Close()
			}
			return nil, err
		}
		pcs = append(pcs, pc)
	}
	return pcs, nil
}

// ownAddrs is the bound address, unless it is unspecified (0.0.0.0, ::).
func ownAddrs(a net.Addr) []netip.Addr {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil || ap.Addr().IsUnspecified() {
		return nil
	}
	return []netip.Addr{ap.Addr().Unmap()}
}

// serve starts the UDP loops and the TCP server, and waits until the TCP
// server runs, so a Stop right after Start finds it started.
func (s *Server) serve() error {
	accept := func(dh mdns.Header) mdns.MsgAcceptAction {
		// Every query reaches the handler, which owns the rcodes
		// (NOTIMP, FORMERR, ...); only responses are dropped.
		if dh.Bits&(1<<15) != 0 {
			return mdns.MsgIgnore
		}
		return mdns.MsgAccept
	}
	for _, pc := range s.pcs {
		s.wg.Go(func() { s.serveUDP(pc.(*net.UDPConn)) })
	}
	n := 1
	started := make(chan struct{}, n)
	notify := func() { started <- struct{}{} }
	s.servers = append(s.servers, &mdns.Server{Listener: s.ln, Handler: s, MsgAcceptFunc: accept, NotifyStartedFunc: notify})
	errc := make(chan error, n)
	for _, srv := range s.servers {
		s.wg.Go(func() {
			if err := srv.ActivateAndServe(); err != nil {
				errc <- err
				s.log.Error("dns server failed", "err", err)
			}
		})
	}
	for range n {
		select {
		case <-started:
		case err := <-errc:
			return fmt.Errorf("dns: serve: %w", err)
		}
	}
	return nil
}

// ServeDNS implements mdns.Handler.
func (s *Server) ServeDNS(w mdns.ResponseWriter, req *mdns.Msg) {
	_, tcp := w.LocalAddr().(*net.TCPAddr)
	resp := s.h.answer(s.ctx, req, tcp)
	if resp == nil {
		return
	}
	// Counted before it is written, so a client that has its reply sees it
	// counted.
	s.o.Metrics.Reply(resp.Rcode, tcp)
	if err := w.WriteMsg(resp); err != nil {
		s.log.Debug("write reply", "remote", w.RemoteAddr().String(), "err", err)
	}
}

// follow rebuilds the index whenever the view moves, until Stop.
func (s *Server) follow(sub <-chan struct{}) {
	ready := s.view.Ready()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-sub:
		case <-ready:
			ready = nil // closed: select it once
		}
		s.rebuild()
	}
}

// rebuild makes the index of the view's current state. A state with the
// same content (generation) as the current index only moves its revision.
func (s *Server) rebuild() {
	st := s.view.State()
	ready := isClosed(s.view.Ready())
	cur := s.idx.Load()
	switch {
	case cur != nil && cur.ready == ready && cur.generation == st.Generation():
		if st.Revision() <= cur.revision {
			return
		}
		moved := *cur
		moved.revision = st.Revision()
		s.idx.Store(&moved)
	default:
		s.idx.Store(build(st, ready, buildOptions{origin: s.origin, ttl: s.ttl, nsAddrs: s.addrs, log: s.log}))
		s.log.Debug("index rebuilt", "revision", st.Revision(), "generation", st.Generation())
	}
	s.mu.Lock()
	close(s.moved)
	s.moved = make(chan struct{})
	s.mu.Unlock()
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// WaitFor blocks until the answers reflect store revision rev or later (the
// view has caught up with it and the index was rebuilt from that state).
func (s *Server) WaitFor(ctx context.Context, rev int64) error {
	for {
		s.mu.Lock()
		moved := s.moved
		s.mu.Unlock()
		if idx := s.idx.Load(); idx.ready && idx.revision >= rev {
			return nil
		}
		select {
		case <-moved:
		case <-ctx.Done():
			return fmt.Errorf("dns: wait for revision %d (at %d): %w", rev, s.idx.Load().revision, ctx.Err())
		}
	}
}

// Addr is the bound address (UDP and TCP).
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Stop shuts both servers down (in-flight queries finish, 5s at most) and
// stops following the view. Safe to call more than once.
func (s *Server) Stop() error {
	s.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		var errs []error
		for _, srv := range s.servers {
			if err := srv.ShutdownContext(ctx); err != nil {
				errs = append(errs, err)
			}
		}
		// Close what a failed Start never handed to a server; closing
		// twice only returns an error nobody needs.
		for _, pc := range s.pcs {
			pc.Close()
		}
		s.ln.Close()
		s.cancel()
		s.wg.Wait()
		if err := errors.Join(errs...); err != nil {
			s.stopErr = fmt.Errorf("dns: stop: %w", err)
		}
	})
	return s.stopErr
}
