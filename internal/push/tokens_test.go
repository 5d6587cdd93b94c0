package push

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/testpki"
)

func csrNaming(t *testing.T, uris ...string) []byte {
	t.Helper()
	var us []*url.URL
	for _, u := range uris {
		p, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		us = append(us, p)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: us}, testpki.NewKey(t))
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestCertifyRefusesCSRForAnotherIdentity: the CSR's URI SAN must be the
// identity asked for (the CA would name only that, but a CSR asking for
// someone else is refused and counted, not quietly corrected).
func TestCertifyRefusesCSRForAnotherIdentity(t *testing.T) {
	ca := newTestCA(t)
	ref := &countingRefusals{}
	e := startEnv(t, ca, "127.0.0.1:0", func(o *ServerOptions) { o.Refusals = ref })
	mesh, _ := e.dial(t, nil).current()
	for _, tt := range []struct {
		name string
		csr  []byte
		want string
	}{
		{"other sa", csrNaming(t, spiffe("default", "payments")), "does not match the requested identity"},
		{"control plane", csrNaming(t, "spiffe://trellis.local/ns/trellis-system/sa/control"), "does not match"},
		{"two SANs", csrNaming(t, spiffe("default", "orders"), spiffe("default", "orders")), "2 URI SANs"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := mesh.Certify(context.Background(), &meshv1.CertifyRequest{Token: "s3cret", Csr: tt.csr, Namespace: "default", ServiceAccount: "orders"})
			if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want PermissionDenied containing %q", err, tt.want)
			}
		})
	}
	if _, err := mesh.Certify(context.Background(), &meshv1.CertifyRequest{Token: "s3cret", Csr: csrNaming(t, spiffe("default", "orders")), Namespace: "default", ServiceAccount: "orders"}); err != nil {
		t.Fatalf("CSR naming its own identity: %v", err)
	}
	if got := ref.count("certify", ReasonCSRIdentity); got != 3 {
		t.Fatalf("counted %d CSR refusals, want 3", got)
	}
}

// TestCertifyWithholdsUnrecordedCertificate: when the token cannot be spent
// (a concurrent use won, or the store failed), no certificate is returned.
func TestCertifyWithholdsUnrecordedCertificate(t *testing.T) {
	ca := newTestCA(t)
	toks := &fakeTokens{tok: JoinToken{ID: "t1", Namespace: "default", ServiceAccount: "orders"}, redeemErr: ErrTokenExhausted}
	e := startEnv(t, ca, "127.0.0.1:0", func(o *ServerOptions) { o.Tokens = toks })
	mesh, _ := e.dial(t, nil).current()
	resp, err := mesh.Certify(context.Background(), &meshv1.CertifyRequest{Token: "join", Csr: newCSR(t), Namespace: "default", ServiceAccount: "orders"})
	if status.Code(err) != codes.Unauthenticated || len(resp.GetCertChain()) != 0 {
		t.Fatalf("Certify with a token spent at redeem: %v, %d certs; want Unauthenticated and none", err, len(resp.GetCertChain()))
	}
	toks.redeemErr = errors.New("disk on fire")
	_, err = mesh.Certify(context.Background(), &meshv1.CertifyRequest{Token: "join", Csr: newCSR(t), Namespace: "default", ServiceAccount: "orders"})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("Certify with the store failing: %v, want Unavailable (retryable)", err)
	}
	toks.redeemErr = nil
	if _, err := mesh.Certify(context.Background(), &meshv1.CertifyRequest{Token: "join", Csr: newCSR(t), Namespace: "default", ServiceAccount: "orders"}); err != nil {
		t.Fatal(err)
	}
	if toks.redeemed[0].Serial == "" || toks.redeemed[0].By != "token:t1" {
		t.Fatalf("issuance recorded as %+v", toks.redeemed[0])
	}
}

type fakeTokens struct {
	mu        sync.Mutex
	tok       JoinToken
	redeemErr error
	redeemed  []Issuance
}

func (f *fakeTokens) Lookup(_ context.Context, secret string) (JoinToken, error) {
	if secret != "join" {
		return JoinToken{}, ErrTokenUnknown
	}
	return f.tok, nil
}

func (f *fakeTokens) Redeem(_ context.Context, id string, iss Issuance) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.redeemErr != nil {
		return f.redeemErr
	}
	f.redeemed = append(f.redeemed, iss)
	return nil
}

type countingRefusals struct {
	mu sync.Mutex
	n  map[[2]string]int
}

func (c *countingRefusals) Refused(rpc, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[[2]string]int{}
	}
	c.n[[2]string{rpc, reason}]++
}

func (c *countingRefusals) count(rpc, reason string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[[2]string{rpc, reason}]
}

type denyAccounts struct{}

func (denyAccounts) AllowEndpoint(_ context.Context, ep *meshv1.Endpoint, sa string) error {
	if ep.GetService() == sa {
		return nil
	}
	return ErrAccountNotAllowed
}

// TestRegisterRefusalsCounted: each refused Register is PERMISSION_DENIED
// and counted by reason.
func TestRegisterRefusalsCounted(t *testing.T) {
	ca := newTestCA(t)
	ref := &countingRefusals{}
	e := startEnv(t, ca, "127.0.0.1:0", func(o *ServerOptions) { o.Refusals, o.Accounts = ref, denyAccounts{} })
	mesh, _ := e.dial(t, ca.workloadCert(t, spiffe("default", "orders"), time.Time{})).current()
	for _, tt := range []struct {
		name, reason string
		ep           *meshv1.Endpoint
	}{
		{"other namespace", ReasonNamespace, &meshv1.Endpoint{Id: "a", Service: "orders", Namespace: "prod", Address: "127.0.0.1:1"}},
		{"other identity", ReasonIdentity, &meshv1.Endpoint{Id: "b", Service: "orders", Namespace: "default", Address: "127.0.0.1:1", Identity: spiffe("default", "payments")}},
		{"other service", ReasonServiceAccount, &meshv1.Endpoint{Id: "c", Service: "payments", Namespace: "default", Address: "127.0.0.1:1"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := mesh.Register(context.Background(), &meshv1.RegisterRequest{Endpoint: tt.ep})
			if status.Code(err) != codes.PermissionDenied {
				t.Fatalf("err = %v, want PermissionDenied", err)
			}
			if got := ref.count("register", tt.reason); got != 1 {
				t.Fatalf("counted %d refusals for %s, want 1", got, tt.reason)
			}
		})
	}
	if _, err := mesh.Register(context.Background(), &meshv1.RegisterRequest{Endpoint: &meshv1.Endpoint{Id: "d", Service: "orders", Namespace: "default", Address: "127.0.0.1:1"}}); err != nil {
		t.Fatalf("own endpoint: %v", err)
	}
}
