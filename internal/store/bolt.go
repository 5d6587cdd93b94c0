package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// BoltOptions tunes NewBolt. The zero value is usable.
type BoltOptions struct {
	// Logger receives lease expiries (debug) and closed slow watchers (warn).
	// Nil discards.
	Logger *slog.Logger
	// History is how many events are kept for Watch replay. Default 10000.
	History int
	// LeaseCheckInterval is how often expired leases are collected.
	// Default 250ms.
	LeaseCheckInterval time.Duration
	// WatchBuffer is each watcher's queue of undelivered live revisions
	// (batches); a watcher whose queue fills is closed. Default 1024.
	WatchBuffer int
}

const (
	defaultHistory            = 10000
	defaultLeaseCheckInterval = 250 * time.Millisecond
	defaultWatchBuffer        = 1024
)

// Bucket layout. Keys of bucketEvents are rev(8)|index(4), big-endian, so a
// cursor walks events in commit order; bucketLeaseKeys holds lease(8)|key so
// a lease's keys are one prefix scan.
var (
	bucketKV        = []byte("kv")
	bucketMeta      = []byte("meta")
	bucketEvents    = []byte("events")
	bucketLeases    = []byte("leases")
	bucketLeaseKeys = []byte("leasekeys")

	metaRev       = []byte("rev")
	metaMinRev    = []byte("minrev")
	metaNextLease = []byte("nextlease")
)

// Bolt is the embedded Store: one bbolt file holding keys, the revision
// counter, an event log for Watch replay, and leases.
type Bolt struct {
	db   *bolt.DB
	log  *slog.Logger
	opts BoltOptions

	// txMu serialises writes together with publishing their events and with
	// registering watchers, so a watcher sees every revision exactly once.
	txMu sync.Mutex
	// Writers waiting for the next group commit (bolt_batch.go).
	qmu        sync.Mutex
	queue      []*writeReq
	committing bool
	commits    atomic.Uint64

	rev     atomic.Int64 // last committed revision
	minRev  int64        // oldest revision Watch can replay from; under txMu
	nEvents int          // events in bucketEvents; under txMu
	next    LeaseID      // next lease ID to grant; under txMu

	mu       sync.Mutex // guards watchers
	watchers map[*watcher]struct{}

	leaseMu sync.Mutex
	leases  map[LeaseID]*lease

	closed atomic.Bool
	stop   chan struct{}
	done   chan struct{}
}

type lease struct {
	ttl      time.Duration
	deadline time.Time
}

type watcher struct {
	prefix  string
	fromRev int64
	ch      chan []Event
	stop    func() bool // detaches the context.AfterFunc
}

var _ Store = (*Bolt)(nil)

// NewBolt opens (or creates, mode 0600) the bbolt file at path. Leases found
// in the file get a fresh full TTL, as etcd grants after a leader change.
func NewBolt(path string, opts BoltOptions) (*Bolt, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.History <= 0 {
		opts.History = defaultHistory
	}
	if opts.LeaseCheckInterval <= 0 {
		opts.LeaseCheckInterval = defaultLeaseCheckInterval
	}
	if opts.WatchBuffer <= 0 {
		opts.WatchBuffer = defaultWatchBuffer
	}
	// A timeout turns "another trellis holds this file" into an error
	// instead of a hang.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	s := &Bolt{
		db:       db,
		log:      opts.Logger.With("component", "store"),
		opts:     opts,
		watchers: make(map[*watcher]struct{}),
		leases:   make(map[LeaseID]*lease),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
		minRev:   1,
		next:     1,
	}
	if err := s.load(); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	go s.expireLoop()
	return s, nil
}

func (s *Bolt) load() error {
	now := time.Now()
	return s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketKV, bucketMeta, bucketEvents, bucketLeases, bucketLeaseKeys} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		s.rev.Store(getInt(meta, metaRev, 0))
		s.minRev = getInt(meta, metaMinRev, 1)
		s.next = LeaseID(getInt(meta, metaNextLease, 1))
		s.nEvents = tx.Bucket(bucketEvents).Stats().KeyN
		return tx.Bucket(bucketLeases).ForEach(func(k, v []byte) error {
			ttl := time.Duration(binary.BigEndian.Uint64(v))
			s.leases[LeaseID(binary.BigEndian.Uint64(k))] = &lease{ttl: ttl, deadline: now.Add(ttl)}
			return nil
		})
	})
}

// Get returns the key, or ErrNotFound.
func (s *Bolt) Get(ctx context.Context, key string) (KV, error) {
	var kv KV
	err := s.view(ctx, func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketKV).Get([]byte(key))
		if v == nil {
			return fmt.Errorf("store: get %q: %w", key, ErrNotFound)
		}
		kv = decodeKV(key, v)
		return nil
	})
	return kv, err
}

// List returns every key under prefix in key order and the revision of the
// snapshot it read.
func (s *Bolt) List(ctx context.Context, prefix string) ([]KV, int64, error) {
	var (
		kvs []KV
		rev int64
	)
	err := s.view(ctx, func(tx *bolt.Tx) error {
		rev = getInt(tx.Bucket(bucketMeta), metaRev, 0)
		p := []byte(prefix)
		c := tx.Bucket(bucketKV).Cursor()
		for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
			kvs = append(kvs, decodeKV(string(k), v))
		}
		return nil
	})
	return kvs, rev, err
}

// Revision is the last committed revision.
func (s *Bolt) Revision(ctx context.Context) (int64, error) {
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	return s.rev.Load(), nil
}

// Txn applies ops atomically under one new revision. Every precondition is
// checked before anything is written. A Txn with no ops returns the current
// revision and writes nothing. A key may appear only once per Txn.
func (s *Bolt) Txn(ctx context.Context, ops ...Op) (int64, error) {
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	if len(ops) == 0 {
		return s.rev.Load(), nil
	}
	writes, err := checkOps(ops)
	if err != nil {
		return 0, err
	}
	// A Txn of checks only consumes no revision, as on etcd.
	return s.write(writes, func(tx *bolt.Tx, rev int64) ([]Event, error) {
		kvb, leases := tx.Bucket(bucketKV), tx.Bucket(bucketLeases)
		for _, op := range ops {
			cur := kvb.Get([]byte(op.Key))
			if err := precondition(op, cur); err != nil {
				return nil, err
			}
			if op.Type == OpPut && op.Lease != 0 && leases.Get(u64(int64(op.Lease))) == nil {
				return nil, fmt.Errorf("store: txn: put %q: lease %d: %w", op.Key, op.Lease, ErrNotFound)
			}
		}
		evs := make([]Event, 0, len(ops))
		for _, op := range ops {
			k := []byte(op.Key)
			cur := kvb.Get(k)
			if op.Type == OpCheck {
				continue
			}
			if op.Type == OpDelete {
				if cur == nil {
					continue
				}
				ev, err := deleteKey(tx, op.Key, cur, rev)
				if err != nil {
					return nil, err
				}
				evs = append(evs, ev)
				continue
			}
			kv := KV{Key: op.Key, Value: bytes.Clone(op.Value), CreateRevision: rev, ModRevision: rev, Lease: op.Lease}
			if cur != nil {
				old := decodeKV(op.Key, cur)
				kv.CreateRevision = old.CreateRevision
				if old.Lease != 0 && old.Lease != op.Lease {
					if err := tx.Bucket(bucketLeaseKeys).Delete(leaseKey(old.Lease, op.Key)); err != nil {
						return nil, err
					}
				}
			}
			if op.Lease != 0 {
				if err := tx.Bucket(bucketLeaseKeys).Put(leaseKey(op.Lease, op.Key), nil); err != nil {
					return nil, err
				}
			}
			if err := kvb.Put(k, encodeKV(kv)); err != nil {
				return nil, err
			}
			evs = append(evs, Event{Type: EventPut, KV: kv})
		}
		return evs, nil
	})
}

// checkOps refuses malformed ops and reports whether any op writes.
func checkOps(ops []Op) (writes bool, err error) {
	seen := make(map[string]struct{}, len(ops))
	for i, op := range ops {
		switch {
		case op.Type != OpPut && op.Type != OpDelete && op.Type != OpCheck:
			return false, fmt.Errorf("store: txn: ops[%d]: unknown op type %d", i, op.Type)
		case op.Key == "":
			return false, fmt.Errorf("store: txn: ops[%d]: empty key", i)
		case op.ExpectRevision < Any:
			return false, fmt.Errorf("store: txn: ops[%d]: expect revision %d: must be Any, Absent or a revision", i, op.ExpectRevision)
		case op.Type == OpCheck && op.ExpectRevision == Any:
			return false, fmt.Errorf("store: txn: ops[%d]: check of %q against Any compares nothing: use Absent or a revision", i, op.Key)
		}
		if _, dup := seen[op.Key]; dup {
			return false, fmt.Errorf("store: txn: ops[%d]: key %q given twice", i, op.Key)
		}
		seen[op.Key] = struct{}{}
		writes = writes || op.Type != OpCheck
	}
	return writes, nil
}

func precondition(op Op, cur []byte) error {
	if cur == nil {
		return expectErr(op, false, 0)
	}
	return expectErr(op, true, decodeKV(op.Key, cur).ModRevision)
}

// deleteKey removes key (whose stored record is cur) and its lease index entry.
func deleteKey(tx *bolt.Tx, key string, cur []byte, rev int64) (Event, error) {
	if l := decodeKV(key, cur).Lease; l != 0 {
		if err := tx.Bucket(bucketLeaseKeys).Delete(leaseKey(l, key)); err != nil {
			return Event{}, err
		}
	}
	if err := tx.Bucket(bucketKV).Delete([]byte(key)); err != nil {
		return Event{}, err
	}
	return Event{Type: EventDelete, KV: KV{Key: key, ModRevision: rev}}, nil
}

// publish hands one revision's events to every matching watcher, as one
// batch, without blocking: a watcher whose buffer is full is closed and must
// re-List.
func (s *Bolt) publish(evs []Event) {
	if len(evs) == 0 {
		return
	}
	rev := evs[0].KV.ModRevision
	s.mu.Lock()
	defer s.mu.Unlock()
	for w := range s.watchers {
		if rev < w.fromRev {
			continue
		}
		batch := filterPrefix(evs, w.prefix)
		if len(batch) == 0 {
			continue
		}
		select {
		case w.ch <- batch:
		default:
			s.log.Warn("closing slow watcher", "prefix", w.prefix, "revision", rev, "buffer", cap(w.ch))
			s.dropLocked(w)
		}
	}
}

// filterPrefix returns the events under prefix, in a slice of their own
// (each watcher owns what it receives).
func filterPrefix(evs []Event, prefix string) []Event {
	var out []Event
	for _, ev := range evs {
		if hasPrefix(ev.KV.Key, prefix) {
			out = append(out, ev)
		}
	}
	return out
}

func (s *Bolt) dropLocked(w *watcher) {
	if _, ok := s.watchers[w]; !ok {
		return
	}
	delete(s.watchers, w)
	w.stop()
	close(w.ch)
}

// Watch replays logged revisions under prefix from fromRev, then streams
// live ones, one batch per revision. Replay and registration happen under
// txMu, so no commit falls between them. The channel holds the whole replay
// plus WatchBuffer live revisions.
func (s *Bolt) Watch(ctx context.Context, prefix string, fromRev int64) (<-chan []Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if fromRev < 0 {
		return nil, fmt.Errorf("store: watch %q: negative revision %d", prefix, fromRev)
	}
	s.txMu.Lock()
	defer s.txMu.Unlock()
	if s.closed.Load() {
		return nil, ErrClosed
	}
	if fromRev == 0 {
		fromRev = s.rev.Load() + 1
	}
	if fromRev < s.minRev {
		return nil, fmt.Errorf("store: watch %q from revision %d: oldest kept is %d: %w", prefix, fromRev, s.minRev, ErrCompacted)
	}
	var replay [][]Event
	if fromRev <= s.rev.Load() {
		var err error
		if replay, err = s.replay(prefix, fromRev); err != nil {
			return nil, fmt.Errorf("store: watch %q: %w", prefix, err)
		}
	}
	w := &watcher{prefix: prefix, fromRev: fromRev, ch: make(chan []Event, len(replay)+s.opts.WatchBuffer)}
	for _, batch := range replay {
		w.ch <- batch
	}
	s.mu.Lock()
	s.watchers[w] = struct{}{}
	w.stop = context.AfterFunc(ctx, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.dropLocked(w)
	})
	s.mu.Unlock()
	return w.ch, nil
}

// replay reads the logged events under prefix from fromRev, grouped by
// revision.
func (s *Bolt) replay(prefix string, fromRev int64) ([][]Event, error) {
	var out [][]Event
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketEvents).Cursor()
		for k, v := c.Seek(eventKey(fromRev, 0)); k != nil; k, v = c.Next() {
			ev := decodeEvent(v)
			if !hasPrefix(ev.KV.Key, prefix) {
				continue
			}
			if n := len(out); n > 0 && out[n-1][0].KV.ModRevision == ev.KV.ModRevision {
				out[n-1] = append(out[n-1], ev)
				continue
			}
			out = append(out, []Event{ev})
		}
		return nil
	})
	return out, err
}

// Compact drops logged events older than rev; a later Watch from before rev
// fails with ErrCompacted. It mirrors etcd's Compact.
func (s *Bolt) Compact(ctx context.Context, rev int64) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	s.txMu.Lock()
	defer s.txMu.Unlock()
	if s.closed.Load() {
		return ErrClosed
	}
	if cur := s.rev.Load(); rev > cur {
		return fmt.Errorf("store: compact to %d: beyond current revision %d", rev, cur)
	}
	if rev <= s.minRev {
		return nil
	}
	n := s.nEvents
	err := s.db.Update(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketEvents).Cursor()
		for k, _ := c.First(); k != nil && int64(binary.BigEndian.Uint64(k)) < rev; k, _ = c.First() {
			if err := c.Delete(); err != nil {
				return err
			}
			n--
		}
		return tx.Bucket(bucketMeta).Put(metaMinRev, u64(rev))
	})
	if err != nil {
		return fmt.Errorf("store: compact to %d: %w", rev, err)
	}
	s.minRev, s.nEvents = rev, n
	return nil
}

// Close stops the lease loop, closes every watch channel and the file.
// Calling it again returns nil; every other method then returns ErrClosed.
func (s *Bolt) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	close(s.stop)
	<-s.done
	s.txMu.Lock() // wait for an in-flight write to publish
	defer s.txMu.Unlock()
	s.mu.Lock()
	for w := range s.watchers {
		s.dropLocked(w)
	}
	s.mu.Unlock()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("store: close: %w", err)
	}
	return nil
}

func (s *Bolt) check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.closed.Load() {
		return ErrClosed
	}
	return nil
}

func (s *Bolt) view(ctx context.Context, fn func(tx *bolt.Tx) error) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	err := s.db.View(fn)
	if errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}

func hasPrefix(key, prefix string) bool {
	return len(key) >= len(prefix) && key[:len(prefix)] == prefix
}

// Record encodings: a KV is createRev|modRev|lease|value; an event is
// type|createRev|modRev|lease|keyLen(4)|key|value.

func encodeKV(kv KV) []byte {
	b := make([]byte, 24, 24+len(kv.Value))
	binary.BigEndian.PutUint64(b[0:], uint64(kv.CreateRevision))
	binary.BigEndian.PutUint64(b[8:], uint64(kv.ModRevision))
	binary.BigEndian.PutUint64(b[16:], uint64(kv.Lease))
	return append(b, kv.Value...)
}

func decodeKV(key string, b []byte) KV {
	kv := KV{
		Key:            key,
		CreateRevision: int64(binary.BigEndian.Uint64(b[0:])),
		ModRevision:    int64(binary.BigEndian.Uint64(b[8:])),
		Lease:          LeaseID(binary.BigEndian.Uint64(b[16:])),
	}
	if len(b) > 24 {
		kv.Value = bytes.Clone(b[24:])
	}
	return kv
}

func encodeEvent(ev Event) []byte {
	rec := encodeKV(ev.KV)
	b := make([]byte, 0, 5+len(ev.KV.Key)+len(rec))
	b = append(b, byte(ev.Type))
	b = append(b, rec[:24]...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(ev.KV.Key)))
	b = append(b, ev.KV.Key...)
	return append(b, rec[24:]...)
}

func decodeEvent(b []byte) Event {
	n := int(binary.BigEndian.Uint32(b[25:]))
	key := string(b[29 : 29+n])
	rec := append(bytes.Clone(b[1:25]), b[29+n:]...)
	return Event{Type: EventType(b[0]), KV: decodeKV(key, rec)}
}

func eventKey(rev int64, i uint32) []byte {
	return binary.BigEndian.AppendUint32(u64(rev), i)
}

func leaseKey(id LeaseID, key string) []byte {
	return append(u64(int64(id)), key...)
}

func u64(v int64) []byte {
	return binary.BigEndian.AppendUint64(nil, uint64(v))
}

func getInt(b *bolt.Bucket, key []byte, def int64) int64 {
	if v := b.Get(key); len(v) == 8 {
		return int64(binary.BigEndian.Uint64(v))
	}
	return def
}
