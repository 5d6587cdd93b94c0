package store

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Leases live in bucketLeases (id → TTL) so they survive a restart; their
// deadlines live only in memory, so a reopened store gives each a full TTL.

// Grant creates a lease that expires after ttl without KeepAlive. Granting
// does not consume a revision.
func (s *Bolt) Grant(ctx context.Context, ttl time.Duration) (LeaseID, error) {
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	if ttl <= 0 {
		return 0, fmt.Errorf("store: grant: ttl %v: must be positive", ttl)
	}
	var id LeaseID
	_, err := s.write(false, func(tx *bolt.Tx, _ int64) ([]Event, error) {
		id = s.next
		s.next++ // under txMu; a failed commit merely skips an ID
		if err := tx.Bucket(bucketMeta).Put(metaNextLease, u64(int64(id+1))); err != nil {
			return nil, err
		}
		return nil, tx.Bucket(bucketLeases).Put(u64(int64(id)), u64(int64(ttl)))
	})
	if err != nil {
		return 0, fmt.Errorf("store: grant: %w", err)
	}
	s.leaseMu.Lock()
	s.leases[id] = &lease{ttl: ttl, deadline: time.Now().Add(ttl)}
	s.leaseMu.Unlock()
	return id, nil
}

// KeepAlive restarts the lease's TTL, or returns ErrNotFound if it is gone.
func (s *Bolt) KeepAlive(ctx context.Context, id LeaseID) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	s.leaseMu.Lock()
	defer s.leaseMu.Unlock()
	l, ok := s.leases[id]
	if !ok {
		return fmt.Errorf("store: keepalive: lease %d: %w", id, ErrNotFound)
	}
	l.deadline = time.Now().Add(l.ttl)
	return nil
}

// Revoke ends the lease now and deletes its keys under one revision (none
// if it held no keys).
func (s *Bolt) Revoke(ctx context.Context, id LeaseID) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	if err := s.revoke(func(map[LeaseID]*lease) []LeaseID { return []LeaseID{id} }); err != nil {
		return fmt.Errorf("store: revoke: %w", err)
	}
	return nil
}

// revoke deletes the leases pick chooses, and their keys, in one
// transaction. Picking and removing from the in-memory map happen under
// txMu and leaseMu, so a KeepAlive racing an expiry either lands first or
// gets ErrNotFound; it never succeeds on a lease about to be deleted.
func (s *Bolt) revoke(pick func(map[LeaseID]*lease) []LeaseID) error {
	var taken map[LeaseID]*lease
	// undo: the group commit runs fn again after another write failed.
	undo := func() { s.restore(taken) }
	_, err := s.writeUndo(false, func(tx *bolt.Tx, rev int64) ([]Event, error) {
		s.leaseMu.Lock()
		ids := pick(s.leases)
		taken = make(map[LeaseID]*lease, len(ids))
		for _, id := range ids {
			l, ok := s.leases[id]
			if !ok {
				s.leaseMu.Unlock()
				return nil, fmt.Errorf("lease %d: %w", id, ErrNotFound)
			}
			taken[id] = l
			delete(s.leases, id)
		}
		s.leaseMu.Unlock()
		slices.Sort(ids)
		var evs []Event
		for _, id := range ids {
			ev, err := deleteLease(tx, id, rev)
			if err != nil {
				return nil, err
			}
			evs = append(evs, ev...)
		}
		return evs, nil
	}, undo)
	if err != nil {
		s.restore(taken)
	}
	return err
}

// restore puts leases back after a failed transaction.
func (s *Bolt) restore(taken map[LeaseID]*lease) {
	s.leaseMu.Lock()
	defer s.leaseMu.Unlock()
	for id, l := range taken {
		s.leases[id] = l
	}
}

// deleteLease removes a lease and every key attached to it.
func deleteLease(tx *bolt.Tx, id LeaseID, rev int64) ([]Event, error) {
	prefix := u64(int64(id))
	var keys []string
	c := tx.Bucket(bucketLeaseKeys).Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		keys = append(keys, string(k[8:]))
	}
	evs := make([]Event, 0, len(keys))
	kvb := tx.Bucket(bucketKV)
	for _, key := range keys {
		cur := kvb.Get([]byte(key))
		if cur == nil {
			continue
		}
		ev, err := deleteKey(tx, key, cur, rev)
		if err != nil {
			return nil, err
		}
		evs = append(evs, ev)
	}
	return evs, tx.Bucket(bucketLeases).Delete(prefix)
}

// expireLoop revokes, every LeaseCheckInterval, the leases whose deadline
// has passed, all in one transaction.
func (s *Bolt) expireLoop() {
	defer close(s.done)
	t := time.NewTicker(s.opts.LeaseCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			s.expire(now)
		}
	}
}

func (s *Bolt) expire(now time.Time) {
	s.leaseMu.Lock()
	due := false
	for _, l := range s.leases {
		if !now.Before(l.deadline) {
			due = true
			break
		}
	}
	s.leaseMu.Unlock()
	if !due {
		return
	}
	var expired []LeaseID
	err := s.revoke(func(m map[LeaseID]*lease) []LeaseID {
		for id, l := range m {
			if !now.Before(l.deadline) {
				expired = append(expired, id)
			}
		}
		return expired
	})
	if err != nil {
		s.log.Error("expiring leases", "leases", expired, "error", err)
		return
	}
	s.log.Debug("leases expired", "leases", expired)
}
