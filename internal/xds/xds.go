// Package xds serves the mesh as Envoy's xDS (ADS, state-of-the-world and
// incremental), so proxyless gRPC clients (grpc-go's xds:/// targets) and
// Envoy join the mesh without a Trellis proxy of their own.
//
// The adapter compiles one snapshot with the same compiler the Trellis push
// uses, for a node subscribed to every service of the mesh view, and
// translates it (Translate) into Listeners, RouteConfigurations, Clusters
// and ClusterLoadAssignments. One resource set serves every client: each
// asks for the names it dials, and go-control-plane's snapshot cache answers
// with those. The set is versioned with the view revision at which its
// content last changed, and replaced whenever the compiler says snapshots
// may have changed.
//
// Clients authenticate with mTLS: the control plane's gRPC port requires,
// for xDS streams, a client certificate the mesh's CA issued (a workload
// certificate with one SPIFFE ID). Server callbacks keep each stream's
// node, identity and ACKed versions per type URL for proxy-status.
package xds

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/compiler"
	"trellis.dev/trellis/internal/config"
	"trellis.dev/trellis/internal/view"
)

// The node the adapter compiles for: it is no service of the mesh, so its
// own (empty) service is dropped from the translation.
const (
	adapterNodeID    = "xds-adapter"
	adapterService   = "xds-adapter"
	adapterNamespace = "trellis-system"
	// cacheKey is the one snapshot cache entry every client reads.
	cacheKey = "mesh"
)

// Compiler is what the adapter needs of the compiler.
type Compiler interface {
	Snapshot(ctx context.Context, n compiler.Node) (*meshv1.Snapshot, error)
	Subscribe() (<-chan struct{}, func())
}

// View is what the adapter needs of the mesh view: which services exist.
type View interface {
	State() *view.State
}

// Metrics is what the adapter records.
type Metrics interface {
	// StreamOpened and StreamClosed count streams by mode ("sotw", "delta").
	StreamOpened(mode string)
	StreamClosed(mode string)
	// Refused counts a stream refused for want of a mesh certificate.
	Refused()
	// Nacked counts a client's refusal of a resource type.
	Nacked(typeURL string)
	// Published counts a new resource set in the cache.
	Published()
}

type nopMetrics struct{}

func (nopMetrics) StreamOpened(string) {}
func (nopMetrics) StreamClosed(string) {}
func (nopMetrics) Refused()            {}
func (nopMetrics) Nacked(string)       {}
func (nopMetrics) Published()          {}

// Options configure a Server.
type Options struct {
	// TrustDomain is the mesh's; a client certificate must carry a SPIFFE
	// ID in it.
	TrustDomain string
	Metrics     Metrics
	Logger      *slog.Logger
}

// Server is the xDS adapter.
type Server struct {
	comp    Compiler
	view    View
	opts    Options
	log     *slog.Logger
	cache   cache.SnapshotCache
	xds     server.Server
	clients *clients

	mu          sync.Mutex
	lastContent string // compiled snapshot version of the published set
	version     string // the published set's version
}

// New returns an adapter over comp and v. ctx bounds the xDS streams'
// lifetime; Run keeps the resources current.
func New(ctx context.Context, comp Compiler, v View, o Options) *Server {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Metrics == nil {
		o.Metrics = nopMetrics{}
	}
	s := &Server{comp: comp, view: v, opts: o, log: o.Logger.With("component", "xds")}
	s.clients = newClients(o.TrustDomain, o.Metrics, s.log)
	// ads=false: a name the set lacks is answered as absent at once (a
	// client dialling an unknown service fails fast) instead of waiting.
	// Its info lines are per request: debug here.
	s.cache = cache.NewSnapshotCache(false, oneKey{}, cacheLogger{s.log})
	s.xds = server.NewServer(ctx, s.cache, s.clients)
	return s
}

// oneKey maps every node onto the one resource set.
type oneKey struct{}

func (oneKey) ID(*corev3.Node) string { return cacheKey }

// Register adds the Aggregated Discovery Service (SotW and delta) to r.
func (s *Server) Register(r grpc.ServiceRegistrar) {
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(r, s.xds)
}

// Run publishes the mesh's resources and republishes them whenever the
// compiler says snapshots may have changed, until ctx ends. It always
// returns ctx's error.
func (s *Server) Run(ctx context.Context) error {
	changes, cancel := s.comp.Subscribe()
	defer cancel()
	for {
		if err := s.Update(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("xds resources not updated; clients keep the previous ones", "err", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changes:
		}
	}
}

// Update compiles and publishes the current resources, unless their
// content is what is already published.
func (s *Server) Update(ctx context.Context) error {
	subs := meshServices(s.view.State())
	snap, err := s.comp.Snapshot(ctx, compiler.Node{ID: adapterNodeID, Service: adapterService,
		Namespace: adapterNamespace, Subscriptions: subs})
	if err != nil {
		return fmt.Errorf("xds: compile: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if snap.GetVersion() == s.lastContent {
		return nil
	}
	snap.Services = withoutAdapter(snap.GetServices(), subs)
	res, err := Translate(snap)
	if err != nil {
		return err
	}
	version := strconv.FormatInt(snap.GetRevision(), 10)
	cs, err := cache.NewSnapshot(version, map[resource.Type][]types.Resource(res))
	if err != nil {
		return fmt.Errorf("xds: snapshot: %w", err)
	}
	// No cs.Consistent(): go-control-plane follows RDS names only in
	// filter-chain listeners, not in API listeners; TestReferencesResolve
	// checks the translation's names instead.
	if err := s.cache.SetSnapshot(ctx, cacheKey, cs); err != nil {
		return fmt.Errorf("xds: publish %s: %w", version, err)
	}
	s.lastContent, s.version = snap.GetVersion(), version
	s.opts.Metrics.Published()
	s.log.Debug("xds resources published", "version", version, "services", len(snap.GetServices()))
	return nil
}

// Version is the published resource set's version ("" before the first).
func (s *Server) Version() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.version
}

// Clients lists the connected xDS streams.
func (s *Server) Clients() []ClientStatus { return s.clients.list() }

// meshServices names every service of the view as "name.namespace":
// declared ones, ones with registered endpoints, and ones routes or
// policies attach to.
func meshServices(st *view.State) []string {
	seen := map[string]bool{}
	var out []string
	add := func(k config.ServiceKey) {
		if h := k.Name + "." + k.Namespace; k.Name != "" && k.Namespace != "" && !seen[h] {
			seen[h] = true
			out = append(out, h)
		}
	}
	for _, r := range st.Resources() {
		if d, ok := r.Object.(config.Declarer); ok {
			add(d.Declares())
		}
		if a, ok := r.Object.(config.Attacher); ok {
			for _, at := range a.Attachments() {
				add(at.Service)
			}
		}
	}
	for _, ep := range st.Endpoints() {
		add(config.ServiceKey{Namespace: ep.GetNamespace(), Name: ep.GetService()})
	}
	return out
}

// withoutAdapter drops the adapter node's own service, unless the mesh
// really has one of that name.
func withoutAdapter(svcs []*meshv1.Service, subs []string) []*meshv1.Service {
	own := adapterService + "." + adapterNamespace
	for _, s := range subs {
		if s == own {
			return svcs
		}
	}
	out := make([]*meshv1.Service, 0, len(svcs))
	for _, s := range svcs {
		if hostOf(s) != own {
			out = append(out, s)
		}
	}
	return out
}
