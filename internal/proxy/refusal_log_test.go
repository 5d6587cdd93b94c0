package proxy

import (
	"bytes"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/telemetry"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) count(sub string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Count(s.b.String(), sub)
}

// TestAuthzDenialLogRateLimited through real proxies: 100 denied requests
// are all answered 403 and counted, and logged only up to the refusal
// log limiter's burst.
func TestAuthzDenialLogRateLimited(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	app := startApp(t, whoami("orders"))
	logs := &syncBuf{}
	orders := startServerOpts(t, ca, "orders", app, Options{Logger: slog.New(slog.NewTextHandler(logs, nil))},
		port(80, app, meshv1.Protocol_HTTP))
	client := startClient(t, ca, Options{})
	if err := client.Update(snapshot("1", orders.svc)); err != nil {
		t.Fatal(err)
	}
	setAuthz(t, orders, "2", &meshv1.Authorization{DefaultAction: meshv1.AuthzAction_AUTHZ_DENY})
	c := proxyClient(client)
	for i := range 100 {
		if resp, _ := get(t, c, "http://orders/", nil); resp.StatusCode != http.StatusForbidden {
			t.Fatalf("request %d: %d, want 403", i, resp.StatusCode)
		}
	}
	assertMetric(t, orders.proxy, `trellis_proxy_authz_decisions_total{decision="deny",policy="`+telemetry.AuthzDefault+`"} 100`)
	if n := logs.count("authorization denied"); n < 1 || n > 20 {
		t.Fatalf("%d log lines for 100 denials, want between 1 and the burst (10, plus a few a second)", n)
	}
}
