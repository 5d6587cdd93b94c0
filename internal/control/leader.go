package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
)

// ErrNotLeader: Leader.Do was called on a replica that is not the leader;
// the leader does the work, so the caller skips it.
var ErrNotLeader = errors.New("control: not the leader")

// Leader is this replica's standing among the control-plane replicas that
// share one store. Work that must happen once in the mesh, not once per
// replica (etcd history compaction; the CA rotation steps), runs on the
// leader only, through Do or Run. On etcd the replicas elect one with
// go.etcd.io/etcd/client/v3/concurrency.Election under a session lease of
// --leader-ttl: when the leader dies, its lease lapses and another replica
// takes over within that TTL; when it stops cleanly it resigns at once.
// With bbolt there is one replica and it is always the leader.
//
// Leadership is as strong as etcd's lease: a leader cut off from etcd
// learns it lost within about a third of the TTL (its keep-alive fails),
// while another may be elected after the full TTL, so two leaders are
// possible only for work that outlives a lost lease unnoticed. Work run
// under the leader must therefore be idempotent or fenced by the store
// (compare-and-set), as CA rotation and compaction are.
type Leader struct {
	id  string
	log *slog.Logger

	mu sync.Mutex
	// term is non-nil while this replica leads; it is cancelled when
	// leadership ends.
	term       context.Context
	endTerm    context.CancelFunc
	current    string        // the leader's id as last observed; "" unknown
	termChange chan struct{} // closed (and replaced) when term changes

	// members lists the replicas taking part in the election (nil: only
	// this one, with bbolt).
	members func(ctx context.Context) ([]Replica, error)
}

// Replica is one control-plane replica taking part in the election.
type Replica struct {
	ID     string `json:"id"`
	Leader bool   `json:"leader"`
}

func newLeader(id string, log *slog.Logger) *Leader {
	return &Leader{id: id, log: log.With("component", "leader", "replica", id), termChange: make(chan struct{})}
}

// newSoleLeader is the leader of a store only one replica can open (bbolt).
func newSoleLeader(id string, log *slog.Logger) *Leader {
	l := newLeader(id, log)
	l.elected(context.Background())
	return l
}

// ID is this replica's id.
func (l *Leader) ID() string { return l.id }

// IsLeader reports whether this replica leads now.
func (l *Leader) IsLeader() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.term != nil
}

// Current is the id of the leader as this replica last observed it ("" while
// unknown, for instance while etcd is unreachable).
func (l *Leader) Current() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.current
}

// Replicas lists the replicas taking part in the election, the leader
// marked; with bbolt, this one alone.
func (l *Leader) Replicas(ctx context.Context) ([]Replica, error) {
	if l.members == nil {
		return []Replica{{ID: l.id, Leader: l.IsLeader()}}, nil
	}
	return l.members(ctx)
}

// Do runs fn now if this replica leads, with a context that ends when ctx
// does or when leadership is lost (fn should then stop); otherwise it
// returns ErrNotLeader without calling fn. name labels the work in logs.
func (l *Leader) Do(ctx context.Context, name string, fn func(context.Context) error) error {
	term := l.currentTerm()
	if term == nil {
		return ErrNotLeader
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(term, cancel)
	defer stop()
	if err := fn(ctx); err != nil {
		return fmt.Errorf("control: leader %s: %w", name, err)
	}
	return nil
}

// Run calls fn each time this replica becomes leader, with a context
// cancelled when it stops leading, and waits for fn to return before
// waiting for the next term; it returns when ctx ends. A long-running job
// (a ticker loop) is a Run; a one-shot step triggered elsewhere is a Do.
func (l *Leader) Run(ctx context.Context, name string, fn func(context.Context)) {
	for {
		term, changed := l.watchTerm()
		if term == nil {
			select {
			case <-ctx.Done():
				return
			case <-changed:
				continue
			}
		}
		l.log.Debug("leader work starts", "work", name)
		tctx, cancel := context.WithCancel(ctx)
		stop := context.AfterFunc(term, cancel)
		fn(tctx)
		stop()
		cancel()
		if ctx.Err() != nil {
			return
		}
		// fn returned while still leader: wait for this term to end
		// rather than run it again at once.
		select {
		case <-ctx.Done():
			return
		case <-term.Done():
		}
	}
}

func (l *Leader) currentTerm() context.Context {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.term
}

func (l *Leader) watchTerm() (context.Context, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.term, l.termChange
}

// elected starts a term; parent bounds it (the election session).
func (l *Leader) elected(parent context.Context) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.term != nil {
		return
	}
	l.term, l.endTerm = context.WithCancel(parent)
	l.current = l.id
	close(l.termChange)
	l.termChange = make(chan struct{})
	l.log.Info("this replica is the leader")
}

// deposed ends the term, if any.
func (l *Leader) deposed(why string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.term == nil {
		return
	}
	l.endTerm()
	l.term, l.endTerm = nil, nil
	if l.current == l.id {
		l.current = ""
	}
	close(l.termChange)
	l.termChange = make(chan struct{})
	l.log.Info("this replica is no longer the leader", "reason", why)
}

// observed records the leader's id as the election reports it.
func (l *Leader) observed(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if id != l.current {
		l.log.Debug("leader observed", "leader", id)
	}
	l.current = id
}
