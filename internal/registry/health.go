package registry

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	"trellis.dev/trellis/internal/store"
)

// healthWriteAttempts bounds the compare-and-set retries of SetHealth
// (a re-registration racing it is the only writer of the key).
const healthWriteAttempts = 3

// SetHealth records the verdict of a proxy's check of its app on the
// endpoint registered under lease: the view, and with it every snapshot,
// DNS and xDS, drops an unhealthy endpoint and takes it back when healthy.
// An unchanged verdict writes nothing. It wraps ErrLeaseExpired when no
// endpoint holds the lease.
func (r *Registry) SetHealth(ctx context.Context, lease int64, healthy bool, reason string) error {
	if healthy {
		reason = "" // a reason says why an endpoint is out
	}
	for range healthWriteAttempts {
		err := r.setHealthOnce(ctx, store.LeaseID(lease), healthy, reason)
		if !errors.Is(err, store.ErrConflict) {
			return err
		}
	}
	return fmt.Errorf("registry: set health: lease %d: endpoint kept changing", lease)
}

func (r *Registry) setHealthOnce(ctx context.Context, lease store.LeaseID, healthy bool, reason string) error {
	kvs, _, err := r.st.List(ctx, EndpointPrefix)
	if err != nil {
		return fmt.Errorf("registry: set health: %w", err)
	}
	for _, kv := range kvs {
		if kv.Lease != lease || lease == 0 {
			continue
		}
		ep, err := Decode(kv.Value)
		if err != nil {
			return fmt.Errorf("registry: set health: %s: %w", kv.Key, err)
		}
		if ep.GetHealthy() == healthy && ep.GetHealthReason() == reason {
			return nil
		}
		ep.Healthy, ep.HealthReason = healthy, reason
		value, err := proto.MarshalOptions{Deterministic: true}.Marshal(ep)
		if err != nil {
			return fmt.Errorf("registry: set health: %s: %w", kv.Key, err)
		}
		op := store.Op{Type: store.OpPut, Key: kv.Key, Value: value, ExpectRevision: kv.ModRevision, Lease: lease}
		if _, err := r.st.Txn(ctx, op); err != nil {
			return fmt.Errorf("registry: set health: %s: %w", kv.Key, err)
		}
		r.log.Info("endpoint health", "id", ep.GetId(), "service", ep.GetService(), "namespace", ep.GetNamespace(),
			"healthy", healthy, "reason", reason)
		return nil
	}
	return fmt.Errorf("registry: set health: lease %d: %w", lease, ErrLeaseExpired)
}
