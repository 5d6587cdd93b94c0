package control

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"trellis.dev/trellis/internal/meshname"
	"trellis.dev/trellis/internal/push"
	"trellis.dev/trellis/internal/store"
)

// Token roles. A proxy token is a join token: it names one identity and
// buys certificates for it through Certify, never the admin API. Admin and
// read-only tokens are for the admin API (read-only: GET and HEAD only).
const (
	RoleProxy    = "proxy"
	RoleAdmin    = "admin"
	RoleReadOnly = "read-only"
)

// TokenPrefix is the store prefix of token records; tokenSecretPrefix opens
// every secret, so it reads as a Trellis token wherever it turns up (and
// secret scanners can match it).
const (
	TokenPrefix       = "/tokens/"
	tokenSecretPrefix = "trellis-"
	// MaxTokenTTL bounds a token's life; a longer-lived credential is a
	// certificate, which renews.
	MaxTokenTTL = 365 * 24 * time.Hour
	// redeemRetries bounds compare-and-set retries of one redeem.
	redeemRetries = 16
)

// Token is a token's record as listed: everything but the secret, which is
// shown once at create and stored only as its SHA-256.
type Token struct {
	ID             string `json:"id"`
	Role           string `json:"role"`
	Namespace      string `json:"namespace,omitempty"`
	ServiceAccount string `json:"serviceAccount,omitempty"`
	// MaxUses bounds certificates bought with a proxy token; 0: no bound.
	MaxUses int       `json:"maxUses"`
	Used    int       `json:"used"`
	Created time.Time `json:"created"`
	// Expires is when it stops working; zero: never (admin API tokens only).
	Expires   time.Time `json:"expires,omitzero"`
	Revoked   bool      `json:"revoked,omitempty"`
	RevokedAt time.Time `json:"revokedAt,omitzero"`
	// CreatedBy is who created it, as in the audit log.
	CreatedBy string `json:"createdBy"`
}

// UsesLeft is how many certificates the token still buys (-1: no bound).
func (t *Token) UsesLeft() int {
	if t.MaxUses == 0 {
		return -1
	}
	return max(t.MaxUses-t.Used, 0)
}

// tokenRecord is what the store holds. The hash is SHA-256 of the secret:
// the secret is 256 random bits, so nobody can search for a preimage and a
// slow password hash (bcrypt, argon2) would buy nothing but CPU on every
// Certify and admin request.
type tokenRecord struct {
	Token
	Hash string `json:"hash"`
}

// TokenSpec is what a new token is for.
type TokenSpec struct {
	Role           string
	Namespace      string
	ServiceAccount string
	TTL            time.Duration
	Uses           int
}

// Validate checks and completes spec (defaults: role proxy, namespace
// default, one use), naming the field at fault.
func (s *TokenSpec) Validate() error {
	if s.Role == "" {
		s.Role = RoleProxy
	}
	switch s.Role {
	case RoleProxy:
		if s.Namespace == "" {
			s.Namespace = "default"
		}
		if s.ServiceAccount == "" {
			return errors.New("serviceAccount: required for a proxy token (the identity it may join as)")
		}
		if err := meshname.CheckLabel(s.Namespace); err != nil {
			return fmt.Errorf("namespace: %w", err)
		}
		if err := meshname.CheckSubdomain(s.ServiceAccount); err != nil {
			return fmt.Errorf("serviceAccount: %w", err)
		}
		if s.TTL <= 0 {
			return errors.New("ttl: a proxy token needs a TTL above 0 (e.g. 1h)")
		}
		if s.Uses < 0 {
			return errors.New("uses: must be >= 0 (0: no bound)")
		}
	case RoleAdmin, RoleReadOnly:
		if s.Namespace != "" || s.ServiceAccount != "" {
			return fmt.Errorf("serviceAccount, namespace: only proxy tokens name an identity, not %s tokens", s.Role)
		}
		if s.Uses != 0 {
			return fmt.Errorf("uses: only proxy tokens have uses, not %s tokens", s.Role)
		}
		if s.TTL < 0 {
			return errors.New("ttl: must be >= 0 (0: no expiry)")
		}
	default:
		return fmt.Errorf("role: %q: want %s, %s or %s", truncate(s.Role, 64), RoleProxy, RoleAdmin, RoleReadOnly)
	}
	if s.TTL > MaxTokenTTL {
		return fmt.Errorf("ttl: %s exceeds the maximum %s", s.TTL, MaxTokenTTL)
	}
	return nil
}

// tokenStore keeps tokens (hashed) and the audit log in the store.
type tokenStore struct {
	st  tokenKV
	now func() time.Time
}

// tokenKV is the slice of the store tokens and the audit log use.
type tokenKV interface {
	Get(ctx context.Context, key string) (store.KV, error)
	List(ctx context.Context, prefix string) ([]store.KV, int64, error)
	Txn(ctx context.Context, ops ...store.Op) (int64, error)
}

// specError is a bad TokenSpec: the caller's fault (400), not the store's.
type specError struct{ err error }

func (e *specError) Error() string { return e.err.Error() }
func (e *specError) Unwrap() error { return e.err }

// Errors of the token store the admin API branches on.
var (
	errTokenNotFound = errors.New("no such token")
)

// Create stores a new token and returns it with its secret, the only time
// the secret exists outside the caller. The audit entry is in the same
// transaction.
func (ts *tokenStore) Create(ctx context.Context, spec TokenSpec, by string) (Token, string, error) {
	if err := spec.Validate(); err != nil {
		return Token{}, "", &specError{err}
	}
	var idb [8]byte
	var sec [32]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return Token{}, "", fmt.Errorf("tokens: %w", err)
	}
	if _, err := rand.Read(sec[:]); err != nil {
		return Token{}, "", fmt.Errorf("tokens: %w", err)
	}
	id, secret := hex.EncodeToString(idb[:]), hex.EncodeToString(sec[:])
	now := ts.now().UTC()
	rec := tokenRecord{Token: Token{ID: id, Role: spec.Role, Namespace: spec.Namespace, ServiceAccount: spec.ServiceAccount,
		MaxUses: spec.Uses, Created: now, CreatedBy: by}, Hash: hashSecret(secret)}
	if spec.TTL > 0 {
		rec.Expires = now.Add(spec.TTL)
	}
	val, err := json.Marshal(rec)
	if err != nil {
		return Token{}, "", fmt.Errorf("tokens: encode: %w", err)
	}
	entry := AuditEntry{Time: now, Who: by, Action: "token.create", Target: id, Detail: describeToken(rec.Token)}
	audit, err := entry.op()
	if err != nil {
		return Token{}, "", err
	}
	if _, err := ts.st.Txn(ctx, store.Put(TokenPrefix+id, val, store.Absent), audit); err != nil {
		return Token{}, "", fmt.Errorf("tokens: create: %w", err)
	}
	return rec.Token, tokenSecretPrefix + id + "." + secret, nil
}

func describeToken(t Token) string {
	s := "role=" + t.Role
	if t.Role == RoleProxy {
		s += fmt.Sprintf(" identity=ns/%s/sa/%s uses=%d", t.Namespace, t.ServiceAccount, t.MaxUses)
	}
	if !t.Expires.IsZero() {
		s += " expires=" + t.Expires.Format(time.RFC3339)
	}
	return s
}

func hashSecret(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// parseSecret splits "trellis-<id>.<secret>"; ok false for anything else.
func parseSecret(s string) (id, secret string, ok bool) {
	rest, ok := strings.CutPrefix(s, tokenSecretPrefix)
	if !ok {
		return "", "", false
	}
	id, secret, ok = strings.Cut(rest, ".")
	if !ok || len(id) != 16 || len(secret) != 64 || !isHex(id) || !isHex(secret) {
		return "", "", false
	}
	return id, secret, true
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// read returns the record secret names, checked against its hash in
// constant time, and its store revision. Any mismatch is ErrTokenUnknown:
// the caller learns nothing about which part was wrong.
func (ts *tokenStore) read(ctx context.Context, secretToken string) (tokenRecord, int64, error) {
	id, secret, ok := parseSecret(secretToken)
	if !ok {
		return tokenRecord{}, 0, push.ErrTokenUnknown
	}
	rec, rev, err := ts.get(ctx, id)
	if errors.Is(err, errTokenNotFound) {
		return tokenRecord{}, 0, push.ErrTokenUnknown
	}
	if err != nil {
		return tokenRecord{}, 0, err
	}
	if subtle.ConstantTimeCompare([]byte(hashSecret(secret)), []byte(rec.Hash)) != 1 {
		return tokenRecord{}, 0, push.ErrTokenUnknown
	}
	return rec, rev, nil
}

func (ts *tokenStore) get(ctx context.Context, id string) (tokenRecord, int64, error) {
	if len(id) != 16 || !isHex(id) {
		return tokenRecord{}, 0, errTokenNotFound
	}
	kv, err := ts.st.Get(ctx, TokenPrefix+id)
	if errors.Is(err, store.ErrNotFound) {
		return tokenRecord{}, 0, errTokenNotFound
	}
	if err != nil {
		return tokenRecord{}, 0, fmt.Errorf("tokens: %w", err)
	}
	var rec tokenRecord
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return tokenRecord{}, 0, fmt.Errorf("tokens: record %s: %w", id, err)
	}
	return rec, kv.ModRevision, nil
}

// usable reports why rec cannot be used now, or nil.
func (ts *tokenStore) usable(rec tokenRecord) error {
	switch {
	case rec.Revoked:
		return push.ErrTokenRevoked
	case !rec.Expires.IsZero() && !ts.now().Before(rec.Expires):
		return push.ErrTokenExpired
	case rec.MaxUses > 0 && rec.Used >= rec.MaxUses:
		return push.ErrTokenExhausted
	}
	return nil
}

// Lookup implements push.Tokens.
func (ts *tokenStore) Lookup(ctx context.Context, secret string) (push.JoinToken, error) {
	rec, _, err := ts.read(ctx, secret)
	if err != nil {
		return push.JoinToken{}, err
	}
	if rec.Role != RoleProxy {
		return push.JoinToken{}, push.ErrTokenRole
	}
	if err := ts.usable(rec); err != nil {
		return push.JoinToken{}, err
	}
	return push.JoinToken{ID: rec.ID, Namespace: rec.Namespace, ServiceAccount: rec.ServiceAccount}, nil
}

// Redeem implements push.Tokens: one use spent compare-and-set on the
// record's revision, with the issuance's audit entry in the same
// transaction. A concurrent redeem moves the revision; this one reads again
// and finds the token spent, or retries.
func (ts *tokenStore) Redeem(ctx context.Context, id string, iss push.Issuance) error {
	for range redeemRetries {
		rec, rev, err := ts.get(ctx, id)
		if errors.Is(err, errTokenNotFound) {
			return push.ErrTokenUnknown
		}
		if err != nil {
			return err
		}
		if err := ts.usable(rec); err != nil {
			return err
		}
		rec.Used++
		val, err := json.Marshal(rec)
		if err != nil {
			return fmt.Errorf("tokens: encode: %w", err)
		}
		audit, err := issuanceEntry(ts.now(), iss).op()
		if err != nil {
			return err
		}
		_, err = ts.st.Txn(ctx, store.Put(TokenPrefix+id, val, rev), audit)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return fmt.Errorf("tokens: redeem: %w", err)
		}
		return nil
	}
	return fmt.Errorf("tokens: redeem %s: too many concurrent uses; try again", id)
}

// Issued implements push.Auditor: renewals and dev-mode issuances.
func (ts *tokenStore) Issued(ctx context.Context, iss push.Issuance) error {
	audit, err := issuanceEntry(ts.now(), iss).op()
	if err != nil {
		return err
	}
	if _, err := ts.st.Txn(ctx, audit); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	return nil
}

func issuanceEntry(now time.Time, iss push.Issuance) AuditEntry {
	return AuditEntry{Time: now.UTC(), Who: iss.By, Action: "ca.issue", Target: iss.Identity,
		Detail: fmt.Sprintf("serial=%s notAfter=%s", iss.Serial, iss.NotAfter.UTC().Format(time.RFC3339))}
}

// List returns every token, in id order (ids are random: no order of creation).
func (ts *tokenStore) List(ctx context.Context) ([]Token, error) {
	kvs, _, err := ts.st.List(ctx, TokenPrefix)
	if err != nil {
		return nil, fmt.Errorf("tokens: list: %w", err)
	}
	out := make([]Token, 0, len(kvs))
	for _, kv := range kvs {
		var rec tokenRecord
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			continue
		}
		out = append(out, rec.Token)
	}
	return out, nil
}

// Revoke marks the token revoked (kept, so list and audit still name it).
func (ts *tokenStore) Revoke(ctx context.Context, id, by string) (Token, error) {
	for range redeemRetries {
		rec, rev, err := ts.get(ctx, id)
		if err != nil {
			return Token{}, err
		}
		if rec.Revoked {
			return rec.Token, nil
		}
		rec.Revoked, rec.RevokedAt = true, ts.now().UTC()
		val, err := json.Marshal(rec)
		if err != nil {
			return Token{}, fmt.Errorf("tokens: encode: %w", err)
		}
		audit, err := AuditEntry{Time: rec.RevokedAt, Who: by, Action: "token.revoke", Target: id, Detail: describeToken(rec.Token)}.op()
		if err != nil {
			return Token{}, err
		}
		_, err = ts.st.Txn(ctx, store.Put(TokenPrefix+id, val, rev), audit)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return Token{}, fmt.Errorf("tokens: revoke: %w", err)
		}
		return rec.Token, nil
	}
	return Token{}, fmt.Errorf("tokens: revoke %s: kept changing; try again", id)
}

// apiCaller authenticates an admin API bearer token from the store: its id
// (as "token:<id>" for the audit log) and role.
func (ts *tokenStore) apiCaller(ctx context.Context, secret string) (caller, error) {
	rec, _, err := ts.read(ctx, secret)
	if err != nil {
		return caller{}, err
	}
	if rec.Revoked {
		return caller{}, push.ErrTokenRevoked
	}
	if !rec.Expires.IsZero() && !ts.now().Before(rec.Expires) {
		return caller{}, push.ErrTokenExpired
	}
	return caller{who: "token:" + rec.ID, role: rec.Role}, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
