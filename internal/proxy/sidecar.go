package proxy

// This file wires the data plane to the control plane (DESIGN.md flow 1):
// key → CSR + bootstrap token → certificate → listeners → register → watch
// → ready → (optionally) start the app. It also renews the certificate,
// follows trust-bundle changes, and on SIGTERM drains.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/identity"
	"trellis.dev/trellis/internal/lb"
	"trellis.dev/trellis/internal/push"
)

// SidecarOptions configure a proxy that runs beside one app.
type SidecarOptions struct {
	ControlAddr string // control plane gRPC address
	CAFile      string // PEM roots to verify the control plane
	TokenFile   string // bootstrap token

	TrustDomain    string
	Service        string
	Namespace      string
	ServiceAccount string // default: Service
	Labels         map[string]string

	AppAddr      string
	InboundAddr  string
	OutboundAddr string
	AdminAddr    string
	Upstreams    map[string]string
	Balancer     lb.Policy

	Heartbeat    time.Duration // default 5s
	DrainTimeout time.Duration // default 10s
	// Command, when set, is started once the proxy is ready; the sidecar
	// forwards signals to it and returns its exit code.
	Command []string
	// Ready, when set, is closed once the proxy is ready (for tests).
	Ready  chan<- struct{}
	Logger *slog.Logger
}

// sidecar holds the state that outlives one snapshot or one certificate.
type sidecar struct {
	o      SidecarOptions
	log    *slog.Logger
	td     spiffeid.TrustDomain
	id     spiffeid.ID
	src    *identity.Source
	client *push.Client
	token  string
	proxy  *Proxy

	mu       sync.Mutex
	bundle   [][]byte        // the trust bundle last installed
	received time.Time       // when the current certificate arrived
	subs     map[string]bool // "name.namespace"

	readyOnce sync.Once
	readyCh   chan struct{}
}

// RunSidecar runs the proxy until ctx ends (then drains), or, with a
// Command, until the command exits. It returns the command's exit code, or
// 0 after a clean drain.
func RunSidecar(ctx context.Context, o SidecarOptions) (int, error) {
	s, err := newSidecar(o)
	if err != nil {
		return 1, err
	}
	defer s.client.Close()

	// The session and the certificate renewal outlive ctx: on SIGTERM the
	// app (if any) is still shutting down and may still call out.
	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRun()

	if err := s.certify(ctx, s.token); err != nil {
		if ctx.Err() != nil {
			return 0, nil // stopped while waiting for the control plane
		}
		return 1, err
	}
	if err := s.startProxy(); err != nil {
		return 1, err
	}
	sessionDone := make(chan error, 1)
	go func() { sessionDone <- s.client.RunSession(runCtx, s.sessionOptions()) }()
	go s.renewLoop(runCtx)

	select {
	case <-s.readyCh:
		s.log.Info("proxy ready", "identity", s.id.String(), "inbound", s.proxy.InboundAddr(),
			"outbound", s.proxy.OutboundAddr(), "admin", s.proxy.AdminAddr())
		if o.Ready != nil {
			close(o.Ready)
		}
	case err := <-sessionDone:
		// Only a refusal ends the session early (say, an invalid
		// endpoint); retrying would not help.
		s.drain()
		return 1, fmt.Errorf("proxy: control plane session: %w", err)
	case <-ctx.Done():
		s.drain()
		return 0, nil
	}

	code := 0
	if len(o.Command) > 0 {
		code, err = s.runCommand(ctx)
		if err != nil {
			s.drain()
			return 1, err
		}
	} else {
		<-ctx.Done()
	}
	s.drain()
	stopRun()
	<-sessionDone
	return code, nil
}

func newSidecar(o SidecarOptions) (*sidecar, error) {
	if o.Service == "" {
		return nil, errors.New("proxy: --service is required")
	}
	if o.Namespace == "" {
		o.Namespace = "default"
	}
	if o.ServiceAccount == "" {
		o.ServiceAccount = o.Service
	}
	if o.TrustDomain == "" {
		o.TrustDomain = "trellis.local"
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = 5 * time.Second
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	td, err := spiffeid.TrustDomainFromString(o.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("proxy: --trust-domain: %w", err)
	}
	id, err := identity.WorkloadID(o.TrustDomain, o.Namespace, o.ServiceAccount)
	if err != nil {
		return nil, fmt.Errorf("proxy: identity: %w", err)
	}
	caPEM, err := os.ReadFile(o.CAFile)
	if err != nil {
		return nil, fmt.Errorf("proxy: read CA file (pass --ca-file, the control plane's <data-dir>/ca.crt): %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("proxy: %s holds no PEM certificate", o.CAFile)
	}
	token, err := os.ReadFile(o.TokenFile)
	if err != nil {
		return nil, fmt.Errorf("proxy: read bootstrap token (pass --token-file, the control plane's <data-dir>/bootstrap-token): %w", err)
	}
	s := &sidecar{
		o:       o,
		log:     o.Logger.With("component", "sidecar"),
		td:      td,
		id:      id,
		src:     identity.NewSource(td),
		token:   strings.TrimSpace(string(token)),
		subs:    map[string]bool{},
		readyCh: make(chan struct{}),
	}
	for name := range o.Upstreams {
		s.subs[qualify(name, o.Namespace)] = true
	}
	s.client, err = push.Dial(push.ClientOptions{
		Addr:                 o.ControlAddr,
		RootCAs:              roots,
		GetClientCertificate: s.clientCertificate,
		Logger:               o.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("proxy: control plane client: %w", err)
	}
	return s, nil
}

// qualify turns an upstream key ("orders", "orders.shop", "orders:82")
// into the service it subscribes to: "orders.default", "orders.shop".
func qualify(name, ns string) string {
	if host, _, err := net.SplitHostPort(name); err == nil {
		name = host
	}
	if strings.Contains(name, ".") {
		return name
	}
	return name + "." + ns
}

// clientCertificate presents the current workload certificate to the
// control plane, or none before the first one is issued.
func (s *sidecar) clientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	svid, err := s.src.GetX509SVID()
	if err != nil {
		return &tls.Certificate{}, nil
	}
	c := &tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, cert := range svid.Certificates {
		c.Certificate = append(c.Certificate, cert.Raw)
	}
	return c, nil
}

// certify gets a certificate for a fresh key. An empty token renews with the
// current certificate.
func (s *sidecar) certify(ctx context.Context, token string) error {
	key, err := identity.NewKey()
	if err != nil {
		return fmt.Errorf("proxy: key: %w", err)
	}
	csr, err := identity.NewCSR(key, s.id)
	if err != nil {
		return fmt.Errorf("proxy: csr: %w", err)
	}
	var resp *meshv1.CertifyResponse
	backoff := 200 * time.Millisecond
	for {
		resp, err = s.client.Certify(ctx, token, csr, s.o.Namespace, s.o.ServiceAccount)
		if err == nil {
			break
		}
		if !retryable(err) || ctx.Err() != nil {
			return fmt.Errorf("proxy: certify: %w", err)
		}
		s.log.Warn("control plane unreachable, retrying certification", "err", err, "in", backoff)
		if !sleep(ctx, backoff) {
			return fmt.Errorf("proxy: certify: %w", ctx.Err())
		}
		backoff = min(backoff*2, 5*time.Second)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	bundle := resp.TrustBundle
	if len(s.bundle) > 0 && len(bundle) == 0 {
		bundle = s.bundle
	}
	if err := s.src.Set(resp.CertChain, key, bundle); err != nil {
		return fmt.Errorf("proxy: certificate from control plane: %w", err)
	}
	s.bundle, s.received = bundle, time.Now()
	s.log.Info("certificate issued", "identity", s.id.String(), "expires", time.Unix(resp.NotAfter, 0).UTC())
	return nil
}

// retryable reports whether a Certify error may pass once the control plane
// is back; a refused token or CSR will not.
func retryable(err error) bool {
	if errors.Is(err, push.ErrUnavailable) {
		return true
	}
	if errors.Is(err, push.ErrRejected) {
		return false
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Unknown:
		return true
	}
	return false
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (s *sidecar) startProxy() error {
	authorizeMesh := tlsconfig.AuthorizeMemberOf(s.td)
	var clientConfigs sync.Map // peer identity → *tls.Config
	p, err := New(Options{
		Service:      s.o.Service,
		Namespace:    s.o.Namespace,
		AppAddr:      s.o.AppAddr,
		InboundAddr:  s.o.InboundAddr,
		OutboundAddr: s.o.OutboundAddr,
		AdminAddr:    s.o.AdminAddr,
		Upstreams:    s.o.Upstreams,
		ServerTLS:    identity.ServerTLS(s.src, authorizeMesh),
		ClientTLS: func(peer string) *tls.Config {
			if c, ok := clientConfigs.Load(peer); ok {
				return c.(*tls.Config)
			}
			var authorize tlsconfig.Authorizer
			if id, err := spiffeid.FromString(peer); err == nil {
				authorize = tlsconfig.AuthorizeID(id)
			} else {
				// An endpoint without a valid identity must not be trusted as anyone.
				authorize = func(spiffeid.ID, [][]*x509.Certificate) error {
					return fmt.Errorf("endpoint identity %q is not a SPIFFE ID", peer)
				}
			}
			c, _ := clientConfigs.LoadOrStore(peer, identity.ClientTLS(s.src, authorize))
			return c.(*tls.Config)
		},
		Balancer:     s.o.Balancer,
		Subscribe:    s.subscribe,
		DrainTimeout: s.o.DrainTimeout,
		Logger:       s.o.Logger, // the proxy scopes its own component
	})
	if err != nil {
		return err
	}
	if err := p.Start(); err != nil {
		return err
	}
	s.proxy = p
	return nil
}

// subscribe adds a service the app asked for to the watch.
func (s *sidecar) subscribe(service string) {
	s.mu.Lock()
	added := !s.subs[service]
	s.subs[service] = true
	s.mu.Unlock()
	if added {
		s.client.Resubscribe()
	}
}

func (s *sidecar) subscriptions() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Sorted(maps.Keys(s.subs))
}

func (s *sidecar) sessionOptions() push.SessionOptions {
	labels := map[string]string{}
	maps.Copy(labels, s.o.Labels)
	labels["app"] = s.o.Service
	return push.SessionOptions{
		Endpoint: &meshv1.Endpoint{
			Id:           fmt.Sprintf("%s-%s-%08x", s.o.Service, s.o.Namespace, rand.Uint32()),
			Service:      s.o.Service,
			Namespace:    s.o.Namespace,
			Address:      s.proxy.InboundAddr(),
			Labels:       labels,
			Identity:     s.id.String(),
			AdminAddress: s.proxy.AdminAddr(),
			Healthy:      true,
		},
		Heartbeat:     s.o.Heartbeat,
		Subscriptions: s.subscriptions,
		Apply:         s.apply,
		CertNotAfter:  s.src.NotAfter,
	}
}

// apply installs a pushed snapshot; an error NACKs it and the proxy keeps its
// last good config.
func (s *sidecar) apply(snap *meshv1.Snapshot) error {
	if err := s.proxy.Update(snap); err != nil {
		s.log.Warn("config refused (NACK); keeping last good config", "version", snap.GetVersion(), "err", err)
		return err
	}
	if err := s.updateBundle(snap.GetTrustBundle()); err != nil {
		s.log.Warn("trust bundle refused", "err", err)
	}
	s.readyOnce.Do(func() {
		s.proxy.SetReady(true)
		close(s.readyCh)
	})
	return nil
}

func (s *sidecar) updateBundle(bundle [][]byte) error {
	if len(bundle) == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if slices.EqualFunc(bundle, s.bundle, func(a, b []byte) bool { return string(a) == string(b) }) {
		return nil
	}
	if err := s.src.SetBundle(bundle); err != nil {
		return err
	}
	s.bundle = bundle
	s.log.Info("trust bundle updated", "roots", len(bundle))
	return nil
}

// renewLoop renews the certificate at 2/3 of its life: with the current
// certificate, or with the bootstrap token if that fails (say, it expired
// while the control plane was down).
func (s *sidecar) renewLoop(ctx context.Context) {
	for {
		svid, err := s.src.GetX509SVID()
		if err != nil {
			return
		}
		leaf := svid.Certificates[0]
		// The CA back-dates NotBefore for clock skew; count the lifetime
		// from when the certificate arrived so short TTLs renew sensibly.
		s.mu.Lock()
		start := s.received
		s.mu.Unlock()
		if leaf.NotBefore.After(start) {
			start = leaf.NotBefore
		}
		wait := time.Until(identity.RenewAt(start, leaf.NotAfter))
		if !sleep(ctx, max(wait, time.Second)) {
			return
		}
		err = s.certify(ctx, "")
		if err != nil {
			s.log.Warn("certificate renewal with current certificate failed; trying bootstrap token", "err", err)
			err = s.certify(ctx, s.token)
		}
		if err != nil {
			s.log.Error("certificate renewal failed; will retry", "err", err)
			if !sleep(ctx, 10*time.Second) {
				return
			}
			continue
		}
		s.client.Resubscribe() // reports the new expiry to proxy-status
	}
}

// runCommand starts the app and waits for it, forwarding signals.
func (s *sidecar) runCommand(ctx context.Context) (int, error) {
	cmd := exec.Command(s.o.Command[0], s.o.Command[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		return 1, fmt.Errorf("proxy: start %s: %w", s.o.Command[0], err)
	}
	s.log.Info("app started", "cmd", strings.Join(s.o.Command, " "), "pid", cmd.Process.Pid)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case sig := <-sigs:
			s.log.Info("forwarding signal to app", "signal", sig.String())
			_ = cmd.Process.Signal(sig)
		case err := <-done:
			return exitCode(err), nil
		}
	}
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	return 1
}

// drain stops accepting and lets in-flight requests finish.
func (s *sidecar) drain() {
	if s.proxy == nil {
		return
	}
	s.proxy.SetReady(false)
	ctx, cancel := context.WithTimeout(context.Background(), s.o.DrainTimeout+time.Second)
	defer cancel()
	if err := s.proxy.Shutdown(ctx); err != nil {
		s.log.Warn("drain ended early", "err", err)
	}
	s.log.Info("proxy stopped")
}
