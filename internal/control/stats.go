package control

import (
	"net/http"
	"time"

	"trellis.dev/trellis/internal/meshname"
	"trellis.dev/trellis/internal/stats"
)

// statsQuerier is what /v1/stats needs of the stats store.
type statsQuerier interface {
	Query(q stats.Query, now time.Time) stats.Result
}

// statsQuery answers GET /v1/stats?kind=service|route|edge|path
// [&service=NAME[.NS]][&route=NAME][&source=NAME[.NS]][&window=1m]: rows
// merged across the proxies' latest reports. Read-only tokens may ask.
func (a *admin) statsQuery(w http.ResponseWriter, r *http.Request) {
	if a.stats == nil {
		writeError(w, http.StatusNotFound, "this control plane keeps no stats")
		return
	}
	v := r.URL.Query()
	q := stats.Query{Kind: v.Get("kind"), Route: v.Get("route"), Window: time.Minute}
	if q.Kind == "" {
		q.Kind = stats.KindService
	}
	if s := v.Get("window"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			writeError(w, http.StatusBadRequest, "window: "+truncate(s, 64)+" is not a duration (e.g. 30s, 1m, 5m)")
			return
		}
		q.Window = d
	}
	var ok bool
	if q.Service, ok = serviceKey(v.Get("service")); !ok {
		writeError(w, http.StatusBadRequest, "service: "+truncate(v.Get("service"), 256)+" is not a service name (name or name.namespace)")
		return
	}
	if q.Source, ok = serviceKey(v.Get("source")); !ok {
		writeError(w, http.StatusBadRequest, "source: "+truncate(v.Get("source"), 256)+" is not a service name (name or name.namespace)")
		return
	}
	if err := q.Check(); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, a.stats.Query(q, time.Now()))
}

// serviceKey turns "name" or "name.namespace" into "name.namespace"
// ("default" namespace); "" stays "" (any service).
func serviceKey(s string) (string, bool) {
	if s == "" {
		return "", true
	}
	name, ns, ok := meshname.ParseHost(s, "default", "trellis.local")
	if !ok {
		return "", false
	}
	return name + "." + ns, true
}
