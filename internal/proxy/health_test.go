package proxy

import (
	"io"
	"net/http"
	"strings"
	"testing"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// TestReadyFollowsAppHealth: a ready proxy with a config answers /ready
// 503 with the reason while its app fails its check, 200 once it passes.
func TestReadyFollowsAppHealth(t *testing.T) {
	ca := newTestCA(t, "trellis.local")
	p := startClient(t, ca, Options{})
	app := startApp(t, whoami("orders"))
	srv := startServer(t, ca, "orders", app, port(80, app, meshv1.Protocol_HTTP))
	if err := p.Update(snapshot("v1", srv.svc)); err != nil {
		t.Fatal(err)
	}
	p.SetReady(true)
	ready := func() (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + p.AdminAddr() + "/ready")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}
	if code, _ := ready(); code != 200 || !p.Ready() {
		t.Fatalf("/ready before any verdict = %d; want 200 (no check: healthy)", code)
	}
	p.SetAppHealth(false, "HTTP 503")
	if code, body := ready(); code != 503 || body != "app not healthy: HTTP 503" || p.Ready() {
		t.Fatalf("/ready with a failing app = %d %q", code, body)
	}
	p.SetAppHealth(true, "")
	if code, _ := ready(); code != 200 || !p.Ready() {
		t.Fatalf("/ready once the app passes = %d", code)
	}
}
