package store

import (
	"context"
	"time"
)

// Operations as Observer sees them: the methods of Store, lower case.
const (
	OpNameGet       = "get"
	OpNameList      = "list"
	OpNameTxn       = "txn"
	OpNameGrant     = "grant"
	OpNameKeepAlive = "keepalive"
	OpNameRevoke    = "revoke"
	OpNameRevision  = "revision"
)

// OpNames lists every operation Observed reports, for metrics that
// pre-create their label values.
func OpNames() []string {
	return []string{OpNameGet, OpNameList, OpNameTxn, OpNameGrant, OpNameKeepAlive, OpNameRevoke, OpNameRevision}
}

// Observer records store operation latency; internal/telemetry implements it.
// It must be cheap and safe for concurrent use.
type Observer interface {
	ObserveStoreOp(op string, d time.Duration)
}

// Observed returns s with every operation's latency reported to o, whatever
// backend s is. Watch is a stream, not an operation: it passes through
// untimed, as does Close.
func Observed(s Store, o Observer) Store {
	return &observed{Store: s, o: o}
}

// observed embeds the Store so that what it does not time passes through.
type observed struct {
	Store
	o Observer
}

func (s *observed) since(op string, start time.Time) { s.o.ObserveStoreOp(op, time.Since(start)) }

func (s *observed) Get(ctx context.Context, key string) (KV, error) {
	defer s.since(OpNameGet, time.Now())
	return s.Store.Get(ctx, key)
}

func (s *observed) List(ctx context.Context, prefix string) ([]KV, int64, error) {
	defer s.since(OpNameList, time.Now())
	return s.Store.List(ctx, prefix)
}

func (s *observed) Txn(ctx context.Context, ops ...Op) (int64, error) {
	defer s.since(OpNameTxn, time.Now())
	return s.Store.Txn(ctx, ops...)
}

func (s *observed) Grant(ctx context.Context, ttl time.Duration) (LeaseID, error) {
	defer s.since(OpNameGrant, time.Now())
	return s.Store.Grant(ctx, ttl)
}

func (s *observed) KeepAlive(ctx context.Context, id LeaseID) error {
	defer s.since(OpNameKeepAlive, time.Now())
	return s.Store.KeepAlive(ctx, id)
}

func (s *observed) Revoke(ctx context.Context, id LeaseID) error {
	defer s.since(OpNameRevoke, time.Now())
	return s.Store.Revoke(ctx, id)
}

func (s *observed) Revision(ctx context.Context) (int64, error) {
	defer s.since(OpNameRevision, time.Now())
	return s.Store.Revision(ctx)
}
