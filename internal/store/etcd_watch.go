package store

import (
	"context"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Watch is an etcd watch on prefix from fromRev, cut into one batch per
// revision. etcd never splits a revision across watch responses (without
// WithFragment, which this does not ask for) but may put several revisions
// in one response (catching up from history), so each response is cut at
// revision boundaries; should a revision ever arrive in two responses, the
// watch is closed rather than deliver half a transaction. The watch
// requires a leader: on an etcd member cut off from its cluster it closes
// instead of going quiet, and its reader re-lists from another.
func (s *Etcd) Watch(ctx context.Context, prefix string, fromRev int64) (<-chan []Event, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	if fromRev < 0 {
		return nil, fmt.Errorf("store: watch %q: negative revision %d", prefix, fromRev)
	}
	start, err := s.watchStart(ctx, fromRev)
	if err != nil {
		return nil, fmt.Errorf("store: watch %q from revision %d: %w", prefix, fromRev, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return nil, ErrClosed
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	stop := context.AfterFunc(s.life, cancel)
	wch := s.w.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(start))
	out := make(chan []Event, s.opts.WatchBuffer)
	s.pumps.Add(1)
	go func() {
		defer s.pumps.Done()
		defer close(out)
		defer cancel()
		defer stop()
		s.pump(wctx, prefix, wch, out)
	}()
	return out, nil
}

// watchStart is the revision the etcd watch starts at. From 0 it is the
// revision after the current one, read now, so a write made after Watch
// returns is always seen (an etcd watch without a revision starts whenever
// the server gets to it). From a revision it checks that etcd still holds
// it, by a read at that revision, which fails if it was compacted; a
// future revision needs no check (the watch waits for it), and is not read
// at, since etcd refuses such a read and its client logs a warning for it.
func (s *Etcd) watchStart(ctx context.Context, fromRev int64) (int64, error) {
	cur, err := s.Revision(ctx)
	switch {
	case err != nil:
		return 0, err
	case fromRev == 0:
		return cur + 1, nil
	case fromRev > cur:
		return fromRev, nil
	}
	err = s.call(ctx, "watch", func(ctx context.Context) error {
		_, err := s.kv.Get(ctx, "\x00", clientv3.WithCountOnly(), clientv3.WithRev(fromRev))
		return err
	})
	return fromRev, err
}

// pump forwards wch to out, one revision per send, until the watch ends.
// A compaction the watch runs into, a lost leader or a cancel all end it:
// the reader sees its channel close and re-lists.
func (s *Etcd) pump(ctx context.Context, prefix string, wch clientv3.WatchChan, out chan<- []Event) {
	var last int64
	for resp := range wch {
		if err := resp.Err(); err != nil {
			if ctx.Err() == nil {
				s.log.Warn("etcd watch ended; its reader must re-list", "prefix", prefix, "err", err)
			}
			return
		}
		for _, b := range etcdBatches(resp.Events) {
			rev := b[0].KV.ModRevision
			if rev <= last {
				s.log.Error("etcd sent one revision in two watch responses; closing the watch so its reader re-lists",
					"prefix", prefix, "revision", rev)
				return
			}
			last = rev
			if !s.deliver(ctx, prefix, out, b) {
				return
			}
		}
	}
}

// deliver sends b, giving a reader whose queue is full a grace period
// before closing its watch: unlike a bolt commit, an etcd response can
// carry up to a thousand revisions at once when a watch catches up.
func (s *Etcd) deliver(ctx context.Context, prefix string, out chan<- []Event, b []Event) bool {
	select {
	case out <- b:
		return true
	default:
	}
	t := time.NewTimer(etcdSlowWatcherGrace)
	defer t.Stop()
	select {
	case out <- b:
		return true
	case <-ctx.Done():
		return false
	case <-t.C:
		s.log.Warn("closing slow watcher", "prefix", prefix, "revision", b[0].KV.ModRevision, "buffer", cap(out))
		return false
	}
}

// etcdBatches cuts a watch response's events (in revision order, each
// revision's in the order of its transaction's ops) into one slice per
// revision.
func etcdBatches(evs []*clientv3.Event) [][]Event {
	var out [][]Event
	for _, e := range evs {
		ev := Event{Type: EventPut, KV: fromEtcdKV(e.Kv)}
		if e.Type == mvccpb.DELETE {
			ev = Event{Type: EventDelete, KV: KV{Key: string(e.Kv.Key), ModRevision: e.Kv.ModRevision}}
		}
		if n := len(out); n > 0 && out[n-1][0].KV.ModRevision == ev.KV.ModRevision {
			out[n-1] = append(out[n-1], ev)
			continue
		}
		out = append(out, []Event{ev})
	}
	return out
}
