package control

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"trellis.dev/trellis/internal/tap"
)

// TestTapAdminAPI: a tap needs an admin token (read-only is refused with
// the reason), bad filters are refused naming the parameter, an admin's
// tap streams its "started" line at once and is audited, and stopping the
// control plane ends an open tap rather than waiting for it.
func TestTapAdminAPI(t *testing.T) {
	c := startControlWith(t, Options{DataDir: t.TempDir()})
	cl := newClient(t, c)
	st, ro := cl.createToken(`{"role":"read-only"}`)
	if st != http.StatusCreated {
		t.Fatalf("create read-only token: %d", st)
	}
	if st, b := cl.doToken("GET", "/v1/tap/default/orders", nil, ro.Secret); st != http.StatusForbidden || !strings.Contains(string(b), "needs an admin token") {
		t.Fatalf("read-only tap: %d %s", st, b)
	}
	for q, want := range map[string]string{
		"?path=api":       "must start with /",
		"?method=G%20T":   "not an HTTP method token",
		"?to=Bad_Name":    "name.namespace",
		"?maxRps=0":       "maxRps",
		"?maxRps=1000000": "maxRps",
	} {
		if st, b := cl.do("GET", "/v1/tap/default/orders"+q, nil); st != http.StatusBadRequest || !strings.Contains(string(b), want) {
			t.Errorf("tap%s: %d %s; want 400 naming %q", q, st, b, want)
		}
	}
	if st, b := cl.do("GET", "/v1/tap/default/Orders", nil); st != http.StatusBadRequest {
		t.Errorf("bad service name: %d %s", st, b)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", cl.base+"/v1/tap/default/orders?path=/api&to=payments", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+cl.token)
	hc := *cl.http
	hc.Timeout = 0
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("tap: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	sc := bufio.NewScanner(resp.Body)
	if !sc.Scan() {
		t.Fatalf("no first line: %v", sc.Err())
	}
	var first TapLine
	if err := json.Unmarshal(sc.Bytes(), &first); err != nil || first.Type != "started" || first.Tap == "" || first.Proxies == nil || *first.Proxies != 0 {
		t.Fatalf("first line %s (%v)", sc.Bytes(), err)
	}
	var audited bool
	for _, e := range auditEntries(t, cl) {
		if e.Action == "tap" && e.Target == "orders.default" && e.Who == "admin-token" && strings.Contains(e.Detail, `to="payments.default"`) {
			audited = true
		}
	}
	if !audited {
		t.Errorf("the tap is not in the audit log: %+v", auditEntries(t, cl))
	}

	stopped := make(chan error, 1)
	start := time.Now()
	go func() { stopped <- c.Stop() }()
	for sc.Scan() {
	}
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Stop did not return with a tap open")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Stop took %v with a tap open: it waited for the tap", d)
	}
}

// FuzzTapRequestOf: whatever the path values and query, the parser either
// refuses or returns a service and a filter the proxies accept.
func FuzzTapRequestOf(f *testing.F) {
	f.Add("default", "orders", "path=/api&method=get&to=payments&maxRps=5")
	f.Add("Bad", "", "maxRps=-1")
	f.Add("a", "b", "to=x.y.z&path=%00")
	f.Fuzz(func(t *testing.T, ns, svc, query string) {
		r, err := http.NewRequest("GET", "https://control/v1/tap/x/y", nil)
		if err != nil {
			t.Skip()
		}
		r.URL.RawQuery = query
		r.SetPathValue("namespace", ns)
		r.SetPathValue("service", svc)
		service, req, err := tapRequestOf(r)
		if err != nil {
			return
		}
		if service != svc+"."+ns {
			t.Fatalf("service %q from %q, %q", service, svc, ns)
		}
		if _, err := tap.FilterOf(req); err != nil {
			t.Fatalf("accepted a filter the proxies refuse: %v", err)
		}
		if req.GetMaxRps() > tap.MaxMaxRPS {
			t.Fatalf("maxRps %d accepted", req.GetMaxRps())
		}
	})
}
