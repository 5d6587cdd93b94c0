package store

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// These test the cutting of etcd watch responses into batches, which a real
// etcd (see TestEtcdConformance) cannot be made to get wrong on purpose.

func put(key string, rev int64) *clientv3.Event {
	return &clientv3.Event{Type: mvccpb.PUT, Kv: &mvccpb.KeyValue{Key: []byte(key), ModRevision: rev, CreateRevision: rev, Value: []byte("v")}}
}

func del(key string, rev int64) *clientv3.Event {
	return &clientv3.Event{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: []byte(key), ModRevision: rev}}
}

func testEtcd(buffer int) *Etcd {
	return &Etcd{log: slog.New(slog.DiscardHandler), opts: EtcdOptions{WatchBuffer: buffer}}
}

// runPump feeds resps to pump and returns what it sent and whether it
// stopped before the responses ran out.
func runPump(t *testing.T, s *Etcd, resps ...clientv3.WatchResponse) (got [][]Event, stoppedEarly bool) {
	t.Helper()
	wch := make(chan clientv3.WatchResponse, len(resps))
	for _, r := range resps {
		wch <- r
	}
	close(wch)
	out := make(chan []Event, 64)
	s.pump(context.Background(), "p/", wch, out)
	close(out)
	for b := range out {
		got = append(got, b)
	}
	return got, len(wch) > 0
}

func TestPumpCutsResponsesPerRevision(t *testing.T) {
	got, early := runPump(t, testEtcd(8),
		clientv3.WatchResponse{Events: []*clientv3.Event{put("p/a", 5), put("p/b", 5), del("p/a", 6), put("p/c", 7)}},
		clientv3.WatchResponse{Events: []*clientv3.Event{put("p/d", 9), put("p/e", 9)}},
	)
	want := []string{`[1 p/a@5 "v"] [1 p/b@5 "v"] `, `[2 p/a@6 ""] `, `[1 p/c@7 "v"] `, `[1 p/d@9 "v"] [1 p/e@9 "v"] `}
	if early || len(got) != len(want) {
		t.Fatalf("batches = %d (stopped early %v), want %d", len(got), early, len(want))
	}
	for i, b := range got {
		if s := dumpEvents(b); s != want[i] {
			t.Errorf("batch %d = %s, want %s", i, s, want[i])
		}
	}
}

// TestPumpRefusesSplitRevision: a revision continued in a later response
// would reach the reader as two batches; the watch is closed instead.
func TestPumpRefusesSplitRevision(t *testing.T) {
	got, _ := runPump(t, testEtcd(8),
		clientv3.WatchResponse{Events: []*clientv3.Event{put("p/a", 5), put("p/b", 6)}},
		clientv3.WatchResponse{Events: []*clientv3.Event{put("p/c", 6)}},
		clientv3.WatchResponse{Events: []*clientv3.Event{put("p/d", 7)}},
	)
	if len(got) != 2 || got[1][0].KV.Key != "p/b" || len(got[1]) != 1 {
		t.Fatalf("batches %v: want p/a@5 and p/b@6, then the watch closed", got)
	}
}

func TestPumpEndsOnCompaction(t *testing.T) {
	got, early := runPump(t, testEtcd(8),
		clientv3.WatchResponse{Events: []*clientv3.Event{put("p/a", 5)}},
		clientv3.WatchResponse{CompactRevision: 9},
		clientv3.WatchResponse{Events: []*clientv3.Event{put("p/b", 10)}},
	)
	if len(got) != 1 || !early {
		t.Fatalf("batches %v, stopped early %v: want one batch, then the watch closed", got, early)
	}
}

// TestPumpClosesSlowWatcher: a reader that leaves its queue full past the
// grace period loses its watch; one that reads within it does not.
func TestPumpClosesSlowWatcher(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := testEtcd(1)
		wch := make(chan clientv3.WatchResponse, 3)
		for r := int64(1); r <= 3; r++ {
			wch <- clientv3.WatchResponse{Events: []*clientv3.Event{put("p/k", r)}}
		}
		close(wch)
		out := make(chan []Event, 1)
		done := make(chan struct{})
		go func() { s.pump(context.Background(), "p/", wch, out); close(done) }()
		synctest.Wait() // rev 1 queued, rev 2 waiting for room
		time.Sleep(etcdSlowWatcherGrace / 2)
		if b := <-out; b[0].KV.ModRevision != 1 {
			t.Fatalf("first batch at %d", b[0].KV.ModRevision)
		}
		synctest.Wait() // rev 2 queued within the grace, rev 3 waiting
		time.Sleep(etcdSlowWatcherGrace + time.Millisecond)
		<-done
		if b := <-out; b[0].KV.ModRevision != 2 {
			t.Fatalf("second batch at %d", b[0].KV.ModRevision)
		}
		if len(wch) != 0 || len(out) != 0 {
			t.Fatal("revision 3 was delivered to a reader that stayed full past the grace period")
		}
	})
}

func dumpEvents(evs []Event) string {
	var b strings.Builder
	for _, ev := range evs {
		fmt.Fprintf(&b, "[%d %s@%d %q] ", ev.Type, ev.KV.Key, ev.KV.ModRevision, ev.KV.Value)
	}
	return b.String()
}
