package cli

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"trellis.dev/trellis/internal/meshname"
)

// tapServer answers /v1/tap with the given lines and then ends the answer,
// recording the request it got.
func tapServer(t *testing.T, lines ...string) (*adminClient, *http.Request) {
	t.Helper()
	got := &http.Request{}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		*got = *r.Clone(context.Background())
		w.Header().Set("Content-Type", "application/x-ndjson")
		for _, l := range lines {
			fmt.Fprintln(w, l)
		}
	}))
	t.Cleanup(srv.Close)
	return &adminClient{base: srv.URL, token: "tok", http: srv.Client()}, got
}

const (
	tapStarted = `{"type":"started","tap":"ab","proxies":2}`
	tapEvent   = `{"type":"event","proxy":"web-1","time":"2026-12-01T15:04:05.123Z","direction":"inbound","method":"GET","authority":"web","path":"/api/a","status":200,"latencyMs":1.42,"sourceIdentity":"spiffe://t/ns/default/sa/client","destinationIdentity":"spiffe://t/ns/default/sa/web","responseFlags":"-","route":"r1"}`
	tapSkip    = `{"type":"skipped","proxy":"web-1","count":17}`
)

// TestRunTap: the filter goes to the admin API as query parameters; in a
// table events go to stdout one a line and the rest to stderr; -o json
// passes the event and skipped lines through; a tap the control plane
// ends is an error.
func TestRunTap(t *testing.T) {
	for _, output := range []string{"table", "json"} {
		t.Run(output, func(t *testing.T) {
			c, got := tapServer(t, tapStarted, tapEvent, tapSkip)
			var out, errb bytes.Buffer
			g := &globals{stdout: &out, stderr: &errb}
			f := tapFlags{path: "/api/", method: "GET", to: "orders", maxRPS: 7, output: output}
			err := runTap(context.Background(), c, g, meshname.Name{Name: "web", Namespace: "shop"}, f)
			if err == nil || !strings.Contains(err.Error(), "control plane ended the tap") {
				t.Fatalf("runTap: %v", err)
			}
			if got.URL.Path != "/v1/tap/shop/web" || got.URL.Query().Get("path") != "/api/" || got.URL.Query().Get("method") != "GET" ||
				got.URL.Query().Get("to") != "orders" || got.URL.Query().Get("maxRps") != "7" || got.Header.Get("Authorization") != "Bearer tok" {
				t.Fatalf("request %s %v", got.URL, got.Header)
			}
			if !strings.Contains(errb.String(), "1 requests shown, 17 skipped") {
				t.Errorf("summary missing: %q", errb.String())
			}
			if output == "json" {
				if out.String() != tapEvent+"\n"+tapSkip+"\n" {
					t.Errorf("json output %q", out.String())
				}
				return
			}
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			if len(lines) != 1 || !strings.Contains(lines[0], "in  web-1 GET web/api/a 200 1.4ms flags=- src=spiffe://t/ns/default/sa/client dst=spiffe://t/ns/default/sa/web route=r1") {
				t.Errorf("table output %q", out.String())
			}
			if !strings.Contains(errb.String(), "watching web.shop on 2 proxies") || !strings.Contains(errb.String(), "17 requests skipped on web-1 (over --max-rps 7)") {
				t.Errorf("stderr %q", errb.String())
			}
		})
	}
}

// TestRunTapRefused: the admin API's refusal comes back as the error.
func TestRunTapRefused(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprintln(w, `{"error":"tap shows live requests (paths, identities): it needs an admin token"}`)
	}))
	defer srv.Close()
	c := &adminClient{base: srv.URL, token: "ro", http: srv.Client()}
	var out, errb bytes.Buffer
	err := runTap(context.Background(), c, &globals{stdout: &out, stderr: &errb}, meshname.Name{Name: "web", Namespace: "default"}, tapFlags{maxRPS: 100, output: "table"})
	if err == nil || !strings.Contains(err.Error(), "needs an admin token") {
		t.Fatalf("runTap: %v", err)
	}
}
