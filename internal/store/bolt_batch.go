package store

import (
	"encoding/binary"
	"errors"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// Group commit. Every bbolt write transaction ends in an fsync; when 1,000
// proxies register at once (a grant and a put each, plus the CA's audit
// record of each certificate) the writers queue behind one another's
// fsyncs: the scale harness measured grants waiting seconds. So writers
// that arrive while a commit is under way join the next one: the first
// writer in becomes the committer, takes every queued write, runs them in
// order in one transaction — each its own revision, as if committed alone
// — commits once, then publishes each revision's events in order. A write
// whose fn fails rolls the group back; it alone gets its error and the
// others run again without it (so fns must be safe to rerun: undo, if
// set, reverts an fn's side effects outside the transaction before a
// rerun). This is bbolt's DB.Batch, with revisions and watch order kept.

// Commits is the number of write transactions committed (each one fsync);
// with concurrent writers it is below the number of writes.
func (s *Bolt) Commits() uint64 { return s.commits.Load() }

// writeReq is one write waiting for a group commit.
type writeReq struct {
	always bool
	fn     func(tx *bolt.Tx, rev int64) ([]Event, error)
	undo   func()
	// Results, set before done closes.
	rev  int64
	err  error
	done chan struct{}
	// promote closes when this writer is to commit the queue next.
	promote chan struct{}
	// Within one attempt: the revision fn got and its events.
	evs    []Event
	bumped bool
}

// write runs fn in a bbolt write transaction with rev = the revision
// before it + 1 (grouped with concurrent writes, see above). The revision
// is consumed if fn returns events or always is set; the events are
// appended to the log, the log trimmed to History, and after the commit the
// events are published to watchers while txMu is still held.
func (s *Bolt) write(always bool, fn func(tx *bolt.Tx, rev int64) ([]Event, error)) (int64, error) {
	return s.writeUndo(always, fn, nil)
}

func (s *Bolt) writeUndo(always bool, fn func(tx *bolt.Tx, rev int64) ([]Event, error), undo func()) (int64, error) {
	req := &writeReq{always: always, fn: fn, undo: undo, done: make(chan struct{}), promote: make(chan struct{})}
	s.qmu.Lock()
	s.queue = append(s.queue, req)
	lead := !s.committing
	s.committing = true
	s.qmu.Unlock()
	if !lead {
		select {
		case <-req.done:
			return req.rev, req.err
		case <-req.promote:
		}
	}
	s.commitQueued()
	<-req.done
	return req.rev, req.err
}

// commitQueued commits the queued writes as one group, then hands the
// committer's role to the first writer that queued meanwhile (so no
// caller commits for others for long), or gives it up.
func (s *Bolt) commitQueued() {
	s.qmu.Lock()
	group := s.queue
	s.queue = nil
	s.qmu.Unlock()
	s.commitGroup(group)
	s.qmu.Lock()
	defer s.qmu.Unlock()
	if len(s.queue) == 0 {
		s.committing = false
		return
	}
	close(s.queue[0].promote)
}

// errFnFailed marks a group rolled back because one write's fn failed.
var errFnFailed = errors.New("store: a write in the group failed")

func (s *Bolt) commitGroup(group []*writeReq) {
	s.txMu.Lock()
	defer s.txMu.Unlock()
	for len(group) > 0 {
		if s.closed.Load() {
			finish(group, 0, ErrClosed)
			return
		}
		base := s.rev.Load()
		var (
			failed  = -1
			rev     = base
			minRev  = s.minRev
			nEvents = s.nEvents
		)
		err := s.db.Update(func(tx *bolt.Tx) error {
			for i, r := range group {
				evs, err := r.fn(tx, rev+1)
				if err != nil {
					failed, r.err = i, err
					return errFnFailed
				}
				r.evs, r.bumped = evs, len(evs) > 0 || r.always
				if !r.bumped {
					r.rev = rev
					continue
				}
				rev++
				r.rev = rev
				if err := s.logEvents(tx, rev, evs); err != nil {
					return err
				}
				nEvents += len(evs)
			}
			if rev == base {
				return nil
			}
			if err := tx.Bucket(bucketMeta).Put(metaRev, u64(rev)); err != nil {
				return err
			}
			return s.trim(tx, base, &minRev, &nEvents)
		})
		if errors.Is(err, errFnFailed) {
			// Its fn's error is its own; the others run again without it.
			bad := group[failed]
			group = append(group[:failed:failed], group[failed+1:]...)
			for _, r := range group {
				if r.undo != nil {
					r.undo()
				}
			}
			bad.rev = 0
			close(bad.done)
			continue
		}
		if err != nil {
			if errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
				err = ErrClosed
			}
			finish(group, 0, err)
			return
		}
		s.rev.Store(rev)
		s.minRev, s.nEvents = minRev, nEvents
		s.commits.Add(1)
		for _, r := range group {
			if r.bumped {
				s.publish(r.evs)
			}
			r.evs = nil
			close(r.done)
		}
		return
	}
}

func finish(group []*writeReq, rev int64, err error) {
	for _, r := range group {
		r.rev, r.err = rev, err
		close(r.done)
	}
}

func (s *Bolt) logEvents(tx *bolt.Tx, rev int64, evs []Event) error {
	log := tx.Bucket(bucketEvents)
	for i, ev := range evs {
		if err := log.Put(eventKey(rev, uint32(i)), encodeEvent(ev)); err != nil {
			return err
		}
	}
	return nil
}

// trim drops the oldest events past History, never one of the revisions
// this group wrote (above base). Leftovers of a partly trimmed revision sit
// below minRev, where Watch never reads.
func (s *Bolt) trim(tx *bolt.Tx, base int64, minRev *int64, nEvents *int) error {
	if *nEvents <= s.opts.History {
		return nil
	}
	c := tx.Bucket(bucketEvents).Cursor()
	var last int64
	for k, _ := c.First(); k != nil && *nEvents > s.opts.History; k, _ = c.First() {
		r := int64(binary.BigEndian.Uint64(k))
		if r > base {
			break
		}
		if err := c.Delete(); err != nil {
			return err
		}
		*nEvents--
		last = r
	}
	if last != 0 {
		*minRev = last + 1
		return tx.Bucket(bucketMeta).Put(metaMinRev, u64(*minRev))
	}
	return nil
}
