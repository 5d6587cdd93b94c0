// Package control wires the control plane: store, CA, registry, compiler, the
// gRPC Mesh server the proxies talk to, and the HTTPS admin API the CLI uses.
// It owns their lifecycle and the files in the data directory.
package control

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/apply"
	"trellis.dev/trellis/internal/ca"
	"trellis.dev/trellis/internal/compiler"
	"trellis.dev/trellis/internal/config"
	meshdns "trellis.dev/trellis/internal/dns"
	"trellis.dev/trellis/internal/identity"
	"trellis.dev/trellis/internal/push"
	"trellis.dev/trellis/internal/quota"
	"trellis.dev/trellis/internal/registry"
	"trellis.dev/trellis/internal/stats"
	"trellis.dev/trellis/internal/store"
	"trellis.dev/trellis/internal/tap"
	"trellis.dev/trellis/internal/telemetry"
	"trellis.dev/trellis/internal/view"
	"trellis.dev/trellis/internal/xds"
)

// Defaults.
const (
	DefaultGRPCAddr    = "127.0.0.1:15010"
	DefaultAdminAddr   = "127.0.0.1:15011"
	DefaultMetricsAddr = "127.0.0.1:15012"
	DefaultTrustDomain = "trellis.local"
	DefaultDomain      = "trellis.local"

	// ControlNamespace and ControlServiceAccount name the control plane's
	// own identity: spiffe://<td>/ns/trellis-system/sa/control.
	ControlNamespace      = "trellis-system"
	ControlServiceAccount = "control"
)

// Files in the data directory.
const (
	StoreFile          = "store.db"
	CAFile             = "ca.crt"
	AdminTokenFile     = "admin-token"
	BootstrapTokenFile = "bootstrap-token"
	AddrsFile          = "control.json"
)

// Options configure the control plane.
type Options struct {
	// DataDir holds the store, tokens, ca.crt and control.json. Required.
	DataDir string
	// GRPCAddr is where proxies connect (default 127.0.0.1:15010).
	GRPCAddr string
	// AdminAddr is the HTTPS admin API (default 127.0.0.1:15011).
	AdminAddr string
	// MetricsAddr serves Prometheus /metrics over plain HTTP, no token
	// (default 127.0.0.1:15012): it holds counts only, no names or secrets,
	// and binds to loopback unless AllowRemote.
	MetricsAddr string
	// EnablePprof serves /debug/pprof/ on the metrics listener (profiling
	// the control plane, e.g. under the scale harness). Off by default: any
	// local user could read profiles and the command line.
	EnablePprof bool
	TrustDomain string
	Domain      string
	// CACertFile, CAKeyFile, CARootFile: an operator-provided signing
	// certificate instead of the generated root (see ca.Options).
	CACertFile, CAKeyFile, CARootFile string
	// CASealKeyFile seals the generated root's private key in the store
	// (see ca.LoadSealKey); every replica on one store needs the same file.
	CASealKeyFile string
	// AllowRemote permits listening on non-loopback addresses.
	AllowRemote bool
	// InsecureBootstrapToken is dev mode (make demo): the data dir's
	// bootstrap-token obtains a certificate for ANY identity, as before
	// join tokens. Off by default; the control plane warns loudly when on
	// and `trellis check` shows it.
	InsecureBootstrapToken bool
	// WorkloadTTL of issued certificates (default: the CA's, 24h).
	WorkloadTTL time.Duration
	// DNS (internal/dns), UDP and TCP. DNSAddr "" serves the default
	// 127.0.0.1:8600 if that port is free (busy: a warning, so a second
	// control plane or the demo still starts); DNSOff serves none; any
	// other address must bind. DNSTTL of every record (default 5s).
	// DNSForward is an upstream resolver for non-mesh names (empty: they
	// are REFUSED).
	DNSAddr    string
	DNSTTL     time.Duration
	DNSForward string
	// Store, if set, is the store to run on (the caller closes it after
	// Stop); nil opens the store Stop closes: etcd if Etcd.Endpoints are
	// set, else the bbolt file in DataDir.
	Store store.Store
	// ReplicaGRPCAddrs are every replica's gRPC address, this one's
	// included, written to control.json (grpc_replicas) for proxies that
	// discover the control plane from the data dir.
	ReplicaGRPCAddrs []string
	// LeaderTTL is the leader election's session lease on etcd (default
	// 10s): a dead leader is replaced within it.
	LeaderTTL time.Duration
	// CompactionInterval: the leader compacts etcd's history every
	// interval, keeping one interval of it (default 5m; negative: never,
	// when etcd compacts itself with --auto-compaction-retention).
	CompactionInterval time.Duration
	// StatusFlush: how often a replica on etcd writes the statuses of its
	// proxies that changed, for the other replicas (default 1s).
	StatusFlush time.Duration
	// ReplicaID names this replica in snapshots, proxy-status and the
	// leader election (default hostname:grpc-port).
	ReplicaID string
	// Etcd connects the control plane to etcd instead of bbolt, so several
	// replicas can share one store (Logger defaults to Options.Logger).
	Etcd   store.EtcdOptions
	Logger *slog.Logger
	// DefaultAuthorization decides requests to a workload no ALLOW
	// AuthorizationPolicy applies to: "allow" (default, as Istio and
	// Linkerd) or "deny".
	DefaultAuthorization string
	// XDSOff serves no xDS (ADS) on the gRPC port (see internal/xds).
	XDSOff bool
}

func (o *Options) setDefaults() {
	if o.GRPCAddr == "" {
		o.GRPCAddr = DefaultGRPCAddr
	}
	if o.AdminAddr == "" {
		o.AdminAddr = DefaultAdminAddr
	}
	if o.MetricsAddr == "" {
		o.MetricsAddr = DefaultMetricsAddr
	}
	if o.TrustDomain == "" {
		o.TrustDomain = DefaultTrustDomain
	}
	if o.Domain == "" {
		o.Domain = DefaultDomain
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.DefaultAuthorization == "" {
		o.DefaultAuthorization = DefaultAuthorizationAllow
	}
}

// Validate checks the options after defaults.
func (o *Options) Validate() error {
	if o.DataDir == "" {
		return errors.New("dataDir: required")
	}
	if err := checkDefaultAuthz(o.DefaultAuthorization); err != nil {
		return err
	}
	for _, a := range []struct{ field, addr string }{{"grpcAddr", o.GRPCAddr}, {"adminAddr", o.AdminAddr}, {"metricsAddr", o.MetricsAddr}} {
		host, _, err := net.SplitHostPort(a.addr)
		if err != nil {
			return fmt.Errorf("%s: %q: %w", a.field, a.addr, err)
		}
		if !o.AllowRemote && !isLoopback(host) {
			return fmt.Errorf("%s: %q is not a loopback address; use 127.0.0.1, ::1 or localhost, or pass --allow-remote to listen beyond this machine", a.field, a.addr)
		}
	}
	if err := o.validateReplica(); err != nil {
		return err
	}
	return o.validateDNS()
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Control is a running control plane.
type Control struct {
	o   Options
	log *slog.Logger
	// st is the store every component uses, timed for /metrics; raw is
	// the same store untimed; ownStore: Stop closes raw.
	st, raw  store.Store
	ownStore bool
	// replica is this replica's id (Options.ReplicaID or its default).
	replica string
	// leader is this replica's standing in the election; status shares
	// proxy statuses with the other replicas (nil with bbolt: one replica).
	leader  *Leader
	status  *statusShare
	meter   *telemetry.ControlMetrics
	ca      *ca.CA
	rotator *ca.Rotator
	reg     *registry.Registry
	view    *view.View
	comp    *compiler.Compiler
	push    *push.Server
	grpc    *grpc.Server
	http    *http.Server
	admin   *admin
	tokens  *tokenStore
	grpcLn  net.Listener
	adminLn net.Listener
	// metricsSrv serves /metrics on metricsLn, plain HTTP.
	metricsSrv *http.Server
	metricsLn  net.Listener
	promReg    *prometheus.Registry
	dns        *meshdns.Server // nil when DNS is off
	xds        *xds.Server     // nil when xDS is off
	xdsStop    context.CancelFunc

	cancel context.CancelFunc
	wg     sync.WaitGroup
	errc   chan error

	stopOnce sync.Once
	stopErr  error
}

// Run starts the control plane and blocks until ctx ends, then stops it
// gracefully. It returns early with an error if a server fails.
func Run(ctx context.Context, o Options) error {
	c, err := Start(ctx, o)
	if err != nil {
		return err
	}
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-c.errc:
	}
	return errors.Join(runErr, c.Stop())
}

// Start opens the data directory, the store and the CA, and starts serving.
// Stop ends it.
func Start(ctx context.Context, o Options) (_ *Control, err error) {
	o.setDefaults()
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("control: options: %w", err)
	}
	log := o.Logger.With("component", "control")
	td, err := identity.ParseTrustDomain(o.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("control: trust domain: %w", err)
	}
	if err := makePrivateDir(o.DataDir, log); err != nil {
		return nil, fmt.Errorf("control: data dir: %w", err)
	}
	c := &Control{o: o, log: log, errc: make(chan error, 2)}
	defer func() {
		if err != nil {
			c.closeAll()
		}
	}()

	if err := c.openStore(); err != nil {
		return nil, err
	}
	c.ca, err = ca.LoadOrCreate(ctx, c.st, ca.Options{
		TrustDomain: o.TrustDomain,
		CertFile:    o.CACertFile,
		KeyFile:     o.CAKeyFile,
		RootFile:    o.CARootFile,
		SealKeyFile: o.CASealKeyFile,
		WorkloadTTL: o.WorkloadTTL,
		Logger:      o.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(o.DataDir, CAFile), c.ca.BundlePEM(), 0o644); err != nil {
		return nil, fmt.Errorf("control: write trust bundle: %w", err)
	}
	adminToken, err := loadOrCreateToken(filepath.Join(o.DataDir, AdminTokenFile))
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	devToken, err := c.devBootstrapToken()
	if err != nil {
		return nil, err
	}

	id, err := identity.WorkloadID(o.TrustDomain, ControlNamespace, ControlServiceAccount)
	if err != nil {
		return nil, fmt.Errorf("control: identity: %w", err)
	}
	dns, ips := serverNames(o.GRPCAddr, o.AdminAddr)
	tlsConfig, err := c.ca.ServerTLSConfig(id, dns, ips, "h2")
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	adminTLS, err := c.ca.ServerTLSConfig(id, dns, ips, "h2", "http/1.1")
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}

	c.reg = registry.New(c.st, o.Logger)
	c.rotator = c.newRotator()
	c.view = view.New(c.st, view.Options{Logger: o.Logger})
	c.comp = compiler.New(c.view, compiler.Options{
		TrustDomain: td.String(),
		Domain:      o.Domain,
		Bundle:      c.ca.Bundle,
		Logger:      o.Logger,
		// Validate has checked it is allow or deny.
		DefaultAuthorization: defaultAuthz(o.DefaultAuthorization),
	})
	tokens := &tokenStore{st: c.st, now: time.Now}
	c.tokens = tokens
	refusals, err := telemetry.NewControlSecurity(c.promReg, push.RefusalReasons())
	if err != nil {
		return nil, fmt.Errorf("control: metrics: %w", err)
	}
	if err := telemetry.RegisterCARotation(c.promReg, ca.Phases(), func() (string, int) { return c.ca.Phase(), c.rotator.Lagging() }); err != nil {
		return nil, fmt.Errorf("control: metrics: %w", err)
	}
	taps := tap.NewHub(o.Logger)
	statsStore := stats.NewStore(nil)
	if c.grpcLn, err = net.Listen("tcp", o.GRPCAddr); err != nil {
		return nil, fmt.Errorf("control: grpc listener: %w", err)
	}
	if c.adminLn, err = net.Listen("tcp", o.AdminAddr); err != nil {
		return nil, fmt.Errorf("control: admin listener: %w", err)
	}
	if c.metricsLn, err = net.Listen("tcp", o.MetricsAddr); err != nil {
		return nil, fmt.Errorf("control: metrics listener: %w", err)
	}
	c.replica = replicaID(o.ReplicaID, c.grpcLn.Addr())
	c.push = push.NewServer(push.ServerOptions{
		TrustDomain: td,
		ValidToken:  push.TokenValidator(devToken),
		Tokens:      tokens,
		Auditor:     tokens,
		Accounts:    newServiceAccounts(c.st),
		Refusals:    refusals,
		Signer:      c.ca,
		Registry:    registryAdapter{c.reg},
		Snapshots:   snapshotsAdapter{c.comp},
		MaxTTL:      registry.MaxTTL,
		Metrics:     c.meter,
		Quota:       quota.NewAllocator(quota.AllocatorOptions{}),
		Tap:         taps,
		Stats:       statsStore,
		Replica:     c.replica,
		Logger:      o.Logger,
	})

	if err := c.startDNS(); err != nil {
		return nil, err
	}
	if err := writeAddrs(o.DataDir, c.addrs()); err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}

	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c.cancel = cancel
	c.wg.Go(func() { c.view.Run(runCtx) })
	c.wg.Go(func() { c.comp.Run(runCtx) })
	if err := c.startReplication(runCtx); err != nil {
		return nil, err
	}
	c.runRotation(runCtx) // under the leader startReplication elected

	c.grpc = grpc.NewServer(push.GRPCServerOptions(tlsConfig)...)
	c.push.Register(c.grpc)
	if err := c.startXDS(runCtx); err != nil {
		return nil, err
	}
	c.wg.Go(func() {
		if err := c.grpc.Serve(c.grpcLn); err != nil {
			c.errc <- fmt.Errorf("control: grpc server: %w", err)
		}
	})

	// Open taps are streams that never end on their own: shutting the
	// admin server down ends them.
	tapsStopping := make(chan struct{})
	c.admin = newAdmin(adminDeps{
		store:         c.st,
		applier:       apply.New(auditingStore{c.st}, apply.Options{Logger: o.Logger}),
		token:         adminToken,
		tokens:        tokens,
		statuses:      c.proxyStatuses,
		awaitRevision: c.awaitRevision,
		replicas:      c.leader.Replicas,
		self:          c.replica,
		endpoints:     c.reg.Endpoints,
		xdsClients:    c.xdsClients,
		snapshots:     c.comp,
		rotator:       c.rotator,
		stats:         statsStore,
		caughtUp: func(ctx context.Context) error {
			rev, err := c.st.Revision(ctx)
			if err == nil {
				_, err = c.view.WaitFor(ctx, rev)
			}
			return err
		},
		taps:     taps,
		stopping: tapsStopping,
		logger:   o.Logger,
	})
	c.http = &http.Server{
		Handler:           c.admin,
		TLSConfig:         adminTLS,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          serverErrorLog(log, c.admin.refusalLog),
	}
	c.http.RegisterOnShutdown(func() { close(tapsStopping) })
	c.wg.Go(func() {
		if err := c.http.ServeTLS(c.adminLn, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			c.errc <- fmt.Errorf("control: admin server: %w", err)
		}
	})

	c.serveMetrics()

	log.Info("control plane started", "grpc", c.grpcLn.Addr().String(), "admin", c.adminLn.Addr().String(),
		"metrics", c.metricsLn.Addr().String(), "trust_domain", td.String(), "data_dir", o.DataDir)
	return c, nil
}

// openStore takes the injected store or opens bbolt in the data dir, and
// registers the metrics, whose store timings wrap it.
func (c *Control) openStore() error {
	c.raw = c.o.Store
	if c.raw == nil {
		s, err := c.o.openOwnStore()
		if err != nil {
			return fmt.Errorf("control: %w", err)
		}
		c.raw, c.ownStore = s, true
	}
	c.promReg = prometheus.NewRegistry()
	meter, err := telemetry.NewControlMetrics(c.promReg, telemetry.ControlState{
		ConnectedProxies:  func() int { return c.push.Counters().Streams },
		SoonestCertExpiry: func() (time.Time, bool) { return c.push.SoonestCertExpiry() },
		ProxyStates:       c.proxyStates,
		States:            []string{push.StateSynced, push.StateStale, push.StateNacked, push.StatePending},
		Resources:         func(context.Context) (map[string]int, error) { return countResources(c.view.State()), nil },
		Kinds:             config.Kinds(),
		StoreOps:          store.OpNames(),
	})
	if err == nil {
		err = c.promReg.Register(collectors.NewGoCollector())
	}
	if err == nil {
		err = c.promReg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	if err == nil {
		err = telemetry.RegisterPushVolume(c.promReg, func() uint64 { return c.push.Counters().PushedBytes }, func() uint64 { return c.push.Counters().Incremental })
	}
	if err != nil {
		return fmt.Errorf("control: metrics: %w", err)
	}
	c.meter = meter
	c.st = store.Observed(c.raw, meter)
	return nil
}

// openOwnStore opens etcd when it is configured, else bbolt in the data dir.
func (o *Options) openOwnStore() (store.Store, error) {
	if len(o.Etcd.Endpoints) == 0 {
		return store.NewBolt(filepath.Join(o.DataDir, StoreFile), store.BoltOptions{Logger: o.Logger})
	}
	e := o.Etcd
	if e.Logger == nil {
		e.Logger = o.Logger
	}
	o.Logger.Info("store on etcd", "component", "control", "endpoints", e.Endpoints, "prefix", e.Prefix)
	return store.NewEtcd(e)
}

// serveMetrics serves /metrics from the registry. No token: it holds
// aggregate counts only (no resource names, identities or secrets), and it
// listens on loopback unless the operator passed --allow-remote.
func (c *Control) serveMetrics() {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(c.promReg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(c.log.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.HandleFunc("GET "+PrometheusSDPath, c.serveSD)
	if c.o.EnablePprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "not found: the control plane serves GET /metrics and GET "+PrometheusSDPath+" here; the API is on the admin address", http.StatusNotFound)
	})
	c.metricsSrv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(c.log.Handler(), slog.LevelDebug),
	}
	c.wg.Go(func() {
		if err := c.metricsSrv.Serve(c.metricsLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			c.errc <- fmt.Errorf("control: metrics server: %w", err)
		}
	})
}

// countResources counts the mesh view's resources by kind, for the
// resources gauge: from memory, so a scrape costs the store nothing.
func countResources(st *view.State) map[string]int {
	counts := map[string]int{}
	for _, r := range st.Resources() {
		counts[r.Object.Ref().Kind]++
	}
	return counts
}

func (c *Control) addrs() Addrs {
	return Addrs{GRPC: c.grpcLn.Addr().String(), Replicas: c.o.ReplicaGRPCAddrs, Admin: c.adminLn.Addr().String(), Metrics: c.metricsLn.Addr().String(),
		DNS: c.DNSAddr(), InsecureBootstrapToken: c.o.InsecureBootstrapToken}
}

// Addrs returns the addresses actually listened on (useful with port 0).
func (c *Control) Addrs() (grpcAddr, adminAddr string) {
	return c.grpcLn.Addr().String(), c.adminLn.Addr().String()
}

// MetricsAddr returns the address /metrics is served on.
func (c *Control) MetricsAddr() string { return c.metricsLn.Addr().String() }

// Err receives a server's failure, if one fails while running.
func (c *Control) Err() <-chan error { return c.errc }

// Stop ends watch streams, drains both servers (5s at most), stops the
// compiler and closes the store. Safe to call more than once.
func (c *Control) Stop() error {
	c.stopOnce.Do(func() {
		c.push.Shutdown()
		c.stopXDS()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done := make(chan struct{})
		go func() { c.grpc.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			c.grpc.Stop()
		}
		if err := c.http.Shutdown(ctx); err != nil {
			c.http.Close()
		}
		if err := c.metricsSrv.Shutdown(ctx); err != nil {
			c.metricsSrv.Close()
		}
		c.stopDNS()
		c.cancel()
		c.wg.Wait()
		if c.ownStore {
			c.stopErr = c.raw.Close()
		}
		c.log.Info("control plane stopped")
	})
	return c.stopErr
}

// closeAll releases what a failed Start opened.
func (c *Control) closeAll() {
	if c.grpcLn != nil {
		c.grpcLn.Close()
	}
	if c.adminLn != nil {
		c.adminLn.Close()
	}
	if c.metricsLn != nil {
		c.metricsLn.Close()
	}
	c.stopDNS()
	if c.ownStore {
		c.raw.Close()
	}
}

// serverNames are the SANs of the control plane's certificate: loopback
// always, plus the listen hosts when they are something else.
func serverNames(addrs ...string) ([]string, []net.IP) {
	dns := []string{"localhost"}
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	for _, a := range addrs {
		host, _, err := net.SplitHostPort(a)
		if err != nil || host == "" || isLoopback(host) {
			continue
		}
		if ip := net.ParseIP(host); ip != nil {
			if !ip.IsUnspecified() {
				ips = append(ips, ip)
			}
			continue
		}
		dns = append(dns, host)
	}
	return dns, ips
}

// loadOrCreateToken reads a token file, creating it (32 random bytes, hex,
// mode 0600) on first use. An existing token is kept across restarts so
// proxies and the CLI keep working.
func loadOrCreateToken(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		tok := strings.TrimSpace(string(data))
		if tok == "" {
			return "", fmt.Errorf("token %s is empty; delete it to generate a new one", path)
		}
		if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
			if err := os.Chmod(path, 0o600); err != nil {
				return "", fmt.Errorf("token %s: %w", path, err)
			}
		}
		return tok, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("token: %w", err)
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("token: %w", err)
	}
	tok := hex.EncodeToString(b[:])
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("token: %w", err)
	}
	if _, err := f.WriteString(tok + "\n"); err != nil {
		f.Close()
		return "", fmt.Errorf("token %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("token %s: %w", path, err)
	}
	return tok, nil
}

// Addrs is what AddrsFile holds: where a running control plane listens, so
// the CLI and proxies on the same machine find it from the data dir alone.
type Addrs struct {
	GRPC  string `json:"grpc_addr"`
	Admin string `json:"admin_addr"`
	// Replicas are every replica's gRPC address (--replica-grpc-addrs),
	// when several share one store: a proxy that discovers the control
	// plane from this file is given them all and fails over among them.
	Replicas []string `json:"grpc_replicas,omitempty"`
	// Metrics is where /metrics is served; absent in files written by
	// older versions.
	Metrics string `json:"metrics_addr,omitempty"`
	// DNS is where DNS is served (UDP and TCP); absent when it is off.
	DNS string `json:"dns_addr,omitempty"`
	// InsecureBootstrapToken: dev mode is on (any holder of
	// bootstrap-token may obtain any identity); `trellis check` warns.
	InsecureBootstrapToken bool `json:"insecure_bootstrap_token,omitempty"`
}

// ReadAddrs reads the addresses a control plane wrote to dataDir.
func ReadAddrs(dataDir string) (Addrs, error) {
	path := filepath.Join(dataDir, AddrsFile)
	raw, err := os.ReadFile(path)
	if err != nil {
		return Addrs{}, err
	}
	var a Addrs
	if err := json.Unmarshal(raw, &a); err != nil {
		return Addrs{}, fmt.Errorf("%s: %w", path, err)
	}
	if a.GRPC == "" || a.Admin == "" {
		return Addrs{}, fmt.Errorf("%s: grpc_addr and admin_addr are required", path)
	}
	return a, nil
}

func writeAddrs(dir string, a Addrs) error {
	b, err := json.MarshalIndent(a, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, AddrsFile), append(b, '\n'), 0o644)
}

// writeFileAtomic writes via a temporary file and rename, so a reader never
// sees half a file.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// registryAdapter maps the registry's expiry sentinel onto push's.
type registryAdapter struct{ r *registry.Registry }

func (a registryAdapter) Register(ctx context.Context, ep *meshv1.Endpoint, ttl time.Duration) (int64, time.Duration, error) {
	return a.r.Register(ctx, ep, ttl)
}

func (a registryAdapter) Heartbeat(ctx context.Context, lease int64) error {
	err := a.r.Heartbeat(ctx, lease)
	if errors.Is(err, registry.ErrLeaseExpired) {
		return fmt.Errorf("%w: %w", push.ErrLeaseNotFound, err)
	}
	return err
}

func (a registryAdapter) SetHealth(ctx context.Context, lease int64, healthy bool, reason string) error {
	err := a.r.SetHealth(ctx, lease, healthy, reason)
	if errors.Is(err, registry.ErrLeaseExpired) {
		return fmt.Errorf("%w: %w", push.ErrLeaseNotFound, err)
	}
	return err
}

func (a registryAdapter) Lookup(ctx context.Context, namespace, id string) (*meshv1.Endpoint, int64, error) {
	ep, lease, err := a.r.Lookup(ctx, namespace, id)
	if errors.Is(err, registry.ErrLeaseExpired) {
		return nil, 0, fmt.Errorf("%w: %w", push.ErrLeaseNotFound, err)
	}
	return ep, lease, err
}

// snapshotsAdapter feeds push nodes to the compiler.
type snapshotsAdapter struct{ c *compiler.Compiler }

func (a snapshotsAdapter) Snapshot(ctx context.Context, n push.Node) (*meshv1.Snapshot, error) {
	return a.c.Snapshot(ctx, compiler.Node{ID: n.ID, Service: n.Service, Namespace: n.Namespace, Subscriptions: n.Subscriptions})
}

func (a snapshotsAdapter) Subscribe() (<-chan struct{}, func()) { return a.c.Subscribe() }

// tokenEqual compares in constant time.
func tokenEqual(got, want string) bool {
	return want != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// DNS wiring: the server reads the same view as the compiler.

// DNSOff as Options.DNSAddr serves no DNS.
const DNSOff = "off"

func (o *Options) validateDNS() error {
	if o.DNSAddr == "" || o.DNSAddr == DNSOff {
		return nil
	}
	host, _, err := net.SplitHostPort(o.DNSAddr)
	if err != nil {
		return fmt.Errorf("dnsAddr: %q: %w (or %q to serve no DNS)", o.DNSAddr, err, DNSOff)
	}
	if !o.AllowRemote && !isLoopback(host) {
		return fmt.Errorf("dnsAddr: %q is not a loopback address; use 127.0.0.1, ::1 or localhost, or pass --allow-remote to listen beyond this machine", o.DNSAddr)
	}
	return nil
}

// startDNS serves DNS from the view unless it is off; see Options.DNSAddr
// for a busy default port.
func (c *Control) startDNS() error {
	if c.o.DNSAddr == DNSOff {
		return nil
	}
	meter, err := telemetry.NewDNSMetrics(c.promReg)
	if err != nil {
		return fmt.Errorf("control: dns metrics: %w", err)
	}
	addr := cmp.Or(c.o.DNSAddr, meshdns.DefaultAddr)
	s, err := meshdns.Start(c.view, meshdns.Options{Addr: addr, Domain: c.o.Domain, TTL: c.o.DNSTTL,
		Forward: c.o.DNSForward, Metrics: meter, Logger: c.o.Logger})
	switch {
	case err != nil && c.o.DNSAddr == "" && errors.Is(err, syscall.EADDRINUSE):
		c.log.Warn("DNS port in use: serving no DNS; choose another with --dns-addr, or --dns-addr off",
			"addr", addr, "err", err)
		return nil
	case err != nil:
		return fmt.Errorf("control: %w", err)
	}
	c.dns = s
	return nil
}

// DNSAddr is where DNS is served, "" when it is not.
func (c *Control) DNSAddr() string {
	if c.dns == nil {
		return ""
	}
	return c.dns.Addr()
}

func (c *Control) stopDNS() {
	if c.dns == nil {
		return
	}
	if err := c.dns.Stop(); err != nil {
		c.log.Warn("stopping DNS", "err", err)
	}
}

// devBootstrapToken is the shared bootstrap token in dev mode, "" (none
// valid) otherwise. Outside dev mode a bootstrap-token file left by an
// earlier dev run is ignored, and the log says so.
func (c *Control) devBootstrapToken() (string, error) {
	path := filepath.Join(c.o.DataDir, BootstrapTokenFile)
	if !c.o.InsecureBootstrapToken {
		if _, err := os.Stat(path); err == nil {
			c.log.Warn("ignoring the bootstrap-token file: it is accepted only with --insecure-bootstrap-token (dev mode); proxies join with 'trellis token create' tokens", "file", path)
		}
		return "", nil
	}
	tok, err := loadOrCreateToken(path)
	if err != nil {
		return "", fmt.Errorf("control: %w", err)
	}
	c.log.Warn("INSECURE DEV MODE (--insecure-bootstrap-token): anyone who can read the bootstrap-token file can obtain a certificate for ANY identity, the control plane's included; never use this outside a demo", "file", path)
	return tok, nil
}

// makePrivateDir creates dir 0700, or narrows an existing one to 0700: it
// holds the store (the CA's key unless sealed, token hashes) and the admin
// token, which no other user of the machine may read.
func makePrivateDir(dir string, log *slog.Logger) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		log.Warn("data dir was readable by other users; narrowed to 0700", "dir", dir, "was", fi.Mode().Perm().String())
		return os.Chmod(dir, 0o700)
	}
	return nil
}
