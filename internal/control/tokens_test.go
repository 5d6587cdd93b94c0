package control

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/identity"
	"trellis.dev/trellis/internal/push"
	"trellis.dev/trellis/internal/store"
)

func TestTokenSpecValidate(t *testing.T) {
	for _, tt := range []struct {
		name string
		spec TokenSpec
		want string // error substring; "" = valid
	}{
		{"proxy ok", TokenSpec{ServiceAccount: "web", TTL: time.Hour, Uses: 1}, ""},
		{"proxy no sa", TokenSpec{TTL: time.Hour}, "serviceAccount: required"},
		{"proxy bad sa", TokenSpec{ServiceAccount: "Web/x", TTL: time.Hour}, "serviceAccount:"},
		{"proxy bad ns", TokenSpec{ServiceAccount: "web", Namespace: "A_B", TTL: time.Hour}, "namespace:"},
		{"proxy no ttl", TokenSpec{ServiceAccount: "web"}, "ttl:"},
		{"proxy ttl too long", TokenSpec{ServiceAccount: "web", TTL: 2 * MaxTokenTTL}, "exceeds the maximum"},
		{"proxy negative uses", TokenSpec{ServiceAccount: "web", TTL: time.Hour, Uses: -1}, "uses:"},
		{"admin ok", TokenSpec{Role: RoleAdmin}, ""},
		{"read-only with sa", TokenSpec{Role: RoleReadOnly, ServiceAccount: "web"}, "only proxy tokens name an identity"},
		{"admin with uses", TokenSpec{Role: RoleAdmin, Uses: 2}, "only proxy tokens have uses"},
		{"unknown role", TokenSpec{Role: "root"}, `role: "root"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.spec.Validate()
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("Validate() = %v, want %q", err, tt.want)
			}
		})
	}
}

// newTokenStore is a token store on a real bbolt store, with a settable clock.
func newTokenStore(t *testing.T) (*tokenStore, store.Store, *time.Time) {
	t.Helper()
	st, err := store.NewBolt(t.TempDir()+"/s.db", store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	return &tokenStore{st: st, now: func() time.Time { return now }}, st, &now
}

func TestTokenStoredHashedOnly(t *testing.T) {
	ts, st, _ := newTokenStore(t)
	tok, secret, err := ts.Create(context.Background(), TokenSpec{ServiceAccount: "web", TTL: time.Hour, Uses: 1}, "admin-token")
	if err != nil {
		t.Fatal(err)
	}
	_, raw, ok := parseSecret(secret)
	if !ok {
		t.Fatalf("secret %q does not parse", secret)
	}
	kvs, _, err := st.List(context.Background(), "/")
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(raw))
	var found bool
	for _, kv := range kvs {
		if strings.Contains(string(kv.Value), raw) {
			t.Errorf("%s holds the secret: %s", kv.Key, kv.Value)
		}
		if kv.Key == TokenPrefix+tok.ID {
			var rec tokenRecord
			if err := json.Unmarshal(kv.Value, &rec); err != nil {
				t.Fatal(err)
			}
			found = rec.Hash == hex.EncodeToString(sum[:])
		}
	}
	if !found {
		t.Fatal("token record with the secret's SHA-256 not stored")
	}
	list, err := ts.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(list)
	if strings.Contains(string(b), raw) || strings.Contains(string(b), hex.EncodeToString(sum[:])) {
		t.Fatalf("list shows the secret or its hash: %s", b)
	}
}

func TestTokenLookupRefuses(t *testing.T) {
	ts, _, now := newTokenStore(t)
	ctx := context.Background()
	mk := func(spec TokenSpec) (Token, string) {
		tok, secret, err := ts.Create(ctx, spec, "test")
		if err != nil {
			t.Fatal(err)
		}
		return tok, secret
	}
	_, good := mk(TokenSpec{ServiceAccount: "web", TTL: time.Hour, Uses: 1})
	_, short := mk(TokenSpec{ServiceAccount: "web", TTL: time.Minute})
	revoked, revokedSecret := mk(TokenSpec{ServiceAccount: "web", TTL: time.Hour})
	if _, err := ts.Revoke(ctx, revoked.ID, "test"); err != nil {
		t.Fatal(err)
	}
	_, admin := mk(TokenSpec{Role: RoleAdmin})
	spent, spentSecret := mk(TokenSpec{ServiceAccount: "web", TTL: time.Hour, Uses: 1})
	if err := ts.Redeem(ctx, spent.ID, push.Issuance{By: "token:" + spent.ID}); err != nil {
		t.Fatal(err)
	}
	*now = now.Add(2 * time.Minute)

	id, _, _ := parseSecret(good)
	wrong := tokenSecretPrefix + id + "." + strings.Repeat("0", 64)
	for _, tt := range []struct {
		name, secret string
		want         error
	}{
		{"expired", short, push.ErrTokenExpired},
		{"revoked", revokedSecret, push.ErrTokenRevoked},
		{"spent", spentSecret, push.ErrTokenExhausted},
		{"admin token", admin, push.ErrTokenRole},
		{"right id, wrong secret", wrong, push.ErrTokenUnknown},
		{"garbage", "hello", push.ErrTokenUnknown},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ts.Lookup(ctx, tt.secret); !errors.Is(err, tt.want) {
				t.Fatalf("Lookup = %v, want %v", err, tt.want)
			}
		})
	}
	jt, err := ts.Lookup(ctx, good)
	if err != nil || jt.ServiceAccount != "web" || jt.Namespace != "default" {
		t.Fatalf("Lookup(good) = %+v, %v", jt, err)
	}
}

// TestRedeemSingleUseConcurrently: many redeems of a single-use token at
// once; exactly one wins, and exactly one issuance is audited.
func TestRedeemSingleUseConcurrently(t *testing.T) {
	ts, st, _ := newTokenStore(t)
	ctx := context.Background()
	tok, _, err := ts.Create(ctx, TokenSpec{ServiceAccount: "web", TTL: time.Hour, Uses: 1}, "test")
	if err != nil {
		t.Fatal(err)
	}
	const n = 16
	var wg sync.WaitGroup
	errs := make([]error, n)
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			errs[i] = ts.Redeem(ctx, tok.ID, push.Issuance{By: "token:" + tok.ID, Identity: "spiffe://trellis.local/ns/default/sa/web"})
		})
	}
	close(start)
	wg.Wait()
	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, push.ErrTokenExhausted):
			t.Errorf("a losing redeem failed with %v, want ErrTokenExhausted", err)
		}
	}
	if won != 1 {
		t.Fatalf("%d redeems of a single-use token succeeded, want 1", won)
	}
	entries, err := readAudit(ctx, st, 0)
	if err != nil {
		t.Fatal(err)
	}
	issued := 0
	for _, e := range entries {
		if e.Action == "ca.issue" {
			issued++
		}
	}
	if issued != 1 {
		t.Fatalf("%d issuances audited, want 1: %+v", issued, entries)
	}
}

func FuzzParseSecret(f *testing.F) {
	f.Add("trellis-0123456789abcdef." + strings.Repeat("ab", 32))
	f.Add("trellis-.")
	f.Add("trellis-0123456789abcdef.")
	f.Add(strings.Repeat("f", 64))
	f.Fuzz(func(t *testing.T, s string) {
		id, secret, ok := parseSecret(s)
		if !ok {
			return
		}
		if len(id) != 16 || len(secret) != 64 || !isHex(id) || !isHex(secret) {
			t.Fatalf("parseSecret(%q) accepted id %q secret %q", s, id, secret)
		}
		if tokenSecretPrefix+id+"."+secret != s {
			t.Fatalf("parseSecret(%q) does not round-trip", s)
		}
	})
}

// meshClient dials c's gRPC port as a proxy would, presenting cert (nil:
// none, as at bootstrap).
func meshClient(t *testing.T, c *Control, cert *tls.Certificate) meshv1.MeshClient {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(readFile(t, c.o.DataDir, CAFile)))
	cfg := &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS13,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if cert != nil {
				return cert, nil
			}
			return &tls.Certificate{}, nil
		}}
	addr, _ := c.Addrs()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return meshv1.NewMeshClient(conn)
}

// certify asks c for ns/sa's certificate with token and returns it with
// its key, or the error.
func certify(t *testing.T, mc meshv1.MeshClient, token, ns, sa string) (*tls.Certificate, error) {
	t.Helper()
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	id, err := identity.WorkloadID("trellis.local", ns, sa)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := identity.NewCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := mc.Certify(context.Background(), &meshv1.CertifyRequest{Token: token, Csr: csr, Namespace: ns, ServiceAccount: sa})
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: resp.CertChain, PrivateKey: key}, nil
}

func wantCode(t *testing.T, what string, err error, code codes.Code, msg string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), msg) {
		t.Fatalf("%s: %v, want %v containing %q", what, err, code, msg)
	}
}

// TestCertifyWithJoinTokens: over the real gRPC port, a join token buys
// its own identity only, once per use; revoked and spent tokens and the
// dev-mode bootstrap token outside dev mode are refused; renewal needs the
// current certificate; every issuance is audited with who asked.
func TestCertifyWithJoinTokens(t *testing.T) {
	c := startControl(t, t.TempDir())
	ctx := context.Background()
	mk := func(spec TokenSpec) (Token, string) {
		tok, secret, err := c.tokens.Create(ctx, spec, "test")
		if err != nil {
			t.Fatal(err)
		}
		return tok, secret
	}
	mc := meshClient(t, c, nil)

	webTok, web := mk(TokenSpec{ServiceAccount: "web", TTL: time.Hour, Uses: 1})
	_, err := certify(t, mc, web, "default", "payments")
	wantCode(t, "token for sa web asking for payments", err, codes.PermissionDenied, "is for ns/default/sa/web")
	_, err = certify(t, mc, web, "trellis-system", "control")
	wantCode(t, "token for sa web asking for the control plane", err, codes.PermissionDenied, "is for ns/default/sa/web")
	_, err = certify(t, mc, web, "prod", "web")
	wantCode(t, "token for default/web asking for prod/web", err, codes.PermissionDenied, "is for ns/default/sa/web")

	cert, err := certify(t, mc, web, "default", "web")
	if err != nil {
		t.Fatalf("join with the token: %v", err)
	}
	_, err = certify(t, mc, web, "default", "web")
	wantCode(t, "second use of a single-use token", err, codes.Unauthenticated, "no uses left")

	revTok, rev := mk(TokenSpec{ServiceAccount: "web", TTL: time.Hour})
	if _, err := c.tokens.Revoke(ctx, revTok.ID, "test"); err != nil {
		t.Fatal(err)
	}
	_, err = certify(t, mc, rev, "default", "web")
	wantCode(t, "revoked token", err, codes.Unauthenticated, "revoked")

	_, adminTok := mk(TokenSpec{Role: RoleAdmin})
	_, err = certify(t, mc, adminTok, "default", "web")
	wantCode(t, "admin API token", err, codes.PermissionDenied, "not a proxy join token")

	// Renewal: the current certificate renews its own identity only.
	cert.Leaf, _ = x509.ParseCertificate(cert.Certificate[0])
	renewer := meshClient(t, c, cert)
	if _, err := certify(t, renewer, "", "default", "web"); err != nil {
		t.Fatalf("renewal with the current certificate: %v", err)
	}
	_, err = certify(t, renewer, "", "default", "payments")
	wantCode(t, "renewal of another identity", err, codes.PermissionDenied, "may not renew")

	entries, err := readAudit(ctx, c.st, 0)
	if err != nil {
		t.Fatal(err)
	}
	var issued []string
	for _, e := range entries {
		if e.Action == "ca.issue" {
			issued = append(issued, e.Who+" "+e.Target)
			if !strings.Contains(e.Detail, "serial=") || !strings.Contains(e.Detail, "notAfter=") {
				t.Errorf("issuance entry without serial and expiry: %+v", e)
			}
		}
	}
	want := []string{
		"token:" + webTok.ID + " spiffe://trellis.local/ns/default/sa/web",
		"cert:" + cert.Leaf.SerialNumber.Text(16) + " spiffe://trellis.local/ns/default/sa/web",
	}
	if strings.Join(issued, "\n") != strings.Join(want, "\n") {
		t.Fatalf("audited issuances:\n%s\nwant:\n%s", strings.Join(issued, "\n"), strings.Join(want, "\n"))
	}
}

// TestConcurrentCertifyWithSingleUseToken: two proxies racing with one
// single-use token over the real port; one certificate is issued.
func TestConcurrentCertifyWithSingleUseToken(t *testing.T) {
	c := startControl(t, t.TempDir())
	_, secret, err := c.tokens.Create(context.Background(), TokenSpec{ServiceAccount: "web", TTL: time.Hour, Uses: 1}, "test")
	if err != nil {
		t.Fatal(err)
	}
	const n = 8
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		mc := meshClient(t, c, nil)
		wg.Go(func() { _, errs[i] = certify(t, mc, secret, "default", "web") })
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		if err == nil {
			won++
		} else if status.Code(err) != codes.Unauthenticated {
			t.Errorf("loser: %v, want Unauthenticated", err)
		}
	}
	if won != 1 {
		t.Fatalf("%d of %d concurrent Certify calls with a single-use token succeeded, want 1", won, n)
	}
}

// TestBootstrapTokenOnlyInDevMode: outside dev mode a bootstrap-token file
// (left from a dev run) buys nothing; in dev mode it buys any identity.
func TestBootstrapTokenOnlyInDevMode(t *testing.T) {
	dir := t.TempDir()
	dev := startControlWith(t, Options{DataDir: dir, InsecureBootstrapToken: true})
	boot := strings.TrimSpace(readFile(t, dir, BootstrapTokenFile))
	if got := mode(t, dir+"/"+BootstrapTokenFile); got != 0o600 {
		t.Errorf("bootstrap-token mode %o, want 600", got)
	}
	if _, err := certify(t, meshClient(t, dev, nil), boot, "default", "anything"); err != nil {
		t.Fatalf("dev mode: %v", err)
	}
	if err := dev.Stop(); err != nil {
		t.Fatal(err)
	}
	prod := startControlWith(t, Options{DataDir: dir})
	_, err := certify(t, meshClient(t, prod, nil), boot, "default", "anything")
	wantCode(t, "bootstrap token outside dev mode", err, codes.Unauthenticated, "join token rejected")
}

// TestRegisterBoundToServiceAccounts: the rogue proxy of issue 8 holds a
// valid token (and certificate) for sa web; it cannot register an endpoint
// for payments, nor for a subset Service that picks payments' proxies; a
// Service that lists web in spec.serviceAccounts admits it.
func TestRegisterBoundToServiceAccounts(t *testing.T) {
	c := startControl(t, t.TempDir())
	cl := newClient(t, c)
	if st, a := cl.apply(false, file{"s.yaml", `apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: payments}
spec: {ports: [{port: 80}]}
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: shared}
spec:
  ports: [{port: 80}]
  serviceAccounts: [api, web]
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: tier}
spec:
  selector: {tier: backend}
  ports: [{port: 80}]
`}); st != 200 {
		t.Fatalf("apply: %d %+v", st, a)
	}
	_, secret, err := c.tokens.Create(context.Background(), TokenSpec{ServiceAccount: "web", TTL: time.Hour}, "test")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := certify(t, meshClient(t, c, nil), secret, "default", "web")
	if err != nil {
		t.Fatal(err)
	}
	mc := meshClient(t, c, cert)
	register := func(service string, labels map[string]string, ident string) error {
		_, err := mc.Register(context.Background(), &meshv1.RegisterRequest{Endpoint: &meshv1.Endpoint{
			Id: "rogue-" + service, Service: service, Namespace: "default", Address: "127.0.0.1:1",
			Labels: labels, Identity: ident, Healthy: true}})
		return err
	}
	wantCode(t, "web joins payments", register("payments", nil, ""), codes.PermissionDenied, "Service default/payments runs as service account(s) payments")
	wantCode(t, "web joins an undeclared service", register("billing", nil, ""), codes.PermissionDenied, "not \"web\"")
	wantCode(t, "web picked by tier's selector", register("web", map[string]string{"tier": "backend"}, ""), codes.PermissionDenied, "Service default/tier")
	wantCode(t, "identity field differs from the certificate", register("web", nil, "spiffe://trellis.local/ns/default/sa/payments"), codes.PermissionDenied, "endpoint.identity")
	if err := register("web", nil, ""); err != nil {
		t.Fatalf("web registers as itself: %v", err)
	}
	if err := register("shared", nil, ""); err != nil {
		t.Fatalf("web registers for a Service listing it: %v", err)
	}
	// A changed Service is read anew (decoded Services are cached): payments
	// now lists web, shared no longer does.
	if st, a := cl.apply(false, file{"s2.yaml", `apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: payments}
spec: {ports: [{port: 80}], serviceAccounts: [payments, web]}
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: shared}
spec: {ports: [{port: 80}], serviceAccounts: [api]}
`}); st != 200 {
		t.Fatalf("apply: %d %+v", st, a)
	}
	if err := register("payments", nil, ""); err != nil {
		t.Fatalf("web registers for payments once it lists web: %v", err)
	}
	wantCode(t, "web joins shared after it dropped web", register("shared", nil, ""), codes.PermissionDenied, "Service default/shared runs as service account(s) api")
	eps, err := c.reg.Endpoints(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, ep := range eps {
		if ep.GetService() == "billing" || ep.GetService() == "tier" {
			t.Errorf("refused endpoint registered: %v", ep)
		}
	}
}

// TestGRPCHandshakeTimeout: a client that connects to the gRPC port and
// never completes the TLS handshake is cut off after HandshakeTimeout, on
// a raw socket.
func TestGRPCHandshakeTimeout(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the handshake timeout")
	}
	c := startControl(t, t.TempDir())
	addr, _ := c.Addrs()
	for _, tt := range []struct {
		name string
		send []byte
	}{
		{"silent", nil},
		// The start of a TLS record header, then nothing.
		{"partial hello", []byte{0x16, 0x03, 0x01, 0x02}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := conn.Write(tt.send); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			conn.SetReadDeadline(start.Add(push.HandshakeTimeout + 5*time.Second))
			_, err = io.Copy(io.Discard, conn)
			took := time.Since(start)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("stalled handshake still open after %s", took.Round(time.Second))
			}
			if took > push.HandshakeTimeout+2*time.Second {
				t.Fatalf("stalled handshake closed after %s, want about %s", took.Round(time.Millisecond), push.HandshakeTimeout)
			}
		})
	}
}
