package proxy

import (
	"net/http"
	"net/http/pprof"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// adminHandler serves /ready, /live, /metrics, /config and, with
// Options.EnablePprof, /debug/pprof/.
func (p *Proxy) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
		unhealthy := p.appUnhealthy()
		switch {
		case p.draining.Load():
			http.Error(w, "draining", http.StatusServiceUnavailable)
		case p.cfg.Load().snap == nil:
			http.Error(w, "no config from the control plane yet", http.StatusServiceUnavailable)
		case !p.ready.Load():
			http.Error(w, "not ready", http.StatusServiceUnavailable)
		case unhealthy != "":
			http.Error(w, unhealthy, http.StatusServiceUnavailable)
		default:
			_, _ = w.Write([]byte("ready\n"))
		}
	})
	mux.HandleFunc("GET /live", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("live\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(p.opts.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /config", func(w http.ResponseWriter, _ *http.Request) {
		snap := p.cfg.Load().snap
		if snap == nil {
			http.Error(w, "no config from the control plane yet", http.StatusServiceUnavailable)
			return
		}
		c := proto.Clone(snap).(*meshv1.Snapshot)
		c.TrustBundle = nil
		b, err := protojson.MarshalOptions{Multiline: true}.Marshal(c)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b)
	})
	if !p.opts.EnablePprof {
		return mux
	}
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}
