package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// App names RunApp accepts. loadgen is the shop's traffic: it calls the
// frontend at a steady rate through its own proxy, like emojivoto's vote-bot.
var appNames = []string{"frontend", "orders", "payments", "inventory", "loadgen"}

// ErrUnknownApp is returned by RunApp for a name that is not one of the shop's apps.
var ErrUnknownApp = errors.New("unknown demo app")

// upstreamTimeout bounds one call to an upstream, proxy hops included.
const upstreamTimeout = 5 * time.Second

// RunApp runs one app of the demo shop until ctx is cancelled or the process
// gets SIGTERM/SIGINT. args are its flags: --listen, --outbound, --version,
// and for loadgen --rps and --target.
func RunApp(ctx context.Context, name string, args []string) error {
	fs := flag.NewFlagSet("demo-app "+name, flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8080", "address the app serves HTTP on")
	outbound := fs.String("outbound", "127.0.0.1:15001", "the proxy's outbound HTTP proxy address")
	version := fs.String("version", "", "version the app reports (inventory)")
	rps := fs.Int("rps", 50, "requests per second (loadgen)")
	target := fs.String("target", "http://frontend/", "URL the load generator calls (loadgen)")
	statsFile := fs.String("stats-file", "", "file the load generator writes its counts to when it stops (loadgen)")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("demo-app %s: %w", name, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("demo-app %s: unexpected arguments %q", name, fs.Args())
	}
	if !isApp(name) {
		return fmt.Errorf("demo-app: %w %q: want one of %v", ErrUnknownApp, name, appNames)
	}
	if *rps <= 0 {
		return fmt.Errorf("demo-app %s: --rps must be > 0, got %d", name, *rps)
	}
	proxyURL, err := url.Parse("http://" + *outbound)
	if err != nil || proxyURL.Host == "" {
		return fmt.Errorf("demo-app %s: --outbound %q: want host:port", name, *outbound)
	}
	// If the proxy that started us dies hard, we must not outlive it.
	setParentDeathSignal()

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, os.Interrupt)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "demo-app", "app", name)

	client := newUpstreamClient(proxyURL)
	defer client.CloseIdleConnections()
	a := &app{name: name, version: *version, client: client, work: randomWork}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("demo-app %s: %w", name, err)
	}
	srv := &http.Server{Handler: a.handler(), ReadHeaderTimeout: 5 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	var load sync.WaitGroup
	var sent, failed atomic.Int64
	if name == "loadgen" {
		load.Go(func() { generateLoad(ctx, client, *target, *rps, &sent, &failed) })
	}
	log.Info("serving", "listen", ln.Addr().String(), "outbound", *outbound, "version", *version)

	select {
	case err := <-serveErr:
		return fmt.Errorf("demo-app %s: serve: %w", name, err)
	case <-ctx.Done():
	}
	load.Wait()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("demo-app %s: shutdown: %w", name, err)
	}
	if name == "loadgen" {
		st := LoadStats{Sent: sent.Load(), Failed: failed.Load()}
		log.Info("stopped", "sent", st.Sent, "failed", st.Failed)
		if *statsFile != "" {
			if err := writeStats(*statsFile, st); err != nil {
				return fmt.Errorf("demo-app %s: stats: %w", name, err)
			}
		}
	}
	return nil
}

func isApp(name string) bool {
	for _, n := range appNames {
		if n == name {
			return true
		}
	}
	return false
}

// newUpstreamClient calls http://<service>/... through the proxy's outbound
// port, used as a plain HTTP proxy, with pooled keep-alive connections.
func newUpstreamClient(proxy *url.URL) *http.Client {
	return &http.Client{
		Timeout: upstreamTimeout,
		Transport: &http.Transport{
			Proxy:               http.ProxyURL(proxy),
			DialContext:         (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:        256,
			MaxIdleConnsPerHost: 128,
			IdleConnTimeout:     90 * time.Second,
		},
	}
}

// randomWork stands for the app's own work: 1–5 ms.
func randomWork(ctx context.Context) {
	t := time.NewTimer(time.Millisecond + rand.N(4*time.Millisecond))
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

type app struct {
	name    string
	version string
	client  *http.Client
	work    func(context.Context)
}

func (a *app) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"service": a.name, "status": "ok"})
	})
	switch a.name {
	case "frontend":
		mux.HandleFunc("GET /{$}", a.frontend)
	case "orders":
		mux.HandleFunc("POST /orders", a.orders)
	case "payments":
		mux.HandleFunc("POST /charge", a.payments)
	case "inventory":
		mux.HandleFunc("GET /stock/{sku}", a.inventory)
	}
	return mux
}

type orderRequest struct {
	SKU      string `json:"sku"`
	Quantity int    `json:"quantity"`
}

func (a *app) frontend(w http.ResponseWriter, r *http.Request) {
	a.work(r.Context())
	req := orderRequest{SKU: fmt.Sprintf("sku-%d", rand.N(100)), Quantity: 1 + rand.N(3)}
	order, err := a.call(withTrace(r), http.MethodPost, "http://orders/orders", req)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"service": "frontend", "order": order})
}

func (a *app) orders(w http.ResponseWriter, r *http.Request) {
	var req orderRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil || req.SKU == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "want a JSON body with sku"})
		return
	}
	a.work(r.Context())
	ctx := withTrace(r)
	var payment, stock json.RawMessage
	var payErr, stockErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		payment, payErr = a.call(ctx, http.MethodPost, "http://payments/charge",
			map[string]any{"sku": req.SKU, "amount_cents": 499 * req.Quantity})
	})
	wg.Go(func() {
		stock, stockErr = a.call(ctx, http.MethodGet, "http://inventory/stock/"+url.PathEscape(req.SKU), nil)
	})
	wg.Wait()
	if err := errors.Join(payErr, stockErr); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"service": "orders", "id": fmt.Sprintf("o-%08x", rand.Uint32()),
		"payment": payment, "stock": stock,
	})
}

func (a *app) payments(w http.ResponseWriter, r *http.Request) {
	var req struct {
		SKU         string `json:"sku"`
		AmountCents int    `json:"amount_cents"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "want a JSON body with amount_cents"})
		return
	}
	a.work(r.Context())
	writeJSON(w, http.StatusOK, map[string]any{"service": "payments", "charged": true, "amount_cents": req.AmountCents})
}

func (a *app) inventory(w http.ResponseWriter, r *http.Request) {
	a.work(r.Context())
	writeJSON(w, http.StatusOK, map[string]any{
		"service": "inventory", "version": a.version, "sku": r.PathValue("sku"), "available": rand.N(50),
	})
}

// upstreamError is a failed call to another service of the shop.
type upstreamError struct {
	url    string
	status int // 0: no response
	err    error
}

func (e *upstreamError) Error() string {
	if e.status != 0 {
		return fmt.Sprintf("%s: status %d", e.url, e.status)
	}
	return fmt.Sprintf("%s: %v", e.url, e.err)
}

func (e *upstreamError) Unwrap() error { return e.err }

// call sends body as JSON (if not nil) and returns the response's JSON; a
// transport error or a non-2xx status is an *upstreamError.
func (a *app) call(ctx context.Context, method, u string, body any) (json.RawMessage, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, &upstreamError{url: u, err: err}
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, &upstreamError{url: u, err: err}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if h, ok := ctx.Value(traceKey{}).(http.Header); ok {
		for k, v := range h {
			req.Header[k] = v
		}
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return nil, &upstreamError{url: u, err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, &upstreamError{url: u, err: err}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, &upstreamError{url: u, status: resp.StatusCode}
	}
	if !json.Valid(b) {
		return nil, &upstreamError{url: u, err: errors.New("response is not JSON")}
	}
	return b, nil
}

// traceHeaders are the trace context headers an app passes from the
// request it serves to the calls it makes, as an app instrumented with
// OpenTelemetry (or one that forwards them by hand, as Istio asks) does:
// the mesh's proxies make the spans, but only the app knows which of its
// outgoing calls belong to which incoming request.
var traceHeaders = []string{"Traceparent", "Tracestate", "B3", "X-B3-Traceid", "X-B3-Spanid", "X-B3-Parentspanid", "X-B3-Sampled", "X-B3-Flags", "X-Request-Id"}

type traceKey struct{}

// withTrace is r's context carrying r's trace headers for call.
func withTrace(r *http.Request) context.Context {
	h := http.Header{}
	for _, k := range traceHeaders {
		if v := r.Header[k]; len(v) > 0 {
			h[k] = v
		}
	}
	return context.WithValue(r.Context(), traceKey{}, h)
}

// writeError answers a failed upstream call with 502 so the failure shows in
// the stat table of this service as well as the one that failed.
func writeError(w http.ResponseWriter, err error) {
	writeJSON(w, http.StatusBadGateway, map[string]string{"error": err.Error()})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client hung up; nothing to do
}

// generateLoad calls target at rps until ctx is done. It paces by the clock,
// not by ticks, so a starved scheduler (ticks dropped) does not lower the
// rate; a backlog beyond one second is skipped rather than sent as a burst.
// Requests run concurrently, at most maxInFlight at once; a request that
// finds them all busy is counted as failed, so a stalled mesh shows as lost
// traffic rather than as a slower generator.
func generateLoad(ctx context.Context, client *http.Client, target string, rps int, sent, failed *atomic.Int64) {
	const maxInFlight = 256
	sem := make(chan struct{}, maxInFlight)
	var wg sync.WaitGroup
	defer wg.Wait()
	interval := time.Second / time.Duration(rps)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	start, issued := time.Now(), int64(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		due := int64(time.Since(start)/interval) - issued
		if due > int64(rps) {
			issued += due - int64(rps)
			due = int64(rps)
		}
		for range due {
			issued++
			sent.Add(1)
			select {
			case sem <- struct{}{}:
			default:
				failed.Add(1)
				continue
			}
			wg.Go(func() {
				defer func() { <-sem }()
				if !callOnce(ctx, client, target) {
					failed.Add(1)
				}
			})
		}
	}
}

// callOnce reports whether one GET of target got a non-5xx answer. Requests
// in flight finish even when the generator stops, so the mesh's counters and
// the generator's agree at the end of a run.
func callOnce(ctx context.Context, client *http.Client, target string) bool {
	req, err := http.NewRequestWithContext(context.WithoutCancel(ctx), http.MethodGet, target, nil)
	if err != nil {
		return false
	}
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode < 500
}

// LoadStats is what the load generator saw, written to --stats-file when it
// stops: requests the frontend never got show here and nowhere else.
type LoadStats struct {
	Sent   int64 `json:"sent"`
	Failed int64 `json:"failed"`
}

func writeStats(path string, st LoadStats) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
