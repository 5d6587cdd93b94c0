package control

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"time"

	"trellis.dev/trellis/internal/ca"
	"trellis.dev/trellis/internal/store"
)

// rotationStepEvery is how often the rotator checks the fleet while a
// rotation runs: proxies report within a message of catching up, so a
// phase ends within about this long of its last proxy.
const rotationStepEvery = 500 * time.Millisecond

// fleet is the CA rotation's view of the proxies: every endpoint in the
// registry (the store, so all replicas' proxies), with what the proxy last
// reported on its Watch stream if it is connected to this replica.
type fleet struct{ c *Control }

func (f fleet) Proxies(ctx context.Context) ([]ca.FleetProxy, error) {
	eps, err := f.c.reg.Endpoints(ctx)
	if err != nil {
		return nil, err
	}
	byNode := map[string]ca.FleetProxy{}
	for _, st := range f.c.proxyStatuses() { // every replica's, on a shared store
		p := ca.FleetProxy{Node: st.NodeID, Connected: true}
		// Statuses hold what the proxy sent, hex-encoded; a value that
		// does not decode compares unequal, as it should.
		p.BundleFingerprint, _ = hex.DecodeString(st.TrustBundle)
		p.CertRootFingerprint, _ = hex.DecodeString(st.CertIssuer)
		byNode[st.NodeID] = p
	}
	out := make([]ca.FleetProxy, 0, len(eps))
	for _, ep := range eps {
		p, ok := byNode[ep.GetId()]
		if !ok {
			p = ca.FleetProxy{Node: ep.GetId()}
		}
		out = append(out, p)
	}
	return out, nil
}

// newRotator is the CA's rotator; its steps are audited in their own
// transactions.
func (c *Control) newRotator() *ca.Rotator {
	return ca.NewRotator(c.ca, ca.RotatorOptions{
		Fleet: fleet{c},
		AuditOp: func(who, action, detail string) (store.Op, error) {
			return AuditEntry{Time: time.Now().UTC(), Who: who, Action: action, Target: "ca", Detail: detail}.op()
		},
		Logger: c.o.Logger,
	})
}

// runRotation starts the rotator's loop and the one that follows the CA's
// keys in the store: on every change (this replica's rotation step or
// another replica's) the CA reloads, the data dir's ca.crt is rewritten and
// every proxy's snapshot recompiled with the new bundle.
func (c *Control) runRotation(ctx context.Context) {
	if c.ca.FromFiles() {
		return
	}
	c.wg.Go(func() { c.followCA(ctx) })
	// Steps run on the leader only (every step is compare-and-set, so a
	// deposed leader finishing one is harmless), from the statuses of the
	// proxies of every replica.
	c.wg.Go(func() {
		c.leader.Run(ctx, "ca-rotation", func(term context.Context) { c.rotator.Run(term, rotationStepEvery) })
	})
}

// followCA watches /ca/ and reloads the CA on each change, re-listing
// after a watch ends (compaction, a slow watcher, an etcd restart).
func (c *Control) followCA(ctx context.Context) {
	for ctx.Err() == nil {
		rev, err := c.st.Revision(ctx)
		if err == nil {
			c.reloadCA(ctx) // catch up with what changed before the watch
			var ch <-chan []store.Event
			if ch, err = c.st.Watch(ctx, "/ca/", rev+1); err == nil {
				for range ch {
					c.reloadCA(ctx)
				}
			}
		}
		if err != nil && ctx.Err() == nil {
			c.log.Warn("following the CA in the store failed; retrying", "err", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (c *Control) reloadCA(ctx context.Context) {
	changed, err := c.ca.Reload(ctx)
	if err != nil {
		if ctx.Err() == nil {
			c.log.Error("reloading the CA from the store failed; issuing under the last good one", "err", err)
		}
		return
	}
	if !changed {
		return
	}
	if err := writeFileAtomic(filepath.Join(c.o.DataDir, CAFile), c.ca.BundlePEM(), 0o644); err != nil {
		c.log.Error("writing the trust bundle to the data dir failed", "file", CAFile, "err", err)
	}
	c.comp.Notify()
}

// caRotator is what the admin API needs of the CA's rotator.
type caRotator interface {
	Start(ctx context.Context, who string) (ca.RotationStatus, error)
	Status(ctx context.Context) (ca.RotationStatus, error)
}

// caRoutes are the admin API's CA rotation: POST starts (admin), GET
// reads (read-only suffices).
func (a *admin) caRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/ca/rotate", a.rotateCA)
	mux.HandleFunc("GET /v1/ca/status", a.caStatus)
}

func (a *admin) rotateCA(w http.ResponseWriter, r *http.Request) {
	st, err := a.rotator.Start(r.Context(), callerOf(r).who)
	switch {
	case errors.Is(err, ca.ErrOperatorCA):
		writeError(w, http.StatusConflict, err.Error())
		return
	case err != nil:
		a.internalError(w, "rotate CA", err)
		return
	}
	if !st.AlreadyRunning {
		a.log.Info("CA rotation started", "by", callerOf(r).who)
	}
	writeJSON(w, http.StatusAccepted, st)
}

func (a *admin) caStatus(w http.ResponseWriter, r *http.Request) {
	st, err := a.rotator.Status(r.Context())
	if err != nil {
		a.internalError(w, "CA status", fmt.Errorf("read rotation: %w", err))
		return
	}
	writeJSON(w, http.StatusOK, st)
}
