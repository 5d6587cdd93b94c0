package control

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"trellis.dev/trellis/internal/store"
	"trellis.dev/trellis/internal/store/etcdtest"
)

// TestLeaderRunFollowsTerms: Run starts its work when a term starts,
// cancels it when the term ends, and starts it again in the next term; Do
// runs only during a term.
func TestLeaderRunFollowsTerms(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLeader("r1", slog.New(slog.DiscardHandler))
		var running, starts atomic.Int32
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() {
			defer close(done)
			l.Run(ctx, "work", func(term context.Context) {
				starts.Add(1)
				running.Add(1)
				<-term.Done()
				running.Add(-1)
			})
		}()
		ran := false
		if err := l.Do(ctx, "step", func(context.Context) error { ran = true; return nil }); !errors.Is(err, ErrNotLeader) || ran {
			t.Fatalf("Do before election: err %v ran %v; want ErrNotLeader, not run", err, ran)
		}
		synctest.Wait()
		if running.Load() != 0 || l.IsLeader() {
			t.Fatal("work runs before this replica is elected")
		}
		for term := 1; term <= 2; term++ {
			l.elected(t.Context())
			synctest.Wait()
			if running.Load() != 1 || starts.Load() != int32(term) || !l.IsLeader() || l.Current() != "r1" {
				t.Fatalf("term %d: running %d starts %d leader %v current %q", term, running.Load(), starts.Load(), l.IsLeader(), l.Current())
			}
			if err := l.Do(ctx, "step", func(context.Context) error { ran = true; return nil }); err != nil || !ran {
				t.Fatalf("Do while leader: err %v ran %v", err, ran)
			}
			ran = false
			l.deposed("test")
			synctest.Wait()
			if running.Load() != 0 || l.IsLeader() {
				t.Fatalf("term %d ended: work still running (%d) or still leader", term, running.Load())
			}
		}
		// A Do in progress is cancelled when the term ends.
		l.elected(t.Context())
		stepDone := make(chan error, 1)
		go func() {
			stepDone <- l.Do(ctx, "long", func(c context.Context) error { <-c.Done(); return c.Err() })
		}()
		synctest.Wait()
		l.deposed("test")
		if err := <-stepDone; err == nil || !strings.Contains(err.Error(), "leader long") {
			t.Fatalf("long Do after deposition: %v", err)
		}
		cancel()
		<-done
	})
}

func startEtcdReplica(t *testing.T, e store.EtcdOptions, id string) *Control {
	t.Helper()
	c, err := Start(context.Background(), Options{
		DataDir: t.TempDir(), Etcd: e, ReplicaID: id, LeaderTTL: 2 * time.Second,
		GRPCAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0", DNSAddr: DNSOff,
		StatusFlush: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop() })
	return c
}

func leaders(cs ...*Control) (n int, who *Control) {
	for _, c := range cs {
		if c.Leader().IsLeader() {
			n, who = n+1, c
		}
	}
	return n, who
}

func waitOneLeader(t *testing.T, within time.Duration, cs ...*Control) *Control {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		if n, who := leaders(cs...); n == 1 {
			return who
		}
		if time.Now().After(deadline) {
			n, _ := leaders(cs...)
			t.Fatalf("%d leaders after %s, want 1", n, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLeaderElectionOnEtcd: replicas on one etcd elect exactly one leader,
// which every replica's /v1/replicas names; when the leader's session lease
// ends (as when it is killed and its lease lapses) another replica leads
// within the TTL; a leader that stops resigns, handing over at once.
func TestLeaderElectionOnEtcd(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	e := store.EtcdOptions{Endpoints: []string{srv.Endpoint}, Prefix: "/ha"}
	a, b, c := startEtcdReplica(t, e, "a"), startEtcdReplica(t, e, "b"), startEtcdReplica(t, e, "c")
	first := waitOneLeader(t, 5*time.Second, a, b, c)

	var ans replicasAnswer
	for deadline := time.Now().Add(5 * time.Second); len(ans.Replicas) < 3 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		status, body := newClient(t, b).do("GET", "/v1/replicas", nil)
		if status != http.StatusOK || json.Unmarshal(body, &ans) != nil {
			t.Fatalf("GET /v1/replicas: %d %s", status, body)
		}
	}
	if ans.Self != "b" || len(ans.Replicas) != 3 || !ans.Replicas[0].Leader || ans.Replicas[0].ID != first.Replica() {
		t.Fatalf("/v1/replicas = %+v; want self b, three replicas, %s leading first", ans, first.Replica())
	}

	// The leader's lease ends under it, as etcd ends a dead replica's.
	raw, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	resp, err := raw.Get(t.Context(), "/ha"+leaderElectionKey+"/", clientv3.WithFirstCreate()...)
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != first.Replica() {
		t.Fatalf("election key: %v %v", resp, err)
	}
	start := time.Now()
	if _, err := raw.Revoke(t.Context(), clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	var second *Control
	deadline := time.Now().Add(2 * time.Second)
	for second == nil || second == first {
		if time.Now().After(deadline) {
			t.Fatalf("no other replica leads %s after the leader's lease ended", time.Since(start))
		}
		time.Sleep(10 * time.Millisecond)
		if n, who := leaders(a, b, c); n == 1 {
			second = who
		}
	}
	t.Logf("%s took over from %s in %s", second.Replica(), first.Replica(), time.Since(start))
	if first.Leader().IsLeader() {
		t.Fatal("the old leader still believes it leads")
	}

	start = time.Now()
	second.Stop()
	rest := []*Control{}
	for _, x := range []*Control{a, b, c} {
		if x != second {
			rest = append(rest, x)
		}
	}
	third := waitOneLeader(t, time.Second, rest...)
	t.Logf("%s took over from the stopped %s in %s", third.Replica(), second.Replica(), time.Since(start))
}

// TestSoleLeaderOnBolt: on bbolt the one replica is the leader, and says
// so in /metrics.
func TestSoleLeaderOnBolt(t *testing.T) {
	c := startControl(t, t.TempDir())
	if !c.Leader().IsLeader() {
		t.Fatal("a bbolt replica is not the leader")
	}
	resp, err := http.Get("http://" + c.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sb strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			break
		}
	}
	if !strings.Contains(sb.String(), "\ntrellis_control_leader 1\n") {
		t.Fatal("/metrics lacks trellis_control_leader 1")
	}
}
