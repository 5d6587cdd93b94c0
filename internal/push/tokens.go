package push

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// Sentinel errors of join tokens; a Tokens implementation wraps them and
// Certify turns them into gRPC statuses.
var (
	// ErrTokenUnknown: no token matches the secret (never issued, or wrong).
	ErrTokenUnknown = errors.New("join token not recognised")
	// ErrTokenExpired: the token's TTL has passed.
	ErrTokenExpired = errors.New("join token expired")
	// ErrTokenRevoked: an operator revoked the token.
	ErrTokenRevoked = errors.New("join token revoked")
	// ErrTokenExhausted: every use of the token has been spent.
	ErrTokenExhausted = errors.New("join token has no uses left")
	// ErrTokenRole: the token is not a proxy join token (an admin API token).
	ErrTokenRole = errors.New("token is not a proxy join token")
	// ErrAccountNotAllowed: the caller's service account may not serve the
	// service it registers for. An Accounts implementation wraps it.
	ErrAccountNotAllowed = errors.New("service account not allowed for this service")
)

// JoinToken is what a valid proxy join token names: the one identity it
// may obtain certificates for.
type JoinToken struct {
	ID             string
	Namespace      string
	ServiceAccount string
}

// Issuance is one certificate Certify signed, for the audit log.
type Issuance struct {
	// By is who asked: "token:<id>", "cert:<serial>" (a renewal) or
	// "bootstrap-token" (the dev-mode shared token).
	By       string
	Identity string
	// Serial of the issued leaf, hex.
	Serial   string
	NotAfter time.Time
}

// Tokens is what Certify needs of the identity-bound join tokens.
type Tokens interface {
	// Lookup returns the token secret names if it is usable now; else an
	// error wrapping one of the ErrToken* sentinels.
	Lookup(ctx context.Context, secret string) (JoinToken, error)
	// Redeem spends one use of token id and records iss in the audit log,
	// atomically (compare-and-set: two concurrent redeems of a last use
	// cannot both succeed). It re-checks expiry and revocation.
	Redeem(ctx context.Context, id string, iss Issuance) error
}

// Auditor records issuances that spend no token (renewals, dev mode).
type Auditor interface {
	Issued(ctx context.Context, iss Issuance) error
}

// Accounts decides which service accounts may serve a service.
type Accounts interface {
	// AllowEndpoint returns nil if ep may run as service account sa (in
	// ep's namespace), else an error wrapping ErrAccountNotAllowed that
	// names the service and the accounts it declares.
	AllowEndpoint(ctx context.Context, ep *meshv1.Endpoint, sa string) error
}

// Refusals counts refused Certify and Register calls by a bounded reason.
type Refusals interface {
	Refused(rpc, reason string)
}

type nopRefusals struct{}

func (nopRefusals) Refused(string, string) {}

type nopAuditor struct{}

func (nopAuditor) Issued(context.Context, Issuance) error { return nil }

// Reasons of Refusals.Refused.
const (
	ReasonNoCredentials  = "no_credentials"
	ReasonTokenUnknown   = "token_unknown"
	ReasonTokenExpired   = "token_expired"
	ReasonTokenRevoked   = "token_revoked"
	ReasonTokenExhausted = "token_exhausted"
	ReasonTokenRole      = "token_role"
	ReasonTokenIdentity  = "token_identity"
	ReasonRenewIdentity  = "renew_identity"
	ReasonCSRIdentity    = "csr_identity"
	ReasonNamespace      = "namespace"
	ReasonIdentity       = "identity"
	ReasonServiceAccount = "service_account"
)

// tokenStatus maps a Tokens error to the status Certify answers and the
// reason it counts. Messages say what to do next and never echo the secret.
func tokenStatus(err error) (reason string, st error) {
	switch {
	case errors.Is(err, ErrTokenExpired):
		return ReasonTokenExpired, status.Error(codes.Unauthenticated, "join token expired: create a new one with 'trellis token create'")
	case errors.Is(err, ErrTokenRevoked):
		return ReasonTokenRevoked, status.Error(codes.Unauthenticated, "join token revoked: create a new one with 'trellis token create'")
	case errors.Is(err, ErrTokenExhausted):
		return ReasonTokenExhausted, status.Error(codes.Unauthenticated, "join token has no uses left: create a new one with 'trellis token create' (--uses N for more)")
	case errors.Is(err, ErrTokenRole):
		return ReasonTokenRole, status.Error(codes.PermissionDenied, "token is an admin API token, not a proxy join token: create one with 'trellis token create --service-account SA'")
	case errors.Is(err, ErrTokenUnknown):
		return ReasonTokenUnknown, status.Error(codes.Unauthenticated, "join token rejected: pass --token-file with a token from 'trellis token create --service-account SA'")
	default:
		return "", status.Errorf(codes.Unavailable, "push: certify: token store: %v", err)
	}
}

// grant is how a Certify caller proved itself.
type grant struct {
	renewal bool
	// token is the join token to redeem; empty for renewals and dev mode.
	token string
	by    string
}

// authorize decides whether the caller may obtain a certificate for id: a
// renewal with a current certificate for id, a join token naming id, or (dev
// mode only) the shared bootstrap token.
func (s *Server) authorize(ctx context.Context, req *meshv1.CertifyRequest, id spiffeid.ID) (grant, error) {
	p, perr := s.peerOf(ctx)
	switch {
	case perr == nil && p.id == id:
		return grant{renewal: true, by: "cert:" + p.serial}, nil
	case req.GetToken() != "":
		return s.authorizeToken(ctx, req.GetToken(), id)
	case perr == nil:
		s.refused("certify", ReasonRenewIdentity, "certify refused: a certificate may renew only its own identity", "caller", p.id.String(), "requested", id.String())
		return grant{}, status.Errorf(codes.PermissionDenied, "certificate for %s may not renew %s: request your own identity or use a join token", p.id, id)
	default:
		s.refused("certify", ReasonNoCredentials, "certify refused: no join token and no valid client certificate", "requested", id.String())
		return grant{}, status.Errorf(codes.Unauthenticated, "no join token and no valid client certificate (%v): pass --token-file with a token from 'trellis token create'", perr)
	}
}

func (s *Server) authorizeToken(ctx context.Context, secret string, id spiffeid.ID) (grant, error) {
	if s.o.ValidToken(secret) {
		// Dev mode (--insecure-bootstrap-token): the shared token names no
		// identity. The control plane warns about it at start.
		return grant{by: "bootstrap-token"}, nil
	}
	if s.o.Tokens == nil {
		s.refused("certify", ReasonTokenUnknown, "certify: join token refused", "identity", id.String())
		return grant{}, status.Error(codes.Unauthenticated, "join token rejected: pass --token-file with a token from 'trellis token create --service-account SA'")
	}
	tok, err := s.o.Tokens.Lookup(ctx, secret)
	if err != nil {
		reason, st := tokenStatus(err)
		if reason != "" {
			s.refused("certify", reason, "certify: join token refused", "identity", id.String())
		} else {
			s.log.Warn("certify: join token lookup failed", "identity", id.String(), "err", err)
		}
		return grant{}, st
	}
	if id != s.tokenID(tok) {
		s.refused("certify", ReasonTokenIdentity, "certify: join token for another identity", "token", tok.ID, "requested", id.String())
		return grant{}, status.Errorf(codes.PermissionDenied, "join token %s is for ns/%s/sa/%s, not %s: use a token created for this service account", tok.ID, tok.Namespace, tok.ServiceAccount, id)
	}
	return grant{token: tok.ID, by: "token:" + tok.ID}, nil
}

// tokenID is the SPIFFE ID a join token names ("" ID when its names are bad).
func (s *Server) tokenID(t JoinToken) spiffeid.ID {
	id, err := spiffeid.FromSegments(s.o.TrustDomain, "ns", t.Namespace, "sa", t.ServiceAccount)
	if err != nil {
		return spiffeid.ID{}
	}
	return id
}

// checkCSRNames refuses a CSR that asks for another identity: the CA names
// only id whatever the CSR says, but a CSR naming someone else is a caller
// trying something, and is refused rather than quietly corrected.
func checkCSRNames(csr *x509.CertificateRequest, id spiffeid.ID) error {
	for _, u := range csr.URIs {
		if u.String() != id.String() {
			return fmt.Errorf("csr: URI SAN %q does not match the requested identity %s", truncate(u.String(), 256), id)
		}
	}
	if len(csr.URIs) > 1 {
		return fmt.Errorf("csr: %d URI SANs; a workload CSR names one SPIFFE ID", len(csr.URIs))
	}
	return nil
}

// record spends the token (and audits) or, for renewals and dev mode,
// audits alone. A certificate whose issuance cannot be recorded is not
// handed out.
func (s *Server) record(ctx context.Context, g grant, iss Issuance) error {
	if g.token == "" {
		if err := s.o.Auditor.Issued(ctx, iss); err != nil {
			return status.Errorf(codes.Unavailable, "push: certify: audit: %v", err)
		}
		return nil
	}
	if err := s.o.Tokens.Redeem(ctx, g.token, iss); err != nil {
		reason, st := tokenStatus(err)
		if reason != "" {
			s.refused("certify", reason, "certify: join token refused at redemption", "identity", iss.Identity)
		}
		return st
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// allowAccount refuses an endpoint whose certificate's service account is
// not one the service declares (Accounts; no check when none is wired).
func (s *Server) allowAccount(ctx context.Context, ep *meshv1.Endpoint, p peerIdentity) error {
	if s.o.Accounts == nil {
		return nil
	}
	err := s.o.Accounts.AllowEndpoint(ctx, ep, p.sa)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrAccountNotAllowed):
		s.refused("register", ReasonServiceAccount, "register: service account not allowed", "identity", p.id.String(), "service", ep.GetService(), "namespace", ep.GetNamespace())
		return status.Errorf(codes.PermissionDenied, "%v (caller %s)", err, p.id)
	default:
		return status.Errorf(codes.Unavailable, "push: register: %v", err)
	}
}

// leafSerial is the serial of chain's leaf, hex ("" if it does not parse).
func leafSerial(chain [][]byte) string {
	if len(chain) == 0 {
		return ""
	}
	c, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return ""
	}
	return c.SerialNumber.Text(16)
}

// RefusalReasons lists every (rpc, reason) pair Refusals may see, so the
// counter's series exist from the start.
func RefusalReasons() [][2]string {
	var out [][2]string
	for _, r := range []string{ReasonNoCredentials, ReasonTokenUnknown, ReasonTokenExpired, ReasonTokenRevoked,
		ReasonTokenExhausted, ReasonTokenRole, ReasonTokenIdentity, ReasonRenewIdentity, ReasonCSRIdentity} {
		out = append(out, [2]string{"certify", r})
	}
	for _, r := range []string{ReasonNamespace, ReasonIdentity, ReasonServiceAccount} {
		out = append(out, [2]string{"register", r})
	}
	return out
}
