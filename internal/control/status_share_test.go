package control

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"trellis.dev/trellis/internal/push"
	"trellis.dev/trellis/internal/store"
	"trellis.dev/trellis/internal/store/etcdtest"
)

func proxiesOf(t *testing.T, c *Control) []push.ProxyStatus {
	t.Helper()
	status, body := newClient(t, c).do("GET", "/v1/proxies", nil)
	var list []push.ProxyStatus
	if status != http.StatusOK || json.Unmarshal(body, &list) != nil {
		t.Fatalf("GET /v1/proxies: %d %s", status, body)
	}
	return list
}

// TestProxyStatusFromAnyReplica: a proxy attached to one replica is listed,
// with that replica's id, by every replica; its record is written once per
// change (not per flush), and it leaves with the proxy's lease.
func TestProxyStatusFromAnyReplica(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	e := store.EtcdOptions{Endpoints: []string{srv.Endpoint}, Prefix: "/ha"}
	a, b := startEtcdReplica(t, e, "a"), startEtcdReplica(t, e, "b")
	startProxySession(t, a, "inventory")

	var seen push.ProxyStatus
	deadline := time.Now().Add(5 * time.Second)
	for seen.State != push.StateSynced {
		if time.Now().After(deadline) {
			t.Fatalf("replica b never listed inventory-1 as SYNCED; last %+v", seen)
		}
		time.Sleep(20 * time.Millisecond)
		for _, p := range proxiesOf(t, b) {
			if p.NodeID == "inventory-1" {
				seen = p
			}
		}
	}
	if seen.Replica != "a" {
		t.Fatalf("b lists inventory-1 on replica %q, want a", seen.Replica)
	}
	if own := proxiesOf(t, a); len(own) != 1 || own[0].Replica != "a" {
		t.Fatalf("a lists %+v", own)
	}

	// Unchanged statuses are not rewritten: a second of flushes (ten)
	// writes nothing new.
	before := a.status.puts.Load()
	time.Sleep(time.Second)
	if got := a.status.puts.Load() - before; got != 0 {
		t.Fatalf("%d status writes in a second without a change, want 0", got)
	}
	if n := b.status.puts.Load(); n != 0 {
		t.Fatalf("replica b wrote %d records for a proxy it does not serve", n)
	}
	t.Logf("status writes for one proxy attaching and syncing: %d records in %d transactions", a.status.puts.Load(), a.status.txns.Load())

	// The proxy's lease ends (it died): its record goes with it.
	if err := a.reg.Deregister(t.Context(), a.push.NodeLease("inventory-1")); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); len(proxiesOf(t, b)) != 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("b still lists %+v after the proxy's lease ended", proxiesOf(t, b))
		}
	}
}
