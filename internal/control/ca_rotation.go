package control

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"trellis.dev/trellis/internal/ca"
	"trellis.dev/trellis/internal/push"
	"trellis.dev/trellis/internal/registry"
	"trellis.dev/trellis/internal/store"
)

// rotationStepEvery is how often the rotator checks the fleet while a
// rotation runs: proxies report within a message of catching up, so a
// phase ends within about this long of its last proxy.
const rotationStepEvery = 500 * time.Millisecond

// rotationReportPrefix holds, during a rotation, what each proxy last
// reported of its CA state, written by the replica it watches under its
// endpoint's lease (so a report goes when its proxy does), so that a
// replica stepping the rotation sees proxies connected to the others.
// Outside /ca/ so reports do not wake every replica's CA reload.
const rotationReportPrefix = "/carotation/reports/"

// rotationReport is the value under rotationReportPrefix+<node id>.
type rotationReport struct {
	Bundle   []byte `json:"bundle"`
	CertRoot []byte `json:"certRoot"`
}

// fleet is the CA rotation's view of the proxies: every endpoint in the
// registry (the store, so all replicas' proxies), with what the proxy last
// reported: on its Watch stream to this replica, else through the report
// another replica stored for it.
type fleet struct{ c *Control }

func (f fleet) Proxies(ctx context.Context) ([]ca.FleetProxy, error) {
	eps, err := f.c.reg.Endpoints(ctx)
	if err != nil {
		return nil, err
	}
	byNode := map[string]ca.FleetProxy{}
	kvs, _, err := f.c.st.List(ctx, rotationReportPrefix)
	if err != nil {
		return nil, err
	}
	for _, kv := range kvs {
		var r rotationReport
		if json.Unmarshal(kv.Value, &r) == nil {
			node := strings.TrimPrefix(kv.Key, rotationReportPrefix)
			byNode[node] = ca.FleetProxy{Node: node, Connected: true, BundleFingerprint: r.Bundle, CertRootFingerprint: r.CertRoot}
		}
	}
	for _, st := range f.c.push.Statuses() {
		byNode[st.NodeID] = localReport(st)
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

// localReport is what a proxy watching this replica last reported.
func localReport(st push.ProxyStatus) ca.FleetProxy {
	p := ca.FleetProxy{Node: st.NodeID, Connected: true}
	// Statuses hold what the proxy sent, hex-encoded; a value that does
	// not decode compares unequal, as it should.
	p.BundleFingerprint, _ = hex.DecodeString(st.TrustBundle)
	p.CertRootFingerprint, _ = hex.DecodeString(st.CertIssuer)
	return p
}

// reportPublisher stores the reports of the proxies watching this replica
// while a rotation runs, each when it changes.
type reportPublisher struct {
	c    *Control
	sent map[string]rotationReport // node → last stored; one goroutine
}

func (r *reportPublisher) publish(ctx context.Context) error {
	if r.c.ca.Phase() == ca.PhaseIdle {
		clear(r.sent)
		return nil
	}
	var due []push.ProxyStatus
	for _, st := range r.c.push.Statuses() {
		p := localReport(st)
		if last, ok := r.sent[st.NodeID]; !ok || string(last.Bundle) != string(p.BundleFingerprint) || string(last.CertRoot) != string(p.CertRootFingerprint) {
			due = append(due, st)
		}
	}
	if len(due) == 0 {
		return nil
	}
	leases, err := r.endpointLeases(ctx)
	if err != nil {
		return err
	}
	for _, st := range due {
		lease, ok := leases[st.NodeID]
		if !ok {
			continue // not registered (yet): nothing to hold up
		}
		p := localReport(st)
		rep := rotationReport{Bundle: p.BundleFingerprint, CertRoot: p.CertRootFingerprint}
		v, err := json.Marshal(rep)
		if err != nil {
			return err
		}
		if _, err := r.c.st.Txn(ctx, store.Op{Type: store.OpPut, Key: rotationReportPrefix + st.NodeID, Value: v, ExpectRevision: store.Any, Lease: lease}); err != nil {
			return fmt.Errorf("control: store rotation report of %s: %w", st.NodeID, err)
		}
		r.sent[st.NodeID] = rep
	}
	return nil
}

// endpointLeases maps node ids to their endpoint's lease.
func (r *reportPublisher) endpointLeases(ctx context.Context) (map[string]store.LeaseID, error) {
	kvs, _, err := r.c.st.List(ctx, registry.EndpointPrefix)
	if err != nil {
		return nil, err
	}
	out := make(map[string]store.LeaseID, len(kvs))
	for _, kv := range kvs {
		if _, _, id, err := registry.ParseKey(kv.Key); err == nil && kv.Lease != 0 {
			out[id] = kv.Lease
		}
	}
	return out, nil
}

// publishReports runs the publisher every interval until ctx ends.
func (c *Control) publishReports(ctx context.Context, every time.Duration) {
	r := &reportPublisher{c: c, sent: map[string]rotationReport{}}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := r.publish(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn("publishing proxies' CA reports for the rotation failed; retrying", "err", err)
		}
	}
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
	c.wg.Go(func() { c.publishReports(ctx, rotationStepEvery) })
	// Steps run on the elected leader only (every step is compare-and-set,
	// so a deposed leader finishing one is harmless).
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
