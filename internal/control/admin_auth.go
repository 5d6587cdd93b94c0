package control

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"

	"trellis.dev/trellis/internal/push"
)

// caller is who sent an admin API request, and what it may do.
type caller struct {
	// who names the credential for the audit log: "admin-token" or
	// "token:<id>", never the secret.
	who  string
	role string
}

type callerKey struct{}

func callerOf(r *http.Request) caller {
	c, _ := r.Context().Value(callerKey{}).(caller)
	return c
}

// audited is the request's context, marked so the applier's transaction
// records action by the caller in the audit log.
func (a *admin) audited(r *http.Request, action string) context.Context {
	return withAudit(r.Context(), callerOf(r).who, action, time.Now())
}

// credentialParams are query parameters that other APIs read credentials
// from. A credential in a URL ends up in shell history, proxies' and
// servers' access logs; it is refused, not read, so a client that tries
// learns at once.
var credentialParams = []string{"token", "access_token", "admin_token", "api_key", "apikey", "auth", "authorization", "bearer", "secret"}

// credentialInURL reports whether the query carries something that looks
// like a credential: a credential parameter, or a value that is a Trellis
// token.
func (a *admin) credentialInURL(u *url.URL) bool {
	if u.RawQuery == "" {
		return false
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		// Unparseable: look at the raw text instead.
		return strings.Contains(u.RawQuery, tokenSecretPrefix) || (a.token != "" && strings.Contains(u.RawQuery, a.token))
	}
	for k, vs := range q {
		for _, p := range credentialParams {
			if strings.EqualFold(k, p) {
				return true
			}
		}
		for _, v := range vs {
			if strings.HasPrefix(v, tokenSecretPrefix) || tokenEqual(v, a.token) {
				return true
			}
		}
	}
	return false
}

// authenticate admits a request with a valid admin or read-only token in
// the Authorization header, for what its role allows: admin anything,
// read-only GET and HEAD, proxy join tokens nothing. Every method and route
// goes through here (the mux is behind it), DELETE included.
func (a *admin) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.credentialInURL(r.URL) {
			a.refused(r, caller{}, "credentials_in_url")
			writeError(w, http.StatusBadRequest, "credentials in the URL are refused (URLs end up in logs and shell history): send 'Authorization: Bearer <token>' and remove the token from the query string")
			return
		}
		c, status, msg := a.identify(r)
		if status != 0 {
			if status == http.StatusUnauthorized {
				w.Header().Set("WWW-Authenticate", `Bearer realm="trellis"`)
			}
			a.refused(r, c, "bad_token")
			writeError(w, status, msg)
			return
		}
		switch {
		case c.role == RoleProxy:
			a.refused(r, c, "proxy_token")
			writeError(w, http.StatusForbidden, "this is a proxy join token: it obtains a proxy's certificate and cannot use the admin API; use an admin or read-only token")
			return
		case c.role == RoleReadOnly && !readsOnly(r):
			a.refused(r, c, "read_only")
			writeError(w, http.StatusForbidden, "read-only token: "+r.Method+" needs an admin token")
			return
		case c.role != RoleAdmin && c.role != RoleReadOnly:
			a.refused(r, c, "no_role")
			writeError(w, http.StatusForbidden, "token has no admin API role")
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, a.maxBody.Load())
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, c)))
	})
}

// refused logs a denied admin API call through the refusal log limiter:
// who (never the secret), what, and from where.
func (a *admin) refused(r *http.Request, c caller, reason string) {
	if ok, n := a.refusalLog.Allow(reason); ok {
		a.log.Warn("admin API call refused", "reason", reason, "who", c.who, "method", r.Method,
			"path", truncate(r.URL.Path, 256), "remote", r.RemoteAddr, "suppressed", n)
	}
}

// identify reads the bearer token: the data dir's admin-token, or a token
// from the store. A non-zero status is the refusal to answer.
func (a *admin) identify(r *http.Request) (caller, int, string) {
	const missing = "missing or wrong admin token: send 'Authorization: Bearer <token>' with the token in <data-dir>/admin-token or one from 'trellis token create --role admin|read-only'"
	// The auth scheme is case-insensitive (RFC 9110); the token is not.
	h := r.Header.Get("Authorization")
	if len(h) <= 7 || !strings.EqualFold(h[:7], "Bearer ") {
		return caller{}, http.StatusUnauthorized, missing
	}
	tok := strings.TrimSpace(h[7:])
	if tokenEqual(tok, a.token) {
		return caller{who: "admin-token", role: RoleAdmin}, 0, ""
	}
	if a.tokens == nil {
		return caller{}, http.StatusUnauthorized, missing
	}
	c, err := a.tokens.apiCaller(r.Context(), tok)
	switch {
	case err == nil:
		return c, 0, ""
	case errors.Is(err, push.ErrTokenRevoked):
		return caller{}, http.StatusUnauthorized, "token revoked: ask an admin for a new one"
	case errors.Is(err, push.ErrTokenExpired):
		return caller{}, http.StatusUnauthorized, "token expired: ask an admin for a new one"
	case errors.Is(err, push.ErrTokenUnknown):
		return caller{}, http.StatusUnauthorized, missing
	default:
		a.log.Error("admin: token lookup failed", "err", err)
		return caller{}, http.StatusServiceUnavailable, "token lookup failed; try again"
	}
}

// readsOnly reports whether r changes nothing: GET and HEAD, and the
// authorization check, a POST only because it carries a question.
func readsOnly(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		return true
	case http.MethodPost:
		return r.URL.Path == "/v1/authz/check"
	}
	return false
}
