package control

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"trellis.dev/trellis/internal/stats"
)

// TestStatsAPI: /v1/stats answers a read-only token with the merged rows
// (none yet) and refuses a query it cannot answer, naming the parameter.
func TestStatsAPI(t *testing.T) {
	c := startControl(t, t.TempDir())
	cl := newClient(t, c)
	_, ro := cl.createToken(`{"role":"read-only"}`)
	st, body := cl.doToken("GET", "/v1/stats?kind=edge&window=30s", nil, ro.Secret)
	var res stats.Result
	if st != http.StatusOK || json.Unmarshal(body, &res) != nil || res.Kind != "edge" || res.Window != "30s" || res.Rows == nil {
		t.Fatalf("read-only GET /v1/stats: %d %s", st, body)
	}
	if got := res.End.Sub(res.Start).String(); got != "30s" {
		t.Errorf("window spans %s, want 30s", got)
	}
	st, body = cl.do("GET", "/v1/stats", nil)
	if json.Unmarshal(body, &res) != nil || st != http.StatusOK || res.Kind != "service" || res.Window != "1m0s" {
		t.Fatalf("defaults: %d %s; want kind service, window 1m", st, body)
	}
	for q, want := range map[string]string{
		"kind=pods":                  "kind",
		"window=7s":                  "window",
		"window=soon":                "window: soon is not a duration",
		"service=Not_A_Name":         "service",
		"kind=path&window=5m":        "paths are kept for 1m0s",
		"kind=edge&source=a.b.c.d.e": "source",
	} {
		st, body := cl.do("GET", "/v1/stats?"+q, nil)
		if st != http.StatusBadRequest || !strings.Contains(string(body), want) {
			t.Errorf("%s: %d %s; want 400 naming %q", q, st, body, want)
		}
	}
}
