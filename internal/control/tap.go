package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/echo"
	"trellis.dev/trellis/internal/meshname"
	"trellis.dev/trellis/internal/tap"
)

// tapHub is what the admin API needs of the tap hub (internal/tap).
type tapHub interface {
	Start(service string, req *meshv1.TapRequest) (*tap.Session, error)
}

// tapFlush bounds how long an event waits in the answer's buffer, and how
// often a viewer that fell behind is told what it lost.
const tapFlush = 250 * time.Millisecond

// tapWriteTimeout bounds a write to a viewer: one whose connection hangs
// (gone without a FIN) must not hold its tap open on the proxies.
const tapWriteTimeout = 10 * time.Second

// TapLine is one line of GET /v1/tap/{namespace}/{service}: JSON, one
// object per line. Type "started" comes first (Tap, Proxies), then
// "event" lines (the request's fields) and "skipped" lines (Count requests
// a proxy's rate bound or a full queue kept from this tap; Proxy "" when
// it was this answer that fell behind).
type TapLine struct {
	Type    string `json:"type"`
	Tap     string `json:"tap,omitempty"`
	Proxies *int   `json:"proxies,omitempty"`
	Proxy   string `json:"proxy,omitempty"`
	Count   uint64 `json:"count,omitempty"`
	*TapEvent
}

// TapEvent is a tapped request as the admin API shows it.
type TapEvent struct {
	Time                string            `json:"time"`
	Direction           string            `json:"direction"`
	Method              string            `json:"method"`
	Authority           string            `json:"authority"`
	Path                string            `json:"path"`
	Status              int32             `json:"status"`
	GRPCStatus          string            `json:"grpcStatus,omitempty"`
	LatencyMS           float64           `json:"latencyMs"`
	SourceIdentity      string            `json:"sourceIdentity,omitempty"`
	DestinationIdentity string            `json:"destinationIdentity,omitempty"`
	SourceService       string            `json:"sourceService,omitempty"`
	DestinationService  string            `json:"destinationService,omitempty"`
	ResponseFlags       string            `json:"responseFlags"`
	Route               string            `json:"route,omitempty"`
	Headers             map[string]string `json:"headers,omitempty"`
}

func tapEventOf(ev *meshv1.TapEvent) *TapEvent {
	return &TapEvent{
		Time:                time.Unix(0, ev.GetStartUnixNano()).UTC().Format(time.RFC3339Nano),
		Direction:           ev.GetDirection(),
		Method:              ev.GetMethod(),
		Authority:           ev.GetAuthority(),
		Path:                ev.GetPath(),
		Status:              ev.GetStatus(),
		GRPCStatus:          ev.GetGrpcStatus(),
		LatencyMS:           float64(ev.GetLatencyNanos()) / 1e6,
		SourceIdentity:      ev.GetSourceIdentity(),
		DestinationIdentity: ev.GetDestinationIdentity(),
		SourceService:       ev.GetSourceService(),
		DestinationService:  ev.GetDestinationService(),
		ResponseFlags:       ev.GetResponseFlags(),
		Route:               ev.GetRoute(),
		Headers:             ev.GetHeaders(),
	}
}

// tap streams the requests the proxies of a service see, as JSON lines,
// until the client goes away (the tap then stops on every proxy).
//
// Admin tokens only: a tap shows live traffic (paths, which carry user
// and order ids, and who calls whom), which a read-only token, meant for
// reading config and status, should not see. Every tap is audited.
func (a *admin) tap(w http.ResponseWriter, r *http.Request) {
	if c := callerOf(r); c.role != RoleAdmin {
		writeError(w, http.StatusForbidden, "tap shows live requests (paths, identities): it needs an admin token; a read-only token sees config and status only")
		return
	}
	if a.taps == nil {
		writeError(w, http.StatusNotImplemented, "this control plane does not relay taps")
		return
	}
	service, req, err := tapRequestOf(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := a.auditTap(r, service, req); err != nil {
		a.internalError(w, "tap: audit", err)
		return
	}
	s, err := a.taps.Start(service, req)
	switch {
	case errors.Is(err, tap.ErrTooManyTaps):
		writeError(w, http.StatusTooManyRequests, err.Error())
		return
	case err != nil:
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	defer s.Stop()
	a.streamTap(w, r, s)
}

// streamTap writes the session's items as lines until the client or the
// control plane goes away.
func (a *admin) streamTap(w http.ResponseWriter, r *http.Request, s *tap.Session) {
	rc := http.NewResponseController(w)
	// The server's read timeout would end a long tap: this answer reads
	// nothing more, and the client going away still cancels r's context.
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Now().Add(tapWriteTimeout))
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	n := s.Proxies()
	if enc.Encode(TapLine{Type: "started", Tap: s.ID(), Proxies: &n}) != nil || rc.Flush() != nil {
		return
	}
	t := time.NewTicker(tapFlush)
	defer t.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-a.stopping:
			return
		case it := <-s.Items():
			if enc.Encode(lineOf(it)) != nil {
				return
			}
			continue // flush at the tick: a burst is one write
		case <-t.C:
		}
		// Renewed each tick: it covers the writes until the next one.
		_ = rc.SetWriteDeadline(time.Now().Add(tapWriteTimeout))
		if lost := s.TakeLost(); lost > 0 {
			if enc.Encode(TapLine{Type: "skipped", Count: lost}) != nil {
				return
			}
		}
		if rc.Flush() != nil {
			return
		}
	}
}

func lineOf(it tap.Item) TapLine {
	if it.Event == nil {
		return TapLine{Type: "skipped", Proxy: it.Node, Count: it.Skipped}
	}
	return TapLine{Type: "event", Proxy: it.Node, TapEvent: tapEventOf(it.Event)}
}

// tapRequestOf reads the service (name.namespace) and the filter from
// GET /v1/tap/{namespace}/{service}?path=&method=&to=&maxRps=. to may be
// name (in the tapped service's namespace) or name.namespace.
func tapRequestOf(r *http.Request) (string, *meshv1.TapRequest, error) {
	ns, name := r.PathValue("namespace"), r.PathValue("service")
	if !meshname.IsLabel(ns) || !meshname.IsLabel(name) {
		return "", nil, fmt.Errorf("tap: %s.%s is not a service (want /v1/tap/<namespace>/<service>)", echo.Clip(name, echo.Max), echo.Clip(ns, echo.Max))
	}
	q := r.URL.Query()
	req := &meshv1.TapRequest{PathPrefix: q.Get("path"), Method: q.Get("method"), To: q.Get("to")}
	if req.To != "" && !strings.Contains(req.To, ".") {
		req.To += "." + ns
	}
	if v := q.Get("maxRps"); v != "" {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil || n == 0 || n > tap.MaxMaxRPS {
			return "", nil, fmt.Errorf("tap: maxRps %s: want a number from 1 to %d", echo.Quote(v), tap.MaxMaxRPS)
		}
		req.MaxRps = uint32(n)
	}
	if _, err := tap.FilterOf(req); err != nil {
		return "", nil, err
	}
	return name + "." + ns, req, nil
}

// auditTap records who tapped what before the tap starts: live traffic is
// worth knowing who looked at.
func (a *admin) auditTap(r *http.Request, service string, req *meshv1.TapRequest) error {
	if a.tokens == nil {
		return nil
	}
	detail := fmt.Sprintf("path=%s method=%s to=%s maxRps=%d", echo.Quote(req.GetPathPrefix()), echo.Quote(req.GetMethod()), echo.Quote(req.GetTo()), req.GetMaxRps())
	op, err := AuditEntry{Time: time.Now().UTC(), Who: callerOf(r).who, Action: "tap", Target: service, Detail: detail}.op()
	if err != nil {
		return err
	}
	_, err = a.tokens.st.Txn(r.Context(), op)
	return err
}
