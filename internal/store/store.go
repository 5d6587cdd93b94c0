// Package store defines the control plane's key-value store: get, list,
// compare-and-set writes, atomic multi-key transactions, watches from a
// revision, and leases. The embedded backend is bbolt (NewBolt); NewEtcd
// puts the same interface on an etcd cluster, which several control-plane
// replicas can share. Both pass the conformance suite in storetest. Nothing
// outside this package knows which backend it runs on.
package store

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Sentinel errors callers branch on.
var (
	// ErrNotFound: the key (or lease) does not exist.
	ErrNotFound = errors.New("store: not found")
	// ErrConflict: a compare-and-set precondition failed; read again and retry.
	ErrConflict = errors.New("store: revision conflict")
	// ErrCompacted: a watch asked for a revision older than the store keeps.
	ErrCompacted = errors.New("store: revision compacted")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("store: closed")
)

// LeaseID names a lease. Zero means no lease.
type LeaseID int64

// KV is one stored key.
type KV struct {
	Key   string
	Value []byte
	// CreateRevision is the revision that created the key.
	CreateRevision int64
	// ModRevision is the revision of the key's last write.
	ModRevision int64
	Lease       LeaseID
}

// Expect values for Op.ExpectRevision.
const (
	// Any: no precondition.
	Any int64 = -1
	// Absent: the key must not exist.
	Absent int64 = 0
)

// OpType is an op's kind.
type OpType int

const (
	OpPut OpType = iota + 1
	OpDelete
	// OpCheck writes nothing: it only requires the key's ModRevision to be
	// ExpectRevision (or the key to be Absent). It fences a transaction on
	// a key it read but does not write. On etcd it is a Compare with no
	// request in the Then branch.
	OpCheck
)

// Op is one op in a transaction: a write, or a compare-only check.
type Op struct {
	Type  OpType
	Key   string
	Value []byte
	// ExpectRevision is the key's required ModRevision before the write:
	// Any, Absent, or a revision. A failed precondition fails the whole Txn
	// with ErrConflict.
	ExpectRevision int64
	// Lease attaches the key to a lease (puts only); the key is deleted when
	// the lease expires or is revoked.
	Lease LeaseID
}

// Put is a convenience for an OpPut.
func Put(key string, value []byte, expect int64) Op {
	return Op{Type: OpPut, Key: key, Value: value, ExpectRevision: expect}
}

// Delete is a convenience for an OpDelete.
func Delete(key string, expect int64) Op {
	return Op{Type: OpDelete, Key: key, ExpectRevision: expect}
}

// Check is a convenience for an OpCheck. expect must be Absent or a
// revision (a check against Any would compare nothing).
func Check(key string, expect int64) Op {
	return Op{Type: OpCheck, Key: key, ExpectRevision: expect}
}

// EventType is what happened to a key.
type EventType int

const (
	EventPut EventType = iota + 1
	EventDelete
)

// Event is one change seen by a watch. For deletes, KV.Value is empty and
// KV.ModRevision is the revision of the delete.
type Event struct {
	Type EventType
	KV   KV
}

// Store is the control plane's storage. All methods are safe for concurrent use.
type Store interface {
	// Get returns the key, or ErrNotFound.
	Get(ctx context.Context, key string) (KV, error)
	// List returns every key under prefix in key order, and the store's
	// revision at the time of the read (to start a Watch from revision+1).
	List(ctx context.Context, prefix string) ([]KV, int64, error)
	// Txn applies every op atomically under one new revision, or none
	// (ErrConflict if a precondition fails, ErrNotFound for an unknown lease).
	// Deleting an absent key with ExpectRevision Any is not an error. A key
	// may appear once per Txn, checks included. A Txn of OpChecks only
	// writes nothing and returns the current revision.
	Txn(ctx context.Context, ops ...Op) (int64, error)
	// Watch streams the changes to keys under prefix with revision >=
	// fromRev (fromRev 0: only new changes). Each receive is one revision:
	// every event of that revision under prefix, in the order of the Txn's
	// ops, never part of a transaction. Revisions with no event under
	// prefix are skipped. The channel closes when ctx ends or the store
	// closes; a watcher too slow to keep up is closed too and must re-List.
	// ErrCompacted if fromRev is older than the kept history.
	Watch(ctx context.Context, prefix string, fromRev int64) (<-chan []Event, error)
	// Grant creates a lease that expires after ttl without KeepAlive.
	Grant(ctx context.Context, ttl time.Duration) (LeaseID, error)
	// KeepAlive restarts a lease's TTL; ErrNotFound if it expired.
	KeepAlive(ctx context.Context, id LeaseID) error
	// Revoke ends a lease now, deleting its keys.
	Revoke(ctx context.Context, id LeaseID) error
	// Revision is the store's current revision.
	Revision(ctx context.Context) (int64, error)
	Close() error
}

// expectErr checks op's precondition against the key's state (whether it
// exists and, if so, its ModRevision): nil if it holds, else an ErrConflict
// naming the key, the same words on every backend.
func expectErr(op Op, exists bool, mod int64) error {
	switch {
	case op.ExpectRevision == Any:
		return nil
	case op.ExpectRevision == Absent && !exists:
		return nil
	case op.ExpectRevision == Absent:
		return fmt.Errorf("store: txn: %q exists at revision %d, expected absent: %w", op.Key, mod, ErrConflict)
	case !exists:
		return fmt.Errorf("store: txn: %q is absent, expected revision %d: %w", op.Key, op.ExpectRevision, ErrConflict)
	case mod != op.ExpectRevision:
		return fmt.Errorf("store: txn: %q is at revision %d, expected %d: %w", op.Key, mod, op.ExpectRevision, ErrConflict)
	}
	return nil
}
