package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"trellis.dev/trellis/internal/push"
)

// Proxy status records: one per connected proxy, written by the replica its
// Watch stream is attached to — /proxies/<node>, the ProxyStatus as JSON,
// under the proxy's own registry lease, so a dead proxy's record leaves
// with its endpoint — so any replica lists the mesh's proxies
// (proxy-status, check, apply --wait).
//
// They live beside the mesh's keys, at <etcd-prefix>~status/proxies/<node>,
// not under <etcd-prefix>/: the mesh view follows every key under the
// prefix, and a status write seen there would move every proxy's revision,
// changing every record, rewritten at the next flush, for ever.
const (
	statusNamespace = "~status"
	statusKeyPrefix = "/proxies/"
)

// DefaultStatusFlush is how often a replica writes the statuses that
// changed: each proxy's record at most once per interval, all of them in
// batched transactions.
const DefaultStatusFlush = time.Second

// statusTxnOps bounds one status transaction (etcd refuses more than
// --max-txn-ops, 128 by default).
const statusTxnOps = 100

// statusRecord is one record to write.
type statusRecord struct {
	node  string
	value []byte
	lease int64
}

// statusStore is where the records live.
type statusStore interface {
	// put writes the records in one transaction; an error wrapping
	// errStatusLease if one's lease is gone.
	put(ctx context.Context, recs []statusRecord) error
	list(ctx context.Context) ([][]byte, error)
}

var errStatusLease = errors.New("lease not found")

// etcdStatusStore keeps the records in etcd, namespaced beside the mesh.
type etcdStatusStore struct{ kv clientv3.KV }

func newEtcdStatusStore(cli *clientv3.Client, meshPrefix string) etcdStatusStore {
	return etcdStatusStore{kv: namespacedKV(cli, meshPrefix+statusNamespace)}
}

func (e etcdStatusStore) put(ctx context.Context, recs []statusRecord) error {
	ops := make([]clientv3.Op, len(recs))
	for i, r := range recs {
		ops[i] = clientv3.OpPut(statusKeyPrefix+r.node, string(r.value), clientv3.WithLease(clientv3.LeaseID(r.lease)))
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := e.kv.Txn(ctx).Then(ops...).Commit()
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("control: proxy statuses: %w", errStatusLease)
	}
	if err != nil {
		return fmt.Errorf("control: proxy statuses: %w", err)
	}
	return nil
}

func (e etcdStatusStore) list(ctx context.Context) ([][]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := e.kv.Get(ctx, statusKeyPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("control: proxy statuses: %w", err)
	}
	out := make([][]byte, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		out[i] = kv.Value
	}
	return out, nil
}

// statusShare publishes this replica's proxy statuses to the store and
// reads everyone's back.
type statusShare struct {
	st     statusStore
	local  func() []push.ProxyStatus
	leases func(node string) int64
	log    *slog.Logger
	// last is what was last written per node (flush goroutine only).
	last map[string]push.ProxyStatus
	// txns and puts count writes, for the write-rate measurement.
	txns, puts atomic.Uint64
}

func newStatusShare(st statusStore, local func() []push.ProxyStatus, leases func(string) int64, log *slog.Logger) *statusShare {
	return &statusShare{st: st, local: local, leases: leases, log: log.With("component", "status-share"), last: map[string]push.ProxyStatus{}}
}

// run flushes every interval until ctx ends.
func (s *statusShare) run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.flush(ctx)
		}
	}
}

// flush writes the records whose status changed since the last write.
func (s *statusShare) flush(ctx context.Context) {
	list := s.local()
	seen := make(map[string]bool, len(list))
	var recs []statusRecord
	var wrote []push.ProxyStatus
	for _, p := range list {
		seen[p.NodeID] = true
		if prev, ok := s.last[p.NodeID]; ok && prev == p {
			continue
		}
		lease := s.leases(p.NodeID)
		if lease == 0 {
			continue
		}
		b, err := json.Marshal(p)
		if err != nil {
			s.log.Warn("encoding proxy status", "node", p.NodeID, "err", err)
			continue
		}
		recs = append(recs, statusRecord{node: p.NodeID, value: b, lease: lease})
		wrote = append(wrote, p)
	}
	// A stream that closed is forgotten, not deleted: the proxy may be
	// attaching to another replica, which writes its record next.
	for id := range s.last {
		if !seen[id] {
			delete(s.last, id)
		}
	}
	for start := 0; start < len(recs); start += statusTxnOps {
		end := min(start+statusTxnOps, len(recs))
		s.write(ctx, recs[start:end], wrote[start:end])
	}
}

// write puts one batch; a lease that expired meanwhile (the proxy died)
// fails the whole transaction, so the batch is then written key by key.
func (s *statusShare) write(ctx context.Context, recs []statusRecord, sts []push.ProxyStatus) {
	s.txns.Add(1)
	err := s.st.put(ctx, recs)
	if err == nil {
		s.puts.Add(uint64(len(recs)))
		for _, p := range sts {
			s.last[p.NodeID] = p
		}
		return
	}
	lapsed := errors.Is(err, errStatusLease)
	if !lapsed || len(recs) == 1 {
		if !lapsed && ctx.Err() == nil {
			s.log.Warn("writing proxy statuses; retrying next flush", "proxies", len(recs), "err", err)
		}
		return
	}
	for i := range recs {
		s.write(ctx, recs[i:i+1], sts[i:i+1])
	}
}

// mesh lists every proxy's status: the records of every replica, with this
// replica's own streams as they are now (fresher than their records).
func (s *statusShare) mesh(ctx context.Context) ([]push.ProxyStatus, error) {
	vals, err := s.st.list(ctx)
	if err != nil {
		return nil, err
	}
	byID := make(map[string]push.ProxyStatus, len(vals))
	for _, v := range vals {
		var p push.ProxyStatus
		if err := json.Unmarshal(v, &p); err != nil || p.NodeID == "" {
			s.log.Warn("skipping an unreadable proxy status record", "err", err)
			continue
		}
		byID[p.NodeID] = p
	}
	for _, p := range s.local() {
		byID[p.NodeID] = p
	}
	out := make([]push.ProxyStatus, 0, len(byID))
	for _, p := range byID {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b push.ProxyStatus) int { return strings.Compare(a.NodeID, b.NodeID) })
	return out, nil
}

// await polls the mesh's statuses until rev is settled (push.Settled) or ctx
// ends: with several replicas, proxies attached elsewhere are only seen
// through their records, so waiting is by polling, each poll one List.
func (s *statusShare) await(ctx context.Context, rev int64) []push.ProxyStatus {
	for {
		list, err := s.mesh(ctx)
		if err != nil {
			list = s.local()
		}
		if push.Settled(list, rev) || !sleepCtx(ctx, statusAwaitPoll) {
			return list
		}
	}
}

// statusAwaitPoll paces await; records change at most once per flush.
const statusAwaitPoll = 100 * time.Millisecond
