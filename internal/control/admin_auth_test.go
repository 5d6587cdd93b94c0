package control

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// startControlWith is startControl with o's data dir, dev mode and logger.
func startControlWith(t testing.TB, o Options) *Control {
	t.Helper()
	o.GRPCAddr, o.AdminAddr, o.MetricsAddr, o.DNSAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", DNSOff
	c, err := Start(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop() })
	return c
}

// lockedBuffer collects a logger's output from many goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (c *client) createToken(body string) (int, CreateTokenResponse) {
	c.t.Helper()
	st, b := c.do("POST", "/v1/tokens", []byte(body))
	var r CreateTokenResponse
	if st == http.StatusCreated {
		if err := json.Unmarshal(b, &r); err != nil {
			c.t.Fatal(err)
		}
	}
	return st, r
}

// TestAdminRoles: over real HTTPS, a read-only token reads but cannot
// write (any method but GET/HEAD, DELETE included), a proxy join token
// cannot use the admin API at all, a revoked token is refused, and a token
// in the query string is refused, valid header or not, and never logged.
func TestAdminRoles(t *testing.T) {
	logs := &lockedBuffer{}
	c := startControlWith(t, Options{DataDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	cl := newClient(t, c)
	if st, a := cl.apply(false, file{"svc.yaml", serviceYAML}); st != http.StatusOK {
		t.Fatalf("apply: %d %+v", st, a)
	}
	st, ro := cl.createToken(`{"role":"read-only"}`)
	if st != http.StatusCreated || ro.Token.Role != RoleReadOnly {
		t.Fatalf("create read-only token: %d %+v", st, ro)
	}
	_, px := cl.createToken(`{"serviceAccount":"web","ttl":"1h","uses":1}`)
	_, revoked := cl.createToken(`{"role":"admin"}`)
	if st, b := cl.do("DELETE", "/v1/tokens/"+revoked.Token.ID, nil); st != http.StatusOK {
		t.Fatalf("revoke: %d %s", st, b)
	}

	for _, path := range []string{"/v1/resources/services", "/v1/resources/service/default/inventory", "/v1/proxies", "/v1/tokens", "/v1/audit"} {
		if st, b := cl.doToken("GET", path, nil, ro.Secret); st != http.StatusOK {
			t.Errorf("read-only GET %s: %d %s", path, st, b)
		}
	}
	// The authorization check is a POST that only asks.
	if st, b := cl.doToken("POST", "/v1/authz/check", []byte(`{"from":"spiffe://trellis.local/ns/default/sa/web","to":"inventory.default"}`), ro.Secret); st != http.StatusOK {
		t.Errorf("read-only POST /v1/authz/check: %d %s", st, b)
	}
	rev := revision(t, c)
	for _, w := range []struct{ method, path, body string }{
		{"POST", "/v1/apply", string(applyBody(false, file{"r.yaml", routeYAML("r", 50)}))},
		{"DELETE", "/v1/resources/service/default/inventory", ""},
		{"POST", "/v1/tokens", `{"role":"admin"}`},
		{"DELETE", "/v1/tokens/" + px.Token.ID, ""},
		{"PUT", "/v1/resources/service/default/inventory", "{}"},
	} {
		var body []byte
		if w.body != "" {
			body = []byte(w.body)
		}
		if st, b := cl.doToken(w.method, w.path, body, ro.Secret); st != http.StatusForbidden || !strings.Contains(string(b), "read-only") {
			t.Errorf("read-only %s %s: %d %s, want 403 naming read-only", w.method, w.path, st, b)
		}
	}
	if got := revision(t, c); got != rev {
		t.Fatalf("read-only writes moved the store from %d to %d", rev, got)
	}

	for _, path := range []string{"/v1/proxies", "/v1/resources/services"} {
		if st, b := cl.doToken("GET", path, nil, px.Secret); st != http.StatusForbidden || !strings.Contains(string(b), "proxy join token") {
			t.Errorf("proxy token GET %s: %d %s, want 403", path, st, b)
		}
	}
	if st, b := cl.doToken("GET", "/v1/proxies", nil, revoked.Secret); st != http.StatusUnauthorized || !strings.Contains(string(b), "revoked") {
		t.Errorf("revoked admin token: %d %s, want 401 revoked", st, b)
	}

	for _, q := range []string{"?token=" + cl.token, "?access_token=" + ro.Secret, "?x=" + ro.Secret, "?namespace=" + cl.token} {
		if st, b := cl.do("GET", "/v1/resources/services"+q, nil); st != http.StatusBadRequest || !strings.Contains(string(b), "query string") {
			t.Errorf("token in the query string %s...: %d %s, want 400", q[:8], st, b)
		}
		if st, _ := cl.doToken("GET", "/v1/resources/services"+q, nil, ""); st != http.StatusBadRequest {
			t.Errorf("token in the query string, no header: %d, want 400", st)
		}
	}
	for _, secret := range []string{cl.token, ro.Secret, px.Secret, revoked.Secret} {
		if strings.Contains(logs.String(), secret) || strings.Contains(logs.String(), secret[len(secret)-64:]) {
			t.Fatalf("a token secret is in the control plane's log")
		}
	}
}

// TestAdminDeleteNeedsToken: the DELETE routes check the token as every
// other method does (a check skipped for DELETE would pass every other
// test); the resource and the token survive.
func TestAdminDeleteNeedsToken(t *testing.T) {
	c := startControl(t, t.TempDir())
	cl := newClient(t, c)
	if st, a := cl.apply(false, file{"svc.yaml", serviceYAML}); st != http.StatusOK {
		t.Fatalf("apply: %d %+v", st, a)
	}
	_, tok := cl.createToken(`{"role":"admin"}`)
	// The stored token with its last hex digit changed (to one it is not).
	flipped := tok.Secret[:len(tok.Secret)-1] + map[bool]string{true: "1", false: "0"}[strings.HasSuffix(tok.Secret, "0")]
	for _, bad := range []string{"", strings.Repeat("0", 64), cl.token[:10], flipped} {
		if st, b := cl.doToken("DELETE", "/v1/resources/service/default/inventory", nil, bad); st != http.StatusUnauthorized {
			t.Errorf("DELETE resource with token %q: %d %s, want 401", bad, st, b)
		}
		if st, b := cl.doToken("DELETE", "/v1/tokens/"+tok.Token.ID, nil, bad); st != http.StatusUnauthorized {
			t.Errorf("DELETE token with token %q: %d %s, want 401", bad, st, b)
		}
	}
	if st, _ := cl.do("GET", "/v1/resources/service/default/inventory", nil); st != http.StatusOK {
		t.Fatalf("the Service is gone after refused DELETEs: %d", st)
	}
	if st, _ := cl.doToken("GET", "/v1/proxies", nil, tok.Secret); st != http.StatusOK {
		t.Fatalf("the token was revoked by refused DELETEs: %d", st)
	}
}

// TestAuditLog: every change through the admin API is audited with who,
// what and its revision; nothing deletes or rewrites an entry.
func TestAuditLog(t *testing.T) {
	c := startControl(t, t.TempDir())
	cl := newClient(t, c)
	_, a := cl.apply(false, file{"svc.yaml", serviceYAML})
	_, unchanged := cl.apply(false, file{"svc.yaml", serviceYAML})
	_, dry := cl.apply(true, file{"r.yaml", routeYAML("r", 50)})
	_, tok := cl.createToken(`{"role":"admin"}`)
	// A change by the new token is audited under its id.
	if st, b := cl.doToken("DELETE", "/v1/resources/service/default/inventory", nil, tok.Secret); st != http.StatusOK {
		t.Fatalf("delete: %d %s", st, b)
	}
	delRev := revision(t, c)
	cl.do("DELETE", "/v1/tokens/"+tok.Token.ID, nil)

	entries := auditEntries(t, cl)
	var got []string
	for _, e := range entries {
		got = append(got, e.Who+" "+e.Action+" "+e.Target)
	}
	want := []string{
		"admin-token apply put Service/default/inventory",
		"admin-token token.create " + tok.Token.ID,
		"token:" + tok.Token.ID + " delete delete Service/default/inventory",
		"admin-token token.revoke " + tok.Token.ID,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("audit log (unchanged re-apply %d and dry run %d must not appear):\n%s\nwant:\n%s", unchanged.Revision, dry.Revision, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if entries[0].Revision != a.Revision || entries[2].Revision != delRev {
		t.Fatalf("revisions %d, %d; want the changes' %d, %d", entries[0].Revision, entries[2].Revision, a.Revision, delRev)
	}
	if time.Since(entries[0].Time) > time.Minute {
		t.Fatalf("entry time %s", entries[0].Time)
	}

	for _, m := range []string{"DELETE", "PUT", "POST", "PATCH"} {
		if st, _ := cl.do(m, "/v1/audit", []byte("[]")); st < 400 {
			t.Errorf("%s /v1/audit: %d, want refused", m, st)
		}
	}
	if again := auditEntries(t, cl); len(again) != len(entries) {
		t.Fatalf("audit log changed from %d to %d entries", len(entries), len(again))
	}
	// The store itself refuses to overwrite an entry: each is created absent-only.
	op, err := entries[0].op()
	if err != nil || op.ExpectRevision != 0 {
		t.Fatalf("audit op expects revision %d (err %v), want absent", op.ExpectRevision, err)
	}
}

func auditEntries(t *testing.T, cl *client) []AuditEntry {
	t.Helper()
	st, b := cl.do("GET", "/v1/audit", nil)
	if st != http.StatusOK {
		t.Fatalf("audit: %d %s", st, b)
	}
	var entries []AuditEntry
	if err := json.Unmarshal(b, &entries); err != nil {
		t.Fatal(err)
	}
	return entries
}

// FuzzCredentialInURL: whatever the query, a credential parameter or a
// Trellis token anywhere in it is always caught, and nothing panics.
func FuzzCredentialInURL(f *testing.F) {
	f.Add("namespace=default", "token")
	f.Add("a=1&b=%zz", "access_token")
	f.Add("wait=30s&minRevision=3", "x")
	a := &admin{adminDeps: adminDeps{token: strings.Repeat("ab", 32)}}
	f.Fuzz(func(t *testing.T, query, key string) {
		u := &url.URL{RawQuery: query}
		a.credentialInURL(u)
		withSecret := &url.URL{RawQuery: query + "&x=" + tokenSecretPrefix + "0123456789abcdef." + strings.Repeat("0", 64)}
		if !a.credentialInURL(withSecret) {
			t.Fatalf("a token in %q not caught", withSecret.RawQuery)
		}
		withAdmin := &url.URL{RawQuery: query + "&" + url.QueryEscape(key) + "=" + a.token}
		if !a.credentialInURL(withAdmin) {
			t.Fatalf("the admin token in %q not caught", withAdmin.RawQuery)
		}
	})
}

// BenchmarkAdminAuth is the cost an admin API request pays to be
// authenticated: the data dir's admin-token (a constant-time compare) or a
// stored token (a store read and a SHA-256).
func BenchmarkAdminAuth(b *testing.B) {
	c := startControlWith(b, Options{DataDir: b.TempDir()})
	_, secret, err := c.tokens.Create(context.Background(), TokenSpec{Role: RoleReadOnly}, "bench")
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct{ name, token string }{{"admin-token", c.admin.token}, {"stored", secret}} {
		b.Run(bc.name, func(b *testing.B) {
			req, _ := http.NewRequest("GET", "/v1/proxies", nil)
			req.Header.Set("Authorization", "Bearer "+bc.token)
			b.ReportAllocs()
			for b.Loop() {
				if _, st, _ := c.admin.identify(req); st != 0 {
					b.Fatal(st)
				}
			}
		})
	}
}
