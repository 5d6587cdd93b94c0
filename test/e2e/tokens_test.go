package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

const tokenServices = `apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: payments}
spec: {ports: [{port: 80}]}
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80}]}
`

// createToken runs 'trellis token create' and returns the file holding the
// secret and the token id.
func (cp *controlPlane) createToken(t *testing.T, args ...string) (file, id string) {
	t.Helper()
	file = filepath.Join(t.TempDir(), "join.token")
	out, err := cp.cli(t, append([]string{"token", "create", "--file", file}, args...)...)
	if err != nil {
		t.Fatalf("token create %v: %v\n%s", args, err, out)
	}
	m := regexp.MustCompile(`token ([0-9a-f]{16}) created`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("token create printed no id:\n%s", out)
	}
	return file, m[1]
}

// refused starts a proxy that must exit non-zero, and returns its output.
func (cp *controlPlane) refused(t *testing.T, pc proxyConfig) string {
	t.Helper()
	pc.noWait = true
	s := cp.proxy(t, pc)
	if code := s.proc.wait(t, 20*time.Second); code == 0 {
		t.Fatalf("proxy %s joined; want it refused:\n%s", pc.service, s.proc.out.String())
	}
	return s.proc.out.String()
}

func controlMetrics(t *testing.T, cp *controlPlane) string {
	t.Helper()
	_, body, err := get(http.DefaultClient, "http://"+cp.metrics+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// TestRogueProxyCannotJoinAnotherService is issue 8's rogue proxy: it holds
// a valid join token for service account web. It cannot obtain payments'
// identity with it, nor register an endpoint for payments under web's, so
// clients of payments only ever reach the real payments.
func TestRogueProxyCannotJoinAnotherService(t *testing.T) {
	cp := startControl(t, "")
	cp.apply(t, tokenServices)
	cp.proxy(t, proxyConfig{service: "payments", app: appServer(t, "real", nil)})
	webToken, _ := cp.createToken(t, "--service-account", "web", "--uses", "5")

	out := cp.refused(t, proxyConfig{service: "payments", app: appServer(t, "rogue", nil), extra: []string{"--token-file", webToken}})
	if !strings.Contains(out, "is for ns/default/sa/web") {
		t.Fatalf("rogue asking for payments' identity: want the token's identity named:\n%s", out)
	}
	out = cp.refused(t, proxyConfig{service: "payments", app: appServer(t, "rogue", nil),
		extra: []string{"--token-file", webToken, "--service-account", "web"}})
	if !strings.Contains(out, "Service default/payments runs as service account(s) payments") {
		t.Fatalf("rogue registering for payments as web: want the Service's accounts named:\n%s", out)
	}
	out = cp.refused(t, proxyConfig{service: "web", app: appServer(t, "rogue", nil),
		extra: []string{"--token-file", webToken, "--namespace", "trellis-system", "--service-account", "control"}})
	if !strings.Contains(out, "is for ns/default/sa/web") {
		t.Fatalf("rogue asking for the control plane's identity:\n%s", out)
	}

	client := cp.proxy(t, proxyConfig{service: "web", upstreams: []string{"payments"}})
	getAll(t, client.client(), "http://payments/x", "real", "after the rogue tried")
	if n := client.endpointCount(t, "payments"); n != 1 {
		t.Fatalf("payments has %d endpoints, want only the real one", n)
	}
	m := controlMetrics(t, cp)
	for _, want := range []string{
		`trellis_control_security_refused_total{reason="token_identity",rpc="certify"} 2`,
		`trellis_control_security_refused_total{reason="service_account",rpc="register"} 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("control metrics lack %s", want)
		}
	}
}

// TestJoinTokenRevokedAndSpent: a revoked token and a spent single-use
// token join nothing; a single-use token joins one proxy, which then renews
// with its certificate.
func TestJoinTokenRevokedAndSpent(t *testing.T) {
	cp := startControl(t, "")
	cp.apply(t, tokenServices)
	once, onceID := cp.createToken(t, "--service-account", "web", "--ttl", "10m")
	cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "web", nil), extra: []string{"--token-file", once}})
	out := cp.refused(t, proxyConfig{service: "web", app: appServer(t, "web2", nil), extra: []string{"--token-file", once}})
	if !strings.Contains(out, "no uses left") {
		t.Fatalf("second proxy on a single-use token:\n%s", out)
	}

	revoked, id := cp.createToken(t, "--service-account", "web", "--uses", "0")
	if out, err := cp.cli(t, "token", "revoke", id); err != nil || !strings.Contains(out, "revoked") {
		t.Fatalf("token revoke: %v\n%s", err, out)
	}
	out = cp.refused(t, proxyConfig{service: "web", app: appServer(t, "web3", nil), extra: []string{"--token-file", revoked}})
	if !strings.Contains(out, "join token revoked") {
		t.Fatalf("proxy on a revoked token:\n%s", out)
	}

	list, err := cp.cli(t, "token", "list")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(onceID + `\s+proxy\s+ns/default/sa/web\s+0\s+.*spent`),
		regexp.MustCompile(id + `\s+proxy\s+ns/default/sa/web\s+unbounded\s+.*revoked`),
	} {
		if !want.MatchString(list) {
			t.Errorf("token list does not match %s:\n%s", want, list)
		}
	}
	m := controlMetrics(t, cp)
	for _, want := range []string{
		`trellis_control_security_refused_total{reason="token_exhausted",rpc="certify"} 1`,
		`trellis_control_security_refused_total{reason="token_revoked",rpc="certify"} 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("control metrics lack %s", want)
		}
	}
}

// adminHTTP is an HTTPS client trusting the control plane's CA.
func adminHTTP(t *testing.T, cp *controlPlane) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(must(os.ReadFile(filepath.Join(cp.dir, "ca.crt"))))
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS12}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func adminDo(t *testing.T, c *http.Client, cp *controlPlane, method, path, token, body string) (int, string) {
	t.Helper()
	req := must(http.NewRequest(method, "https://"+cp.admin+path, strings.NewReader(body)))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestAdminAPIRefusals on the real admin port: no token, a read-only token
// writing, a proxy token reading, a token in the query string.
func TestAdminAPIRefusals(t *testing.T) {
	cp := startControl(t, "")
	c := adminHTTP(t, cp)
	roFile, _ := cp.createToken(t, "--role", "read-only")
	pxFile, _ := cp.createToken(t, "--service-account", "web")
	ro := strings.TrimSpace(string(must(os.ReadFile(roFile))))
	px := strings.TrimSpace(string(must(os.ReadFile(pxFile))))
	admin := strings.TrimSpace(string(must(os.ReadFile(filepath.Join(cp.dir, "admin-token")))))
	apply := `{"files":[{"name":"s.yaml","content":"apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n"}]}`

	for _, tt := range []struct {
		name, method, path, token, body string
		want                            int
	}{
		{"no token", "GET", "/v1/resources/services", "", "", 401},
		{"no token, DELETE", "DELETE", "/v1/resources/service/default/web", "", "", 401},
		{"read-only reads", "GET", "/v1/resources/services", ro, "", 200},
		{"read-only applies", "POST", "/v1/apply", ro, apply, 403},
		{"read-only deletes", "DELETE", "/v1/resources/service/default/web", ro, "", 403},
		{"proxy token reads", "GET", "/v1/proxies", px, "", 403},
		{"admin token in the query", "GET", "/v1/resources/services?token=" + admin, "", "", 400},
		{"token in the query with a header", "GET", "/v1/resources/services?access_token=" + ro, admin, "", 400},
		{"admin applies", "POST", "/v1/apply", admin, apply, 200},
	} {
		if got, body := adminDo(t, c, cp, tt.method, tt.path, tt.token, tt.body); got != tt.want {
			t.Errorf("%s: %s %s: %d %s, want %d", tt.name, tt.method, tt.path, got, body, tt.want)
		}
	}
	if strings.Contains(cp.proc.out.String(), admin) || strings.Contains(cp.proc.out.String(), ro) {
		t.Fatal("a token from the query string reached the control plane's log")
	}
}

// TestSecretsStayOut runs the control plane, a proxy and the CLI, captures
// every output (logs, CLI stdout and stderr, admin API bodies, the proxy's
// /config and /metrics, refused joins' errors) and finds no key material;
// key and token files are 0600 and directories 0700 on disk.
func TestSecretsStayOut(t *testing.T) {
	cp := startControl(t, "")
	cp.apply(t, tokenServices)
	join, _ := cp.createToken(t, "--service-account", "web", "--uses", "1")
	joinSecret := strings.TrimSpace(string(must(os.ReadFile(join))))
	s := cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "web", nil), extra: []string{"--token-file", join}})
	// A refused join with the spent token, and one with a wrong secret.
	refusedOut := cp.refused(t, proxyConfig{service: "web", extra: []string{"--token-file", join}})
	wrong := filepath.Join(t.TempDir(), "wrong.token")
	wrongSecret := joinSecret[:len(joinSecret)-8] + "00000000"
	if wrongSecret == joinSecret {
		wrongSecret = joinSecret[:len(joinSecret)-8] + "11111111"
	}
	os.WriteFile(wrong, []byte(wrongSecret+"\n"), 0o600)
	refusedOut += cp.refused(t, proxyConfig{service: "web", extra: []string{"--token-file", wrong}})

	var outputs strings.Builder
	for _, args := range [][]string{
		{"get", "services", "-o", "yaml"}, {"get", "services", "-o", "json"}, {"token", "list", "-o", "json"}, {"token", "list"},
		{"audit"}, {"audit", "-o", "json"}, {"proxy-status", "-o", "json"}, {"check"}, {"token", "revoke", "0123456789abcdef"},
	} {
		out, _ := cp.cli(t, args...)
		outputs.WriteString(out)
	}
	c := adminHTTP(t, cp)
	admin := strings.TrimSpace(string(must(os.ReadFile(filepath.Join(cp.dir, "admin-token")))))
	for _, p := range []string{"/v1/tokens", "/v1/audit", "/v1/endpoints", "/v1/proxies", "/v1/resources/services", "/v1/nope"} {
		_, body := adminDo(t, c, cp, "GET", p, admin, "")
		outputs.WriteString(body)
	}
	for _, p := range []string{"/config", "/metrics"} {
		_, body, err := get(http.DefaultClient, "http://"+s.admin+p)
		if err != nil {
			t.Fatal(err)
		}
		outputs.WriteString(body)
	}
	outputs.WriteString(cp.proc.out.String())
	outputs.WriteString(s.proc.out.String())
	outputs.WriteString(refusedOut)
	all := outputs.String()
	if !strings.Contains(all, "token.create") || !strings.Contains(all, `"services"`) {
		t.Fatalf("the captured outputs look empty:\n%s", tail(all, 40))
	}
	for name, secret := range map[string]string{
		"PEM private key":      "PRIVATE KEY",
		"join token":           joinSecret,
		"join token's secret":  joinSecret[len(joinSecret)-64:],
		"wrong token's secret": wrongSecret[len(wrongSecret)-64:],
		"admin token":          admin,
	} {
		if i := strings.Index(all, secret); i >= 0 {
			t.Errorf("%s found in the outputs: …%s…", name, all[max(0, i-200):min(len(all), i+len(secret)+50)])
		}
	}

	// On disk: directories 0700, key material and tokens 0600.
	for _, f := range []string{join} {
		if m := must(os.Stat(f)).Mode().Perm(); m != 0o600 {
			t.Errorf("%s: mode %o, want 600", f, m)
		}
	}
	filepath.WalkDir(cp.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		mode := must(d.Info()).Mode().Perm()
		name := d.Name()
		switch {
		case d.IsDir() && mode != 0o700:
			t.Errorf("%s: directory mode %o, want 700", path, mode)
		case !d.IsDir() && name != "ca.crt" && name != "control.json" && mode != 0o600:
			t.Errorf("%s: mode %o, want 600 (store and tokens hold key material)", path, mode)
		}
		return nil
	})
}

// TestDevModeLabelled: with --insecure-bootstrap-token the shared token
// joins any identity (the demo's convenience), the log warns and 'trellis
// check' flags it; without it, no bootstrap-token file exists.
func TestDevModeLabelled(t *testing.T) {
	cp := startControl(t, "", "--insecure-bootstrap-token")
	boot := filepath.Join(cp.dir, "bootstrap-token")
	cp.proxy(t, proxyConfig{service: "anything", app: appServer(t, "a", nil), extra: []string{"--token-file", boot}})
	if !strings.Contains(cp.proc.out.String(), "INSECURE DEV MODE") {
		t.Fatal("dev mode started without a warning in the log")
	}
	out, err := cp.cli(t, "check")
	if !strings.Contains(out, "! INSECURE DEV MODE") {
		t.Fatalf("trellis check does not flag dev mode (err %v):\n%s", err, out)
	}

	prod := startControl(t, "")
	if _, err := os.Stat(filepath.Join(prod.dir, "bootstrap-token")); err == nil {
		t.Fatal("bootstrap-token written without --insecure-bootstrap-token")
	}
	out, _ = prod.cli(t, "check")
	if strings.Contains(out, "INSECURE") || !strings.Contains(out, "identity-bound tokens") {
		t.Fatalf("trellis check on a production control plane:\n%s", out)
	}
}

// TestAuditCommand: trellis audit lists, human and -o json, the apply (at
// its revision), the token's creation and the certificate it bought.
func TestAuditCommand(t *testing.T) {
	cp := startControl(t, "")
	cp.apply(t, tokenServices)
	join, id := cp.createToken(t, "--service-account", "web")
	cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "web", nil), extra: []string{"--token-file", join}})
	out, err := cp.cli(t, "audit", "-o", "json")
	if err != nil {
		t.Fatalf("audit: %v\n%s", err, out)
	}
	var entries []struct {
		Who, Action, Target, Detail string
		Revision                    int64
	}
	if err := json.Unmarshal([]byte(out), &entries); err != nil {
		t.Fatalf("audit -o json: %v\n%s", err, out)
	}
	var got []string
	for _, e := range entries {
		if e.Revision <= 0 {
			t.Errorf("entry without a revision: %+v", e)
		}
		got = append(got, e.Who+" "+e.Action+" "+e.Target)
	}
	want := []string{
		"admin-token apply put Service/default/payments, put Service/default/web",
		"admin-token token.create " + id,
		"token:" + id + " ca.issue spiffe://trellis.local/ns/default/sa/web",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("audit:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	human, err := cp.cli(t, "audit")
	if err != nil || !regexp.MustCompile(`(?m)^REVISION\s+TIME\s+WHO\s+ACTION`).MatchString(human) || !strings.Contains(human, "serial=") {
		t.Fatalf("trellis audit (%v):\n%s", err, human)
	}
}

// TestCLIWithReadOnlyToken: the CLI presents the token in
// $TRELLIS_ADMIN_TOKEN_FILE; with a read-only one, get works and apply is
// refused naming the role.
func TestCLIWithReadOnlyToken(t *testing.T) {
	cp := startControl(t, "")
	cp.apply(t, tokenServices)
	ro, _ := cp.createToken(t, "--role", "read-only")
	run := func(args ...string) (string, error) {
		cmd := exec.Command(trellisBin, append([]string{"--data-dir", cp.dir}, args...)...)
		cmd.Env = append(os.Environ(), "TRELLIS_ADMIN_TOKEN_FILE="+ro)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := run("get", "services"); err != nil || !strings.Contains(out, "payments") {
		t.Fatalf("get with a read-only token: %v\n%s", err, out)
	}
	f := filepath.Join(t.TempDir(), "s.yaml")
	os.WriteFile(f, []byte(strings.ReplaceAll(tokenServices, "payments", "billing")), 0o600)
	if out, err := run("apply", "-f", f); err == nil || !strings.Contains(out, "read-only token") {
		t.Fatalf("apply with a read-only token: %v\n%s", err, out)
	}
}
