package control

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/apply"
	"trellis.dev/trellis/internal/config"
	"trellis.dev/trellis/internal/echo"
	"trellis.dev/trellis/internal/meshname"
	"trellis.dev/trellis/internal/push"
	"trellis.dev/trellis/internal/ratelog"
	"trellis.dev/trellis/internal/store"
	"trellis.dev/trellis/internal/xds"
)

// MaxBodyBytes bounds an admin API request body.
const MaxBodyBytes = 8 << 20

// adminStore is what the admin API reads from the store; changes go through
// the applier.
type adminStore interface {
	Get(ctx context.Context, key string) (store.KV, error)
	List(ctx context.Context, prefix string) ([]store.KV, int64, error)
}

// applier is what the admin API needs to change resources.
type applier interface {
	Apply(ctx context.Context, objs []apply.Object, dryRun bool) (*apply.Outcome, error)
	Delete(ctx context.Context, ref config.Ref) (*apply.Outcome, error)
}

type adminDeps struct {
	store   adminStore
	applier applier
	// token is the data dir's admin-token: the first admin token.
	token string
	// tokens are the stored API and join tokens, and the audit log.
	tokens   *tokenStore
	statuses func() []push.ProxyStatus
	// awaitRevision blocks until every proxy runs rev or one refused it
	// (push.Server.AwaitRevision), or ctx ends.
	awaitRevision func(ctx context.Context, rev int64) []push.ProxyStatus
	endpoints     func(context.Context) ([]*meshv1.Endpoint, error)
	xdsClients    func() []xds.ClientStatus
	rotator       caRotator // CA rotation (ca_rotation.go)
	// replicas lists the control-plane replicas (Leader.Replicas); self
	// is this one's id.
	replicas  func(context.Context) ([]Replica, error)
	self      string
	snapshots snapshotSource // authz check (authcheck.go)
	// caughtUp blocks until the mesh view has every write committed
	// before the call, so a check right after an apply sees it.
	caughtUp func(ctx context.Context) error
	// taps relays `trellis tap` (tap.go); stopping closes when the admin
	// server shuts down, ending open taps.
	taps     tapHub
	stopping <-chan struct{}
	// stats answers /v1/stats from the proxies' reports (stats.go); nil:
	// the API says none are kept.
	stats  statsQuerier
	logger *slog.Logger
}

// MaxProxiesWait bounds a /v1/proxies long-poll; clients wanting longer ask again.
const MaxProxiesWait = 5 * time.Minute

type admin struct {
	adminDeps
	log *slog.Logger
	// maxBody is MaxBodyBytes; tests lower it to exercise the limit cheaply.
	maxBody atomic.Int64
	handler http.Handler
	// refusalLog rate-limits the log lines of refused calls.
	refusalLog *ratelog.Limiter
}

// newAdmin returns the admin API handler: every route requires an admin
// API token, whose role decides what it may do (admin_auth.go).
func newAdmin(d adminDeps) *admin {
	if d.logger == nil {
		d.logger = slog.New(slog.DiscardHandler)
	}
	if d.replicas == nil {
		d.replicas = func(context.Context) ([]Replica, error) { return []Replica{{ID: d.self, Leader: true}}, nil }
	}
	if d.awaitRevision == nil {
		d.awaitRevision = func(context.Context, int64) []push.ProxyStatus { return d.statuses() }
	}
	a := &admin{adminDeps: d, log: d.logger.With("component", "admin")}
	a.refusalLog = ratelog.New(a.log, ratelog.Options{})
	a.maxBody.Store(MaxBodyBytes)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/apply", a.apply)
	mux.HandleFunc("GET /v1/resources/{kind}", a.list)
	mux.HandleFunc("GET /v1/resources/{kind}/{namespace}/{name}", a.get)
	mux.HandleFunc("DELETE /v1/resources/{kind}/{namespace}/{name}", a.delete)
	mux.HandleFunc("GET /v1/proxies", a.proxies)
	mux.HandleFunc("GET /v1/endpoints", a.listEndpoints)
	mux.HandleFunc("GET /v1/xds-clients", a.listXDSClients)
	mux.HandleFunc("GET /v1/replicas", a.listReplicas)
	a.tokenRoutes(mux)
	a.caRoutes(mux)
	mux.HandleFunc("POST /v1/authz/check", a.authzCheck)
	mux.HandleFunc("GET /v1/tap/{namespace}/{service}", a.tap)
	mux.HandleFunc("GET /v1/stats", a.statsQuery)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such API: %s %s (see /v1/apply, /v1/resources/<kind>, /v1/proxies, /v1/endpoints, /v1/replicas, /v1/xds-clients, /v1/tokens, /v1/audit, /v1/stats, /v1/tap/<namespace>/<service>)", r.Method, truncate(r.URL.Path, 256)))
	})
	a.handler = a.authenticate(mux)
	return a
}

func (a *admin) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.handler.ServeHTTP(w, r) }

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"error":"encode answer failed"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, status int, msg string) {
	// msg may quote the request (names, fields): bounded, marked if cut.
	writeJSON(w, status, map[string]string{"error": echo.Clip(msg, maxErrorBody)})
}

// maxErrorBody bounds an error body: enough for many field errors, each
// already bounded by internal/config.
const maxErrorBody = 64 << 10

// internalError logs the detail and tells the client what to try.
func (a *admin) internalError(w http.ResponseWriter, op string, err error) {
	a.log.Error("admin request failed", "op", op, "err", err)
	writeError(w, http.StatusInternalServerError, fmt.Sprintf("%s: %v", op, err))
}

type applyFile struct {
	Name    string `json:"name"`
	Content string `json:"content"`
}

type applyRequest struct {
	Files  []applyFile `json:"files"`
	DryRun bool        `json:"dryRun"`
}

type applyResult struct {
	Ref    string `json:"ref"`
	Action string `json:"action"`
}

type applyResponse struct {
	Revision int64         `json:"revision"`
	DryRun   bool          `json:"dryRun,omitempty"`
	Results  []applyResult `json:"results"`
}

// decodeBody decodes a JSON body strictly; it writes the error answer and
// reports false on failure.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		if _, terr := dec.Token(); terr != io.EOF {
			err = errors.New("trailing data after the JSON object")
		}
	}
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body exceeds %d bytes; apply fewer files at once", tooBig.Limit))
			return false
		}
		writeError(w, http.StatusBadRequest, "malformed request body: "+err.Error())
		return false
	}
	return true
}

// fileContent accepts the file as text or base64 (what a Go client sends for
// []byte). YAML and JSON resources always hold ':' or '{', which base64 never
// does, so text is never mistaken for base64.
func fileContent(s string) []byte {
	compact := strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' {
			return -1
		}
		return r
	}, s)
	if compact != "" && !strings.ContainsAny(compact, ": {}[]#-\t") {
		if b, err := base64.StdEncoding.DecodeString(compact); err == nil {
			return b
		}
	}
	return []byte(s)
}

func (a *admin) apply(w http.ResponseWriter, r *http.Request) {
	var req applyRequest
	if !decodeBody(w, r, &req) {
		return
	}
	if len(req.Files) == 0 {
		writeError(w, http.StatusBadRequest, "files: at least one file is required")
		return
	}
	var objs []apply.Object
	var problems []string
	for i, f := range req.Files {
		name := f.Name
		if name == "" {
			name = fmt.Sprintf("files[%d]", i)
		}
		decoded, err := config.Decode(name, fileContent(f.Content))
		if err != nil {
			problems = append(problems, errorLines(err, name)...)
			continue
		}
		for _, o := range decoded {
			objs = append(objs, apply.Object{Obj: o, File: name})
		}
	}
	if len(problems) > 0 {
		writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"errors": problems})
		return
	}

	out, err := a.applier.Apply(a.audited(r, "apply"), objs, req.DryRun)
	if a.changeFailed(w, err, "apply: resources kept changing under concurrent writes; try again") {
		return
	}
	writeJSON(w, http.StatusOK, applyResponse{Revision: out.Revision, DryRun: req.DryRun, Results: results(out)})
}

// changeFailed writes the answer to a failed apply or delete and reports
// whether it did.
func (a *admin) changeFailed(w http.ResponseWriter, err error, busy string) bool {
	var problems *apply.Problems
	switch {
	case err == nil:
		return false
	case errors.As(err, &problems):
		writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"errors": problems.Lines})
	case errors.Is(err, store.ErrConflict):
		writeError(w, http.StatusConflict, busy)
	default:
		a.log.Error("admin request failed", "err", err)
		writeError(w, http.StatusInternalServerError, err.Error())
	}
	return true
}

func results(out *apply.Outcome) []applyResult {
	rs := make([]applyResult, 0, len(out.Results))
	for _, r := range out.Results {
		rs = append(rs, applyResult{Ref: r.Ref.String(), Action: string(r.Action)})
	}
	return rs
}

// errorLines renders an error from config as one line per problem, each
// naming the file.
func errorLines(err error, file string) []string {
	var out []string
	cerrs := config.Errors(err)
	for _, e := range cerrs {
		if e.File == "" && file != "" {
			c := *e
			c.File = file
			e = &c
		}
		out = append(out, e.Error())
	}
	if len(cerrs) == 0 {
		msg := err.Error()
		if file != "" && !strings.HasPrefix(msg, file+":") {
			msg = file + ": " + msg
		}
		out = append(out, msg)
	}
	return out
}

// resolveKind maps "httproutes", "HTTPRoute", "service", "ratelimitpolicies", "backendpolicies"
// to a known kind.
func resolveKind(s string) (string, bool) {
	l := strings.ToLower(s)
	for _, k := range config.Kinds() {
		lk := strings.ToLower(k)
		if l == lk || l == lk+"s" || l == lk+"es" || (strings.HasSuffix(lk, "y") && l == lk[:len(lk)-1]+"ies") {
			return k, true
		}
	}
	return "", false
}

func unknownKind(w http.ResponseWriter, kind string) {
	writeError(w, http.StatusNotFound, fmt.Sprintf("unknown kind %s: known kinds are %s", echo.Quote(kind), strings.Join(config.Kinds(), ", ")))
}

func (a *admin) list(w http.ResponseWriter, r *http.Request) {
	kind, ok := resolveKind(r.PathValue("kind"))
	if !ok {
		unknownKind(w, r.PathValue("kind"))
		return
	}
	prefix := config.ResourcePrefix + kind + "/"
	if ns := r.URL.Query().Get("namespace"); ns != "" {
		prefix += ns + "/"
	}
	kvs, rev, err := a.store.List(r.Context(), prefix)
	if err != nil {
		a.internalError(w, "list "+kind, err)
		return
	}
	items := make([]json.RawMessage, 0, len(kvs))
	for _, kv := range kvs {
		if json.Valid(kv.Value) {
			items = append(items, json.RawMessage(kv.Value))
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"kind": kind + "List", "revision": rev, "items": items})
}

func (a *admin) get(w http.ResponseWriter, r *http.Request) {
	ref, ok := a.refOf(w, r)
	if !ok {
		return
	}
	kv, err := a.store.Get(r.Context(), config.StoreKey(ref))
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, ref.String()+" not found")
		return
	}
	if err != nil {
		a.internalError(w, "get "+ref.String(), err)
		return
	}
	writeJSON(w, http.StatusOK, json.RawMessage(kv.Value))
}

func (a *admin) delete(w http.ResponseWriter, r *http.Request) {
	ref, ok := a.refOf(w, r)
	if !ok {
		return
	}
	out, err := a.applier.Delete(a.audited(r, "delete"), ref)
	if errors.Is(err, apply.ErrNotFound) {
		writeError(w, http.StatusNotFound, ref.String()+" not found")
		return
	}
	if a.changeFailed(w, err, "delete: "+ref.String()+" kept changing under concurrent writes; try again") {
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"revision": out.Revision, "results": results(out)})
}

func (a *admin) refOf(w http.ResponseWriter, r *http.Request) (config.Ref, bool) {
	kind, ok := resolveKind(r.PathValue("kind"))
	if !ok {
		unknownKind(w, r.PathValue("kind"))
		return config.Ref{}, false
	}
	ns, name := r.PathValue("namespace"), r.PathValue("name")
	if ns == "" || name == "" || strings.ContainsAny(ns+name, "/") {
		writeError(w, http.StatusBadRequest, "want /v1/resources/<kind>/<namespace>/<name>")
		return config.Ref{}, false
	}
	// The same rules as metadata.namespace and metadata.name on apply.
	if err := meshname.CheckLabel(ns); err != nil {
		writeError(w, http.StatusBadRequest, "namespace: "+err.Error())
		return config.Ref{}, false
	}
	if err := meshname.CheckLabel(name); err != nil {
		writeError(w, http.StatusBadRequest, "name: "+err.Error())
		return config.Ref{}, false
	}
	return config.Ref{Kind: kind, Namespace: ns, Name: name}, true
}

// proxies lists the connected proxies. With ?minRevision=R&wait=D it first
// waits up to D until every proxy runs a snapshot current at R or later, or
// one refused the config at R; the answer is the list either way, and the
// client judges it (push.ProxyStatus.AtRevision, Refused).
func (a *admin) proxies(w http.ResponseWriter, r *http.Request) {
	rev, wait, err := proxiesWait(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	var list []push.ProxyStatus
	if wait > 0 {
		ctx, cancel := context.WithTimeout(r.Context(), wait)
		list = a.awaitRevision(ctx, rev)
		cancel()
	} else {
		list = a.statuses()
	}
	if list == nil {
		list = []push.ProxyStatus{}
	}
	writeJSON(w, http.StatusOK, list)
}

// proxiesWait parses the long-poll parameters of /v1/proxies.
func proxiesWait(r *http.Request) (rev int64, wait time.Duration, err error) {
	q := r.URL.Query()
	if s := q.Get("minRevision"); s != "" {
		if rev, err = strconv.ParseInt(s, 10, 64); err != nil || rev < 0 {
			return 0, 0, fmt.Errorf("minRevision: %s is not a revision (a whole number >= 0)", echo.Quote(s))
		}
	}
	s := q.Get("wait")
	if s == "" {
		return rev, 0, nil
	}
	if !q.Has("minRevision") {
		return 0, 0, errors.New("wait: needs minRevision, the revision to wait for")
	}
	if wait, err = time.ParseDuration(s); err != nil || wait <= 0 || wait > MaxProxiesWait {
		return 0, 0, fmt.Errorf("wait: %s: want a duration such as 30s, above 0 and at most %s", echo.Quote(s), MaxProxiesWait)
	}
	return rev, wait, nil
}

func (a *admin) listEndpoints(w http.ResponseWriter, r *http.Request) {
	eps, err := a.endpoints(r.Context())
	if err != nil {
		a.internalError(w, "list endpoints", err)
		return
	}
	// lowerCamelCase field names (adminAddress), as every -o json the CLI prints.
	mo := protojson.MarshalOptions{EmitUnpopulated: true}
	out := make([]json.RawMessage, 0, len(eps))
	for _, ep := range eps {
		b, err := mo.Marshal(ep)
		if err != nil {
			a.internalError(w, "encode endpoint", err)
			return
		}
		out = append(out, b)
	}
	writeJSON(w, http.StatusOK, out)
}
