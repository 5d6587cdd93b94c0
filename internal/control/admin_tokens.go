package control

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// tokenRoutes are the admin API's tokens and audit log. There is no route
// that changes or deletes an audit entry.
func (a *admin) tokenRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/tokens", a.createToken)
	mux.HandleFunc("GET /v1/tokens", a.listTokens)
	mux.HandleFunc("DELETE /v1/tokens/{id}", a.revokeToken)
	mux.HandleFunc("GET /v1/audit", a.readAudit)
}

// CreateTokenRequest is the body of POST /v1/tokens.
type CreateTokenRequest struct {
	// Role: proxy (default), admin or read-only.
	Role           string `json:"role,omitempty"`
	Namespace      string `json:"namespace,omitempty"`
	ServiceAccount string `json:"serviceAccount,omitempty"`
	// TTL as a Go duration ("1h"); proxy tokens need one.
	TTL string `json:"ttl,omitempty"`
	// Uses bounds the certificates a proxy token buys; 0: no bound. The CLI
	// sends 1 unless told otherwise.
	Uses int `json:"uses,omitempty"`
}

// CreateTokenResponse carries the secret: the only time it is shown.
type CreateTokenResponse struct {
	Token  Token  `json:"token"`
	Secret string `json:"secret"`
}

func (a *admin) createToken(w http.ResponseWriter, r *http.Request) {
	var req CreateTokenRequest
	if !decodeBody(w, r, &req) {
		return
	}
	spec := TokenSpec{Role: req.Role, Namespace: req.Namespace, ServiceAccount: req.ServiceAccount, Uses: req.Uses}
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("ttl: %q is not a duration such as 1h", truncate(req.TTL, 64)))
			return
		}
		spec.TTL = d
	}
	tok, secret, err := a.tokens.Create(r.Context(), spec, callerOf(r).who)
	var verr *specError
	switch {
	case errors.As(err, &verr):
		writeError(w, http.StatusBadRequest, err.Error())
		return
	case err != nil:
		a.internalError(w, "create token", err)
		return
	}
	a.log.Info("token created", "id", tok.ID, "role", tok.Role, "by", callerOf(r).who)
	writeJSON(w, http.StatusCreated, CreateTokenResponse{Token: tok, Secret: secret})
}

func (a *admin) listTokens(w http.ResponseWriter, r *http.Request) {
	list, err := a.tokens.List(r.Context())
	if err != nil {
		a.internalError(w, "list tokens", err)
		return
	}
	writeJSON(w, http.StatusOK, list)
}

func (a *admin) revokeToken(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	tok, err := a.tokens.Revoke(r.Context(), id, callerOf(r).who)
	switch {
	case errors.Is(err, errTokenNotFound):
		writeError(w, http.StatusNotFound, fmt.Sprintf("token %q not found: 'trellis token list' shows the ids", truncate(id, 64)))
		return
	case err != nil:
		a.internalError(w, "revoke token", err)
		return
	}
	a.log.Info("token revoked", "id", tok.ID, "by", callerOf(r).who)
	writeJSON(w, http.StatusOK, tok)
}

func (a *admin) readAudit(w http.ResponseWriter, r *http.Request) {
	limit := 0
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("limit: %q: want a whole number >= 0", truncate(s, 32)))
			return
		}
		limit = n
	}
	entries, err := readAudit(r.Context(), a.store, limit)
	if err != nil {
		a.internalError(w, "read audit log", err)
		return
	}
	writeJSON(w, http.StatusOK, entries)
}
