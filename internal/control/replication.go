package control

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/namespace"

	"trellis.dev/trellis/internal/push"
	"trellis.dev/trellis/internal/store"
	"trellis.dev/trellis/internal/telemetry"
)

// DefaultCompactionInterval is how often the leader compacts etcd.
const DefaultCompactionInterval = 5 * time.Minute

// electionStore is what the election needs of a store shared by several
// replicas (store.Etcd): its client and its key prefix.
type electionStore interface {
	Client() *clientv3.Client
	KeyPrefix() string
}

// compactingStore is a store whose history the leader compacts.
type compactingStore interface {
	Revision(ctx context.Context) (int64, error)
	Compact(ctx context.Context, rev int64) error
}

// startReplication sets up what several replicas on one store need: the
// leader election (or the sole leader, on bbolt), the leader's work, and
// the shared proxy statuses.
func (c *Control) startReplication(ctx context.Context) error {
	es, shared := c.raw.(electionStore)
	if !shared {
		c.leader = newSoleLeader(c.replica, c.log)
	} else {
		c.leader = newLeader(c.replica, c.log)
		ttl := c.o.LeaderTTL
		if ttl <= 0 {
			ttl = DefaultLeaderTTL
		}
		campaign := newEtcdLeader(c.leader, etcdElection{cli: es.Client(), pfx: es.KeyPrefix() + leaderElectionKey, ttl: ttl})
		c.wg.Go(func() { campaign(ctx) })
		c.status = newStatusShare(newEtcdStatusStore(es.Client(), es.KeyPrefix()), c.push.Statuses, c.push.NodeLease, c.log)
		c.wg.Go(func() { c.status.run(ctx, cmpOr(c.o.StatusFlush, DefaultStatusFlush)) })
	}
	if err := telemetry.NewLeaderMetrics(c.promReg, c.leader.IsLeader); err != nil {
		return fmt.Errorf("control: metrics: %w", err)
	}
	if cs, ok := c.raw.(compactingStore); ok && c.o.CompactionInterval >= 0 {
		every := cmpOr(c.o.CompactionInterval, DefaultCompactionInterval)
		c.wg.Go(func() { c.leader.Run(ctx, "compaction", func(term context.Context) { c.compactLoop(term, cs, every) }) })
	}
	return nil
}

// cmpOr is d, or def when d is not positive.
func cmpOr(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// Leader is this replica's standing in the election of the replicas that
// share its store; once-only work runs through Leader.Do or Leader.Run.
func (c *Control) Leader() *Leader { return c.leader }

// compactLoop, on the leader, drops etcd's history older than one
// interval: every tick it compacts to the revision the previous tick read,
// so a watcher up to one interval behind can still resume. A revision
// another compaction (etcd's own) already passed is no error.
func (c *Control) compactLoop(ctx context.Context, st compactingStore, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	var prev int64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rev, err := st.Revision(ctx)
		if err != nil {
			c.log.Warn("compaction: reading the revision", "err", err)
			continue
		}
		if prev > 0 {
			err := st.Compact(ctx, prev)
			switch {
			case err == nil:
				c.log.Info("compacted the store's history", "revision", prev)
			case errors.Is(err, store.ErrCompacted), ctx.Err() != nil:
			default:
				c.log.Warn("compaction failed", "revision", prev, "err", err)
			}
		}
		prev = rev
	}
}

// proxyStatuses lists the mesh's proxies for the admin API: this
// replica's streams, plus, on a shared store, every other replica's
// records (this replica's alone if the store cannot be read).
func (c *Control) proxyStatuses() []push.ProxyStatus {
	if c.status == nil {
		return c.push.Statuses()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	list, err := c.status.mesh(ctx)
	if err != nil {
		c.log.Warn("listing other replicas' proxies; showing this replica's", "err", err)
		return c.push.Statuses()
	}
	return list
}

// awaitRevision is apply --wait's wait: on one replica, the push server's
// own (woken by each ACK); on a shared store, a poll of every replica's
// records.
func (c *Control) awaitRevision(ctx context.Context, rev int64) []push.ProxyStatus {
	if c.status == nil {
		return c.push.AwaitRevision(ctx, rev)
	}
	return c.status.await(ctx, rev)
}

// replicasAnswer is GET /v1/replicas: every replica in the election, the
// leader marked, and which one answered.
type replicasAnswer struct {
	Self     string    `json:"self"`
	Replicas []Replica `json:"replicas"`
}

func (a *admin) listReplicas(w http.ResponseWriter, r *http.Request) {
	list, err := a.replicas(r.Context())
	if err != nil {
		a.internalError(w, "replicas", err)
		return
	}
	writeJSON(w, http.StatusOK, replicasAnswer{Self: a.self, Replicas: list})
}

// namespacedKV is cli's KV with every key under prefix.
func namespacedKV(cli *clientv3.Client, prefix string) clientv3.KV {
	return namespace.NewKV(cli.KV, prefix)
}
