// Package sidecar is a proxy's lifecycle beside one app (DESIGN.md flow 1):
// key → CSR + bootstrap token → certificate → listeners → register → watch
// → ready → (optionally) start the app. It renews the certificate, follows
// trust-bundle changes, feeds pushed snapshots to the data plane (ACK, or
// NACK and keep the last good config), and on SIGTERM drains.
//
// The data plane itself is internal/proxy; this package only wires it to
// the control plane (internal/push) and to the workload's identity.
package sidecar

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
	"trellis.dev/trellis/internal/imagetrim"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/accesslog"
	"trellis.dev/trellis/internal/health"
	"trellis.dev/trellis/internal/identity"
	"trellis.dev/trellis/internal/lb"
	"trellis.dev/trellis/internal/meshname"
	"trellis.dev/trellis/internal/proxy"
	"trellis.dev/trellis/internal/push"
	"trellis.dev/trellis/internal/quota"
	"trellis.dev/trellis/internal/stats"
	"trellis.dev/trellis/internal/tap"
	"trellis.dev/trellis/internal/tracing"
)

// Options configure a proxy that runs beside one app.
type Options struct {
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
	// DisableMetrics turns the per-request metrics off (--disable-metrics).
	DisableMetrics bool

	// Tracing exports spans to an OTLP collector; nil: no tracing.
	// SamplingFixed: its SamplingPercent was given on the command line and
	// wins over the mesh's Telemetry.
	Tracing       *tracing.Config
	SamplingFixed bool
	// AccessLog is "" (as the mesh's Telemetry says, to stdout), "off",
	// "stdout" or a file path (rotated at AccessLogMaxBytes, keeping
	// AccessLogMaxFiles old files).
	AccessLog         string
	AccessLogMaxBytes int64
	AccessLogMaxFiles int
	AccessLogBuffer   int // lines waiting for the sink; default accesslog.DefaultQueue

	// RenewJitter draws the renewal point of each certificate in [0, 1)
	// (identity.RenewAt); default math/rand/v2's Float64. Tests seed it.
	RenewJitter func() float64
	// EarlyRenewSpread bounds the jittered delay of a re-certification
	// after a CA rotation moved the issuer (default 5s).
	EarlyRenewSpread time.Duration

	Heartbeat    time.Duration // default 5s
	DrainTimeout time.Duration // default 10s
	// Limits and EnablePprof go to the proxy (proxy.Options).
	Limits      proxy.Limits
	EnablePprof bool
	// HealthCheck is --health-check (HealthCheckSet: given), laid over
	// the Service's healthCheck; without an app (AppAddr "") or with Off
	// the endpoint is always healthy.
	HealthCheck    health.Override
	HealthCheckSet bool
	// Command, when set, is started once the proxy is ready; the sidecar
	// forwards signals to it and returns its exit code.
	Command []string
	// Ready, when set, is closed once the proxy is ready (for tests).
	Ready  chan<- struct{}
	Logger *slog.Logger
}

// sidecar holds the state that outlives one snapshot or one certificate.
type sidecar struct {
	o      Options
	log    *slog.Logger
	td     spiffeid.TrustDomain
	id     spiffeid.ID
	src    *identity.Source
	client *push.Client
	token  string
	proxy  *proxy.Proxy
	renew  *renewer

	mu       sync.Mutex
	bundle   [][]byte        // the trust bundle last installed
	received time.Time       // when the current certificate arrived
	subs     map[string]bool // "name.namespace"

	readyOnce sync.Once
	readyCh   chan struct{}
	health    *appHealth
}

// Run runs the proxy until ctx ends (then drains), or, with a Command,
// until the command exits. It returns the command's exit code, or 0 after a
// clean drain.
func Run(ctx context.Context, o Options) (int, error) {
	s, err := newSidecar(o)
	if err != nil {
		return 1, err
	}
	return s.run(ctx)
}

// run is Run after the options are checked; tests call it to reach the
// sidecar's proxy.
func (s *sidecar) run(ctx context.Context) (int, error) {
	defer s.client.Close()
	o := s.o

	// The session and the certificate renewal outlive ctx: on SIGTERM the
	// app (if any) is still shutting down and may still call out.
	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRun()

	// A taken port fails now, naming its flag, not after a certificate was
	// issued and the endpoint half set up.
	if err := checkPortsFree(o); err != nil {
		return 1, err
	}
	if err := s.certify(ctx, s.token); err != nil {
		if ctx.Err() != nil {
			return 0, nil // stopped while waiting for the control plane
		}
		return 1, err
	}
	if err := s.startProxy(); err != nil {
		return 1, err
	}
	s.health = newAppHealth(runCtx, s)
	ok, reason := s.health.status()
	s.proxy.SetAppHealth(ok, reason)
	s.proxy.HealthMetrics().State(ok)
	sessionDone := make(chan error, 1)
	so := s.sessionOptions()
	go func() { sessionDone <- s.client.RunSession(runCtx, so) }()
	go s.renew.run(runCtx)
	go s.quotaLoop(runCtx, so.Endpoint.GetId())
	go s.tapLoop(runCtx, so.Endpoint.GetId())
	if !s.o.DisableMetrics {
		go s.statsLoop(runCtx, so.Endpoint.GetId())
	}

	select {
	case <-s.readyCh:
		// Start-up is over: the binary's pages only it touched (the whole
		// of Trellis's package initialisation) leave the resident set.
		trimmed, terr := imagetrim.Trim()
		if terr != nil {
			s.log.Warn("dropping start-up pages", "err", terr)
		}
		s.log.Info("proxy ready", "identity", s.id.String(), "inbound", s.proxy.InboundAddr(),
			"outbound", s.proxy.OutboundAddr(), "admin", s.proxy.AdminAddr(), "startup_pages_dropped_kib", trimmed>>10)
		if o.Ready != nil {
			close(o.Ready)
		}
	case err := <-sessionDone:
		// Only a refusal ends the session early (say, an invalid
		// endpoint); retrying would not help.
		s.drain()
		return 1, fmt.Errorf("sidecar: control plane session: %w", err)
	case <-ctx.Done():
		s.drain()
		return 0, nil
	}

	code := 0
	if len(o.Command) > 0 {
		var err error
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

func newSidecar(o Options) (*sidecar, error) {
	if o.Service == "" {
		return nil, errors.New("sidecar: --service is required")
	}
	if o.Namespace == "" {
		o.Namespace = "default"
	}
	if o.ServiceAccount == "" {
		o.ServiceAccount = o.Service
	}
	subs, err := checkNames(o)
	if err != nil {
		return nil, err
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
	if o.RenewJitter == nil {
		o.RenewJitter = rand.Float64
	}
	if o.EarlyRenewSpread <= 0 {
		o.EarlyRenewSpread = defaultEarlySpread
	}
	td, err := spiffeid.TrustDomainFromString(o.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("sidecar: --trust-domain: %w", err)
	}
	id, err := identity.WorkloadID(o.TrustDomain, o.Namespace, o.ServiceAccount)
	if err != nil {
		return nil, fmt.Errorf("sidecar: identity: %w", err)
	}
	caPEM, err := os.ReadFile(o.CAFile)
	if err != nil {
		return nil, fmt.Errorf("sidecar: read CA file (pass --ca-file, the control plane's <data-dir>/ca.crt): %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("sidecar: %s holds no PEM certificate", o.CAFile)
	}
	token, err := os.ReadFile(o.TokenFile)
	if err != nil {
		return nil, fmt.Errorf("sidecar: read join token (pass --token-file with a token from 'trellis token create --service-account SA'; <data-dir>/bootstrap-token exists only when the control plane runs in dev mode): %w", err)
	}
	s := &sidecar{
		o:       o,
		log:     o.Logger.With("component", "sidecar"),
		td:      td,
		id:      id,
		src:     identity.NewSource(td),
		token:   strings.TrimSpace(string(token)),
		subs:    subs,
		readyCh: make(chan struct{}),
	}
	s.renew = &renewer{
		log:         s.log,
		cert:        s.certValidity,
		certify:     s.certify,
		token:       s.token,
		jitter:      o.RenewJitter,
		earlySpread: o.EarlyRenewSpread,
		renewed:     func() { s.client.Resubscribe() }, // reports the new certificate
		early:       make(chan struct{}, 1),
	}
	s.client, err = push.Dial(push.ClientOptions{
		Addr:    o.ControlAddr,
		RootCAs: roots,
		// Once certified, the control plane is verified against the
		// current trust bundle, so it can move to a rotated CA's chain.
		Roots:                s.src.RootPool,
		GetClientCertificate: s.clientCertificate,
		Logger:               o.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("sidecar: control plane client: %w", err)
	}
	return s, nil
}

// checkNames checks the names in o before anything is read or dialled, so
// a typo fails at once with the flag it came from, and returns the
// upstreams' subscriptions ("name.namespace").
func checkNames(o Options) (map[string]bool, error) {
	if err := meshname.CheckLabel(o.Service); err != nil {
		return nil, fmt.Errorf("sidecar: --service: %w", err)
	}
	if err := meshname.CheckLabel(o.Namespace); err != nil {
		return nil, fmt.Errorf("sidecar: --namespace: %w", err)
	}
	if err := meshname.CheckSubdomain(o.ServiceAccount); err != nil {
		return nil, fmt.Errorf("sidecar: --service-account: %w", err)
	}
	subs := map[string]bool{}
	for key := range o.Upstreams {
		svc, err := upstreamService(key, o.Namespace)
		if err != nil {
			return nil, fmt.Errorf("sidecar: --upstream %s: %w", key, err)
		}
		subs[svc] = true
	}
	return subs, nil
}

// upstreamService turns an upstream key ("orders", "orders.shop",
// "orders:82", "orders.shop.svc.trellis.local") into the service it
// subscribes to: "orders.default", "orders.shop". Host names are
// case-insensitive, as the proxy treats them.
func upstreamService(key, ns string) (string, error) {
	host := key
	if h, _, err := net.SplitHostPort(key); err == nil {
		host = h
	}
	// The sidecar learns the mesh's domain only from snapshots; until then
	// it is the default, as in the proxy's own check of these keys.
	n, err := meshname.ParseService(strings.ToLower(host), ns, meshname.DefaultDomain)
	if err != nil {
		return "", err
	}
	return n.String(), nil
}

// checkPortsFree binds and releases each listen address. The proxy binds
// them again after the certificate arrives; a port taken in between still
// fails there.
func checkPortsFree(o Options) error {
	addrs := []struct{ flag, addr string }{{"--inbound", o.InboundAddr}, {"--outbound", o.OutboundAddr}, {"--admin", o.AdminAddr}}
	for _, k := range slices.Sorted(maps.Keys(o.Upstreams)) {
		addrs = append(addrs, struct{ flag, addr string }{"--upstream " + k, o.Upstreams[k]})
	}
	for _, a := range addrs {
		if a.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", a.addr)
		if err != nil {
			return fmt.Errorf("sidecar: %s %s: %w; pass %s another address (127.0.0.1:0 picks a free port, logged when the proxy is ready)", a.flag, a.addr, err, a.flag)
		}
		ln.Close()
	}
	return nil
}

func (s *sidecar) startProxy() error {
	authorizeMesh := tlsconfig.AuthorizeMemberOf(s.td)
	var clientConfigs sync.Map // peer identity → *tls.Config
	alog, alogMode, err := s.accessLog()
	if err != nil {
		return err
	}
	p, err := proxy.New(proxy.Options{
		Service:        s.o.Service,
		Namespace:      s.o.Namespace,
		AppAddr:        s.o.AppAddr,
		InboundAddr:    s.o.InboundAddr,
		OutboundAddr:   s.o.OutboundAddr,
		AdminAddr:      s.o.AdminAddr,
		Upstreams:      s.o.Upstreams,
		Identity:       s.id.String(),
		DisableMetrics: s.o.DisableMetrics,
		CertNotAfter:   s.src.NotAfter,
		ServerTLS:      identity.ServerTLS(s.src, authorizeMesh),
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
		Balancer:       s.o.Balancer,
		Subscribe:      s.subscribe,
		DrainTimeout:   s.o.DrainTimeout,
		Tracing:        s.o.Tracing,
		SamplingFixed:  s.o.SamplingFixed,
		AccessLog:      alog,
		AccessLogs:     alogMode,
		AccessLogQueue: s.o.AccessLogBuffer,
		Limits:         s.o.Limits,
		EnablePprof:    s.o.EnablePprof,
		Logger:         s.o.Logger, // the proxy scopes its own component
	})
	if err != nil {
		if alog != nil {
			alog.Close()
		}
		return err
	}
	if err := p.Start(); err != nil {
		return err
	}
	s.proxy = p
	return nil
}

// statsLoop reports the proxy's windowed request summaries to the
// control plane (internal/stats) for `trellis stat` and `trellis top`.
func (s *sidecar) statsLoop(ctx context.Context, nodeID string) {
	_ = stats.Report(ctx, stats.ReporterOptions{
		NodeID: nodeID,
		Open: func(ctx context.Context) (stats.Stream, error) {
			return s.client.OpenReport(ctx)
		},
		Recorder: s.proxy.Stats(),
		Logger:   s.o.Logger,
	})
}

// quotaLoop shares the proxy's global rate limits with its service's other
// replicas through the control plane (internal/quota).
func (s *sidecar) quotaLoop(ctx context.Context, nodeID string) {
	_ = quota.Run(ctx, quota.ClientOptions{
		NodeID: nodeID,
		Open: func(ctx context.Context) (quota.Stream, error) {
			return s.client.OpenQuota(ctx)
		},
		Limits: s.proxy.RateLimits(),
		Logger: s.o.Logger,
	})
}

// tapLoop keeps the proxy's Tap stream (trellis tap) open once the proxy
// is registered and ready: the control plane knows the node by then.
func (s *sidecar) tapLoop(ctx context.Context, nodeID string) {
	select {
	case <-s.readyCh:
	case <-ctx.Done():
		return
	}
	_ = tap.Run(ctx, tap.ClientOptions{
		NodeID: nodeID,
		Open: func(ctx context.Context) (tap.Stream, error) {
			return s.client.OpenTap(ctx)
		},
		Taps:   s.proxy.Taps(),
		Logger: s.o.Logger,
	})
}

// accessLog opens the access log sink --access-log names and says when
// the proxy writes to it.
func (s *sidecar) accessLog() (io.WriteCloser, proxy.AccessLogMode, error) {
	switch s.o.AccessLog {
	case "off":
		return nil, proxy.AccessLogNever, nil
	case "":
		return accesslog.Stdout{}, proxy.AccessLogFromMesh, nil
	case "stdout":
		return accesslog.Stdout{}, proxy.AccessLogAlways, nil
	}
	f, err := accesslog.OpenFile(s.o.AccessLog, s.o.AccessLogMaxBytes, s.o.AccessLogMaxFiles)
	if err != nil {
		return nil, 0, fmt.Errorf("sidecar: --access-log: %w", err)
	}
	return f, proxy.AccessLogAlways, nil
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
		},
		Heartbeat:     s.o.Heartbeat,
		Subscriptions: s.subscriptions,
		Apply:         s.apply,
		CertNotAfter:  s.src.NotAfter,
		Status:        s.status,
		Health:        s.health.status,
		HealthChanged: s.health.changed,
	}
}

// status reports the proxy's adaptive concurrency limit and shed count to
// the control plane, for trellis get and proxy-status, and the root its
// certificate chains to and the bundle it trusts, which CA rotation waits on.
func (s *sidecar) status(r *meshv1.WatchRequest) {
	r.ConcurrencyLimit, r.ConcurrencyShed = s.proxy.ConcurrencyStatus()
	r.CertIssuerFingerprint = s.src.CertRootFingerprint()
	r.TrustBundleFingerprint = s.src.BundleFingerprint()
}

// apply installs a pushed snapshot; an error NACKs it and the proxy keeps its
// last good config.
func (s *sidecar) apply(snap *meshv1.Snapshot) error {
	check, err := s.health.check(snap)
	if err != nil {
		err = fmt.Errorf("sidecar: %w", err)
		s.log.Warn("config refused (NACK); keeping last good config", "version", snap.GetVersion(), "err", err)
		return err
	}
	if err := s.proxy.Update(snap); err != nil {
		s.log.Warn("config refused (NACK); keeping last good config", "version", snap.GetVersion(), "err", err)
		return err
	}
	if err := s.health.apply(check); err != nil {
		s.log.Warn("health check not changed", "err", err)
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
