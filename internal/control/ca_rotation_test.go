package control

import (
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"trellis.dev/trellis/internal/ca"
	"trellis.dev/trellis/internal/telemetry"
)

func bundleRoots(t *testing.T, dir string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, CAFile))
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			return out
		}
		out = append(out, blk.Bytes)
	}
}

// TestCARotationAdminAPI over real HTTPS: a read-only token cannot start
// a rotation; an admin token can, and with no proxy registered the
// rotation runs through both phases to a new root alone in ca.crt, each
// step audited, the phase gauge following.
func TestCARotationAdminAPI(t *testing.T) {
	dir := t.TempDir()
	c := startControlWith(t, Options{DataDir: dir})
	cl := newClient(t, c)
	before := bundleRoots(t, dir)
	_, ro := cl.createToken(`{"role":"read-only"}`)
	rev := revision(t, c)
	if st, b := cl.doToken("POST", "/v1/ca/rotate", nil, ro.Secret); st != http.StatusForbidden {
		t.Fatalf("read-only POST /v1/ca/rotate: %d %s, want 403", st, b)
	}
	if got := revision(t, c); got != rev {
		t.Fatalf("a refused rotate moved the store from %d to %d", rev, got)
	}
	if st, b := cl.doToken("GET", "/v1/ca/status", nil, ro.Secret); st != http.StatusOK || !strings.Contains(string(b), `"phase":"idle"`) {
		t.Fatalf("read-only GET /v1/ca/status: %d %s", st, b)
	}
	if m := parseMetrics(t, scrape(t, c)); m.must(t, telemetry.CARotationPhaseName, "phase", ca.PhaseIdle) != 1 {
		t.Fatal("phase gauge: idle is not 1 before a rotation")
	}

	st, b := cl.do("POST", "/v1/ca/rotate", nil)
	var rs ca.RotationStatus
	if st != http.StatusAccepted || json.Unmarshal(b, &rs) != nil || rs.Phase != ca.PhasePropagating || rs.By != "admin-token" {
		t.Fatalf("POST /v1/ca/rotate: %d %s, want 202 propagating by admin-token", st, b)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		after := bundleRoots(t, dir)
		if len(after) == 1 && string(after[0]) != string(before[0]) && c.ca.Phase() == ca.PhaseIdle {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rotation with no proxies not done in 10 s: phase %s, ca.crt holds %d roots", c.ca.Phase(), len(after))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if m := parseMetrics(t, scrape(t, c)); m.must(t, telemetry.CARotationPhaseName, "phase", ca.PhaseIdle) != 1 ||
		m.must(t, telemetry.CARotationPhaseName, "phase", ca.PhaseReissuing) != 0 {
		t.Fatal("phase gauge: not back to idle after the rotation")
	}
	cl = newClient(t, c) // the admin API's certificate is under the new root now
	var actions []string
	for _, e := range auditEntries(t, cl) {
		if strings.HasPrefix(e.Action, "ca.rotate") {
			actions = append(actions, e.Who+" "+e.Action)
		}
	}
	want := "admin-token ca.rotate.start,admin-token ca.rotate.reissue,admin-token ca.rotate.complete"
	if got := strings.Join(actions, ","); got != want {
		t.Fatalf("audit: %q, want %q", got, want)
	}
}

// TestAdminRefusalsRateLimited: a flood of bad-token calls is refused
// every time but logged only up to the limiter's burst.
func TestAdminRefusalsRateLimited(t *testing.T) {
	logs := &lockedBuffer{}
	c := startControlWith(t, Options{DataDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(logs, nil))})
	cl := newClient(t, c)
	for i := range 100 {
		if st, _ := cl.doToken("GET", "/v1/proxies", nil, "not-a-token"); st != http.StatusUnauthorized {
			t.Fatalf("call %d with a bad token: %d, want 401", i, st)
		}
	}
	n := strings.Count(logs.String(), "admin API call refused")
	if n < 1 || n > 20 {
		t.Fatalf("%d log lines for 100 refused calls, want between 1 and the burst (10, plus a few a second)", n)
	}
}
