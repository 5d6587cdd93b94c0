package control

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// DefaultLeaderTTL is the election session's lease: a dead leader is
// replaced within it.
const DefaultLeaderTTL = 10 * time.Second

// leaderElectionKey is where the replicas campaign, under the mesh's etcd
// prefix: one key per candidate, <prefix>/election/control/<lease>, whose
// value is the replica id; the oldest is the leader.
const leaderElectionKey = "/election/control"

// etcdElection is the election on the store's etcd client.
type etcdElection struct {
	cli *clientv3.Client
	pfx string
	ttl time.Duration
}

// newEtcdLeader joins the election; campaign runs it until ctx ends.
func newEtcdLeader(l *Leader, e etcdElection) func(ctx context.Context) {
	l.members = e.members
	return func(ctx context.Context) { e.campaign(ctx, l) }
}

// campaign stands for election, term after term, until ctx ends: each term
// is one session (lease); losing it (etcd unreachable longer than the TTL,
// or the lease revoked) ends the term and starts a new candidacy.
func (e etcdElection) campaign(ctx context.Context, l *Leader) {
	for ctx.Err() == nil {
		err := e.term(ctx, l)
		l.deposed(fmt.Sprint(err))
		if ctx.Err() != nil {
			return
		}
		l.log.Warn("leader election: session ended; standing again", "err", err)
		// Up to a second, at random, so replicas that lost etcd together
		// do not all come back in one instant.
		if !sleepCtx(ctx, time.Duration(500+rand.N(500))*time.Millisecond) {
			return
		}
	}
}

// term is one candidacy: campaign, lead until the session ends, resign.
func (e etcdElection) term(ctx context.Context, l *Leader) error {
	ttl := max(1, int(e.ttl.Round(time.Second)/time.Second))
	sess, err := concurrency.NewSession(e.cli, concurrency.WithTTL(ttl), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("session: %w", err)
	}
	// Revoking the lease deletes our candidacy: a replica that stops
	// cleanly hands over at once instead of after the TTL. (Session.Close
	// would revoke under ctx, which has ended by then.)
	defer func() {
		sess.Orphan()
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_, _ = e.cli.Revoke(rctx, sess.Lease())
	}()
	el := concurrency.NewElection(sess, e.pfx)

	// The campaign waits for older candidates to go; it must also end if
	// our own session lapses meanwhile.
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(sess.Ctx(), cancel)
	defer stop()
	go e.observe(cctx, el, l)
	if err := el.Campaign(cctx, l.id); err != nil {
		return fmt.Errorf("campaign: %w", err)
	}
	l.elected(sess.Ctx())
	select {
	case <-sess.Done():
		return fmt.Errorf("session lease lost")
	case <-ctx.Done():
		l.deposed("stopping")
		return ctx.Err()
	}
}

// observe follows who leads, for Leader.Current.
func (e etcdElection) observe(ctx context.Context, el *concurrency.Election, l *Leader) {
	for resp := range el.Observe(ctx) {
		if len(resp.Kvs) > 0 {
			l.observed(string(resp.Kvs[0].Value))
		}
	}
}

// members lists the candidates, oldest (the leader) first.
func (e etcdElection) members(ctx context.Context) ([]Replica, error) {
	resp, err := e.cli.Get(ctx, e.pfx+"/", clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
	if err != nil {
		return nil, fmt.Errorf("control: leader election members: %w", err)
	}
	out := make([]Replica, 0, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		out = append(out, Replica{ID: string(kv.Value), Leader: i == 0})
	}
	return out, nil
}

// sleepCtx waits d or until ctx ends; false means ctx ended.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
