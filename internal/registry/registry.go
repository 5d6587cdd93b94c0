// Package registry keeps the mesh's endpoints: each proxy registers its own
// endpoint under a store lease and keeps the lease alive with heartbeats; an
// endpoint whose proxy stops heart-beating disappears with its lease.
//
// Endpoints live at /registry/endpoints/<namespace>/<service>/<id>, the value
// being the wire-format (proto) meshv1.Endpoint.
package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/meshname"
	"trellis.dev/trellis/internal/store"
)

// Prefix is where every endpoint lives in the store.
const (
	Prefix         = "/registry/"
	EndpointPrefix = "/registry/endpoints/"
)

// Lease TTL bounds. A proxy asks for its heartbeat interval × 2.5; the
// registry clamps so that a misconfigured proxy can neither flood the store
// with sub-second renewals nor leave a dead endpoint in place for ages.
const (
	DefaultTTL = 15 * time.Second
	MinTTL     = 1 * time.Second
	MaxTTL     = 5 * time.Minute
)

// Sentinel errors.
var (
	// ErrLeaseExpired: the lease is unknown or already expired; the proxy
	// must register again.
	ErrLeaseExpired = errors.New("registry: lease expired")
	// ErrInvalidEndpoint: the endpoint is missing a required field.
	ErrInvalidEndpoint = errors.New("registry: invalid endpoint")
)

// Store is what the registry needs of the control plane's store.
type Store interface {
	List(ctx context.Context, prefix string) ([]store.KV, int64, error)
	Txn(ctx context.Context, ops ...store.Op) (int64, error)
	Grant(ctx context.Context, ttl time.Duration) (store.LeaseID, error)
	KeepAlive(ctx context.Context, id store.LeaseID) error
	Revoke(ctx context.Context, id store.LeaseID) error
}

// Registry registers endpoints under leases.
type Registry struct {
	st  Store
	log *slog.Logger
}

// New returns a registry on st. A nil logger discards.
func New(st Store, logger *slog.Logger) *Registry {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Registry{st: st, log: logger.With("component", "registry")}
}

// Key is the store key of an endpoint.
func Key(namespace, service, id string) string {
	return EndpointPrefix + namespace + "/" + service + "/" + id
}

// ParseKey splits an endpoint key into its namespace, service and id.
func ParseKey(key string) (namespace, service, id string, err error) {
	rest, ok := strings.CutPrefix(key, EndpointPrefix)
	if !ok {
		return "", "", "", fmt.Errorf("registry: key %q: not under %s", key, EndpointPrefix)
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return "", "", "", fmt.Errorf("registry: key %q: want %s<namespace>/<service>/<id>", key, EndpointPrefix)
	}
	return parts[0], parts[1], parts[2], nil
}

// Decode parses a stored endpoint value.
func Decode(data []byte) (*meshv1.Endpoint, error) {
	ep := &meshv1.Endpoint{}
	if err := proto.Unmarshal(data, ep); err != nil {
		return nil, fmt.Errorf("registry: decode endpoint: %w", err)
	}
	return ep, nil
}

// ClampTTL turns a requested TTL into the one the registry grants.
func ClampTTL(ttl time.Duration) time.Duration {
	switch {
	case ttl <= 0:
		return DefaultTTL
	case ttl < MinTTL:
		return MinTTL
	case ttl > MaxTTL:
		return MaxTTL
	}
	return ttl
}

// validID checks an endpoint id: it is a store key segment, so no '/' and
// no spaces. It is not a mesh name (the sidecar makes it from the service,
// the namespace and a random suffix, so it may exceed a label's 63 bytes).
func validID(s string) error {
	if s == "" {
		return fmt.Errorf("%w: id: required", ErrInvalidEndpoint)
	}
	if strings.ContainsAny(s, "/ \t\r\n") {
		return fmt.Errorf("%w: id %q: must not contain '/' or spaces", ErrInvalidEndpoint, s)
	}
	return nil
}

func validate(ep *meshv1.Endpoint) error {
	if ep == nil {
		return fmt.Errorf("%w: endpoint: required", ErrInvalidEndpoint)
	}
	if err := validID(ep.GetId()); err != nil {
		return err
	}
	// Service and namespace are mesh names, as everywhere else: a service
	// named "Orders" or "orders_v2" could never be routed to or resolved.
	if err := meshname.CheckLabel(ep.GetService()); err != nil {
		return fmt.Errorf("%w: service: %v", ErrInvalidEndpoint, err)
	}
	if err := meshname.CheckLabel(ep.GetNamespace()); err != nil {
		return fmt.Errorf("%w: namespace: %v", ErrInvalidEndpoint, err)
	}
	if ep.GetAddress() == "" {
		return fmt.Errorf("%w: address: required", ErrInvalidEndpoint)
	}
	return nil
}

// Register puts ep in the registry under a new lease of (clamped) ttl and
// returns the lease and the granted TTL. Registering an id again replaces the
// previous registration, wherever it was (an id that moved to another
// service or namespace leaves no stale key behind). The endpoint's "app"
// label is set to its service name, which default service selectors match.
func (r *Registry) Register(ctx context.Context, ep *meshv1.Endpoint, ttl time.Duration) (int64, time.Duration, error) {
	if err := validate(ep); err != nil {
		return 0, 0, err
	}
	ep = proto.Clone(ep).(*meshv1.Endpoint)
	if ep.Labels == nil {
		ep.Labels = map[string]string{}
	}
	ep.Labels["app"] = ep.Service
	if ep.Healthy {
		ep.HealthReason = "" // a reason says why an endpoint is out
	}
	value, err := proto.MarshalOptions{Deterministic: true}.Marshal(ep)
	if err != nil {
		return 0, 0, fmt.Errorf("registry: register %s: %w", ep.Id, err)
	}
	ttl = ClampTTL(ttl)
	key := Key(ep.Namespace, ep.Service, ep.Id)

	// Stale keys of the same id elsewhere (the proxy changed its service).
	existing, _, err := r.st.List(ctx, EndpointPrefix)
	if err != nil {
		return 0, 0, fmt.Errorf("registry: register %s: %w", ep.Id, err)
	}
	lease, err := r.st.Grant(ctx, ttl)
	if err != nil {
		return 0, 0, fmt.Errorf("registry: register %s: grant lease: %w", ep.Id, err)
	}
	ops := []store.Op{{Type: store.OpPut, Key: key, Value: value, ExpectRevision: store.Any, Lease: lease}}
	var oldLeases []store.LeaseID
	for _, kv := range existing {
		if _, _, id, err := ParseKey(kv.Key); err != nil || id != ep.Id {
			continue
		}
		if kv.Key != key {
			ops = append(ops, store.Delete(kv.Key, store.Any))
		}
		if kv.Lease != 0 && kv.Lease != lease {
			oldLeases = append(oldLeases, kv.Lease)
		}
	}
	if _, err := r.st.Txn(ctx, ops...); err != nil {
		// Do not leave the fresh lease behind; the caller's ctx may be done.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		_ = r.st.Revoke(rctx, lease)
		cancel()
		return 0, 0, fmt.Errorf("registry: register %s: %w", ep.Id, err)
	}
	// The previous registration's lease now holds no key (a put moves the key
	// to the new lease); end it rather than let it linger until its TTL.
	for _, old := range oldLeases {
		if err := r.st.Revoke(ctx, old); err != nil && !errors.Is(err, store.ErrNotFound) {
			r.log.Debug("revoking replaced lease", "lease", int64(old), "err", err)
		}
	}
	r.log.Info("endpoint registered", "id", ep.Id, "service", ep.Service, "namespace", ep.Namespace,
		"address", ep.Address, "lease", int64(lease), "ttl", ttl)
	return int64(lease), ttl, nil
}

// Heartbeat keeps a lease alive. It wraps ErrLeaseExpired when the lease is
// gone, so the proxy knows to register again.
func (r *Registry) Heartbeat(ctx context.Context, lease int64) error {
	if lease == 0 {
		return fmt.Errorf("registry: heartbeat: lease 0: %w", ErrLeaseExpired)
	}
	if err := r.st.KeepAlive(ctx, store.LeaseID(lease)); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("registry: heartbeat: lease %d: %w", lease, ErrLeaseExpired)
		}
		return fmt.Errorf("registry: heartbeat: lease %d: %w", lease, err)
	}
	return nil
}

// Lookup returns the endpoint with this id in namespace and its lease, or
// an error wrapping ErrLeaseExpired when none is registered (its lease
// ended). A replica a proxy fails over to uses it to carry on the lease the
// proxy registered through another replica.
func (r *Registry) Lookup(ctx context.Context, namespace, id string) (*meshv1.Endpoint, int64, error) {
	if err := meshname.CheckLabel(namespace); err != nil {
		return nil, 0, fmt.Errorf("registry: lookup: namespace: %w", err)
	}
	if err := validID(id); err != nil {
		return nil, 0, fmt.Errorf("registry: lookup: %w", err)
	}
	kvs, _, err := r.st.List(ctx, EndpointPrefix+namespace+"/")
	if err != nil {
		return nil, 0, fmt.Errorf("registry: lookup %s/%s: %w", namespace, id, err)
	}
	for _, kv := range kvs {
		if _, _, kid, err := ParseKey(kv.Key); err != nil || kid != id {
			continue
		}
		ep, err := Decode(kv.Value)
		if err != nil {
			return nil, 0, fmt.Errorf("registry: lookup %s/%s: %w", namespace, id, err)
		}
		return ep, int64(kv.Lease), nil
	}
	return nil, 0, fmt.Errorf("registry: lookup %s/%s: %w", namespace, id, ErrLeaseExpired)
}

// Deregister ends a lease now, removing its endpoint (a proxy shutting down
// cleanly). An unknown lease is not an error: the endpoint is gone either way.
func (r *Registry) Deregister(ctx context.Context, lease int64) error {
	if err := r.st.Revoke(ctx, store.LeaseID(lease)); err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("registry: deregister lease %d: %w", lease, err)
	}
	return nil
}

// Endpoints lists every registered endpoint, ordered by namespace, service, id.
func (r *Registry) Endpoints(ctx context.Context) ([]*meshv1.Endpoint, error) {
	kvs, _, err := r.st.List(ctx, EndpointPrefix)
	if err != nil {
		return nil, fmt.Errorf("registry: list endpoints: %w", err)
	}
	out := make([]*meshv1.Endpoint, 0, len(kvs))
	for _, kv := range kvs {
		ep, err := Decode(kv.Value)
		if err != nil {
			r.log.Warn("skipping undecodable endpoint", "key", kv.Key, "err", err)
			continue
		}
		out = append(out, ep)
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if a.Service != b.Service {
			return a.Service < b.Service
		}
		return a.Id < b.Id
	})
	return out, nil
}
