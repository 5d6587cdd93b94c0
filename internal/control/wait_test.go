package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/push"
)

// awaitProxies long-polls /v1/proxies for rev, as `apply --wait` does.
func (c *client) awaitProxies(rev int64, wait time.Duration) ([]push.ProxyStatus, time.Duration) {
	c.t.Helper()
	start := time.Now()
	status, body := c.do("GET", fmt.Sprintf("/v1/proxies?minRevision=%d&wait=%s", rev, wait), nil)
	var list []push.ProxyStatus
	if status != http.StatusOK || json.Unmarshal(body, &list) != nil {
		c.t.Fatalf("long-poll: %d %s", status, body)
	}
	return list, time.Since(start)
}

func byNode(list []push.ProxyStatus) map[string]push.ProxyStatus {
	m := map[string]push.ProxyStatus{}
	for _, p := range list {
		m[p.NodeID] = p
	}
	return m
}

// TestWaitForRevision runs the apply --wait flow end to end on a real
// control plane: compiler revisions, push, real proxy sessions, the admin
// long-poll. A proxy the change does not affect is at the new revision
// without a push; a proxy that refuses ends the wait at once.
func TestWaitForRevision(t *testing.T) {
	c := startControl(t, t.TempDir())
	cl := newClient(t, c)
	if status, a := cl.apply(false, file{"svc.yaml", serviceYAML}, file{"route.yaml", routeYAML("split", 1)}); status != http.StatusOK {
		t.Fatalf("seed: %d %+v", status, a)
	}
	frontend, _ := startProxySessionWith(t, c, "frontend", func(s *meshv1.Snapshot) error {
		if weightOf(s, "inventory") == 7 {
			return errors.New("route split: weight 7 refused by test")
		}
		return nil
	}, "inventory.default")
	payments := startProxySession(t, c, "payments")
	<-frontend
	<-payments
	// Both settled at the current revision, and nothing left unread.
	cl.awaitProxies(revision(t, c), 5*time.Second)
	for _, ch := range []<-chan received{frontend, payments} {
		for len(ch) > 0 {
			<-ch
		}
	}

	// A change frontend's config sees and payments' does not.
	_, a := cl.apply(false, file{"route.yaml", routeYAML("split", 5)})
	list, _ := cl.awaitProxies(a.Revision, 5*time.Second)
	got := byNode(list)
	if len(list) != 2 || !got["frontend-1"].AtRevision(a.Revision) || !got["payments-1"].AtRevision(a.Revision) {
		t.Fatalf("after the wait for %d: %+v", a.Revision, list)
	}
	for len(frontend) > 0 {
		<-frontend
	}
	if n := len(payments); n != 0 {
		t.Fatalf("payments got %d snapshots for a change outside its config; want it current without a push", n)
	}

	// frontend refuses weight 7: the wait ends well before its limit,
	// naming frontend with its error, still at the previous revision.
	prev := a.Revision
	_, a = cl.apply(false, file{"route.yaml", routeYAML("split", 7)})
	list, took := cl.awaitProxies(a.Revision, 8*time.Second)
	if took > 4*time.Second {
		t.Fatalf("wait took %s with a refused config; want it to end at the NACK", took)
	}
	got = byNode(list)
	fe := got["frontend-1"]
	if !fe.Refused(a.Revision) || fe.Revision < prev || fe.AtRevision(a.Revision) || !strings.Contains(fe.Error, "weight 7 refused") {
		t.Fatalf("frontend after refusing %d: %+v", a.Revision, fe)
	}
	if !got["payments-1"].AtRevision(a.Revision) {
		t.Fatalf("payments not at %d: %+v", a.Revision, got["payments-1"])
	}
}

func TestProxiesWaitParameters(t *testing.T) {
	c := startControl(t, t.TempDir())
	cl := newClient(t, c)
	for _, tt := range []struct{ query, want string }{
		{"wait=1s", "wait: needs minRevision"},
		{"minRevision=-1&wait=1s", "minRevision"},
		{"minRevision=x", "minRevision"},
		{"minRevision=1&wait=soon", "wait"},
		{"minRevision=1&wait=0s", "above 0"},
		{"minRevision=1&wait=6m", "at most 5m0s"},
	} {
		status, body := cl.do("GET", "/v1/proxies?"+tt.query, nil)
		if status != http.StatusBadRequest || !strings.Contains(string(body), tt.want) {
			t.Errorf("?%s: %d %s; want 400 with %q", tt.query, status, body, tt.want)
		}
	}
	// A revision no proxy reaches: the answer comes when the wait is up.
	<-startProxySession(t, c, "payments")
	list, took := cl.awaitProxies(1<<40, 300*time.Millisecond)
	if took < 300*time.Millisecond || len(list) != 1 || list[0].AtRevision(1<<40) {
		t.Fatalf("after %s: %+v; want the proxy, behind, after the 300ms wait", took, list)
	}
}
