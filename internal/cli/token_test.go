package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"trellis.dev/trellis/internal/control"
)

func TestPrintTokens(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	list := []control.Token{
		{ID: "aaaaaaaaaaaaaaaa", Role: control.RoleProxy, Namespace: "default", ServiceAccount: "web", MaxUses: 3, Used: 1, Expires: now.Add(time.Hour)},
		{ID: "bbbbbbbbbbbbbbbb", Role: control.RoleProxy, Namespace: "shop", ServiceAccount: "api", MaxUses: 1, Used: 1, Expires: now.Add(time.Hour)},
		{ID: "cccccccccccccccc", Role: control.RoleProxy, Namespace: "default", ServiceAccount: "web", Expires: now.Add(-time.Minute)},
		{ID: "dddddddddddddddd", Role: control.RoleReadOnly, Revoked: true},
		{ID: "eeeeeeeeeeeeeeee", Role: control.RoleAdmin},
	}
	var b bytes.Buffer
	if err := printTokens(&b, list, now); err != nil {
		t.Fatal(err)
	}
	for _, re := range []string{
		`(?m)^ID\s+ROLE\s+IDENTITY\s+USES LEFT\s+EXPIRES\s+STATE$`,
		`(?m)^aaaaaaaaaaaaaaaa\s+proxy\s+ns/default/sa/web\s+2\s+.*\(in 1h0m0s\)\s+valid$`,
		`(?m)^bbbbbbbbbbbbbbbb\s+proxy\s+ns/shop/sa/api\s+0\s+.*spent$`,
		`(?m)^cccccccccccccccc\s+proxy\s+ns/default/sa/web\s+unbounded\s+.*EXPIRED.*expired$`,
		`(?m)^dddddddddddddddd\s+read-only\s+-\s+-\s+-\s+revoked$`,
		`(?m)^eeeeeeeeeeeeeeee\s+admin\s+-\s+-\s+-\s+valid$`,
	} {
		if !regexp.MustCompile(re).MatchString(b.String()) {
			t.Errorf("token list does not match %s:\n%s", re, b.String())
		}
	}
}

func TestPrintAudit(t *testing.T) {
	var b bytes.Buffer
	at := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	if err := printAudit(&b, []control.AuditEntry{
		{Revision: 4, Time: at, Who: "admin-token", Action: "apply", Target: "put Service/default/web"},
		{Revision: 6, Time: at, Who: "token:aaaaaaaaaaaaaaaa", Action: "ca.issue", Target: "spiffe://trellis.local/ns/default/sa/web", Detail: "serial=1f notAfter=2026-01-02T12:00:00Z"},
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"REVISION   TIME                   WHO                      ACTION     TARGET                                     DETAIL",
		"4          2026-01-01T12:00:00Z   admin-token              apply      put Service/default/web                    -",
		"6          2026-01-01T12:00:00Z   token:aaaaaaaaaaaaaaaa   ca.issue   spiffe://trellis.local/ns/default/sa/web   serial=1f notAfter=2026-01-02T12:00:00Z",
	}
	if got := strings.TrimSpace(b.String()); got != strings.Join(want, "\n") {
		t.Fatalf("audit table:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
}

// TestWriteSecret: the token file is 0600 and never overwrites one.
func TestWriteSecret(t *testing.T) {
	f := filepath.Join(t.TempDir(), "t")
	if err := writeSecret(f, "trellis-x"); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(f)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, err %v; want 0600", fi.Mode().Perm(), err)
	}
	if err := writeSecret(f, "other"); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("overwrite: %v, want refused", err)
	}
}
