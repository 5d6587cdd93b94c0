package demo

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"trellis.dev/trellis/internal/loopback"
	"trellis.dev/trellis/internal/telemetry"
)

// The demo's resources. examples/demo holds the same files for users; a test
// keeps the copies identical.
var (
	//go:embed shop.yaml
	shopYAML []byte
	//go:embed inventory-90-10.yaml
	inventory9010YAML []byte
	//go:embed inventory-v2-only.yaml
	inventoryV2OnlyYAML []byte
)

// Options configures Run.
type Options struct {
	// Binary is the trellis executable to start; default os.Executable().
	Binary string
	// DataDir holds the control plane's state and the demo's logs; "" means a
	// temporary directory, removed at the end.
	DataDir string
	// Duration is how long traffic runs; 0 means until ctx is cancelled.
	Duration time.Duration
	// Live redraws the table in place every refresh (a terminal); Plain
	// prints it as plain lines every refresh instead (a pipe or a file,
	// where redrawing would only show escape codes). With neither, only
	// the final table is printed.
	Live, Plain bool
	// Terminal, if set, opens the controlling terminal: the final table
	// goes there when Out is gone (under 'make demo | tee log', Ctrl-C
	// stops tee too, and the pipe breaks).
	Terminal func() (io.WriteCloser, error)
	// RPS is the load generator's rate; default 50.
	RPS int
	// Out receives the table; default io.Discard.
	Out io.Writer
	// Logger receives progress; default discards.
	Logger *slog.Logger
}

// Result is the traffic of a whole run, one row per app (inventory per version).
type Result struct {
	Rows     []telemetry.Row
	Load     LoadStats     // the load generator's own count; zero if it could not report
	Duration time.Duration // how long the load ran
	DataDir  string
}

// SuccessRate is the fraction of requests that did not fail: over every row
// (what the proxies served) and, when the load generator reported, over what
// it sent, whichever is lower, so requests lost before the frontend count
// too. It is 0 when nothing was served.
func (r Result) SuccessRate() float64 {
	var total, ok float64
	for _, row := range r.Rows {
		total += float64(row.Requests)
		ok += row.Success * float64(row.Requests)
	}
	if total == 0 {
		return 0
	}
	rate := ok / total
	if r.Load.Sent > 0 {
		rate = min(rate, float64(r.Load.Sent-r.Load.Failed)/float64(r.Load.Sent))
	}
	return rate
}

const (
	refreshEvery = 1500 * time.Millisecond
	readyTimeout = 45 * time.Second
	stopGrace    = 5 * time.Second
)

// member is one app of the shop and its proxy.
type member struct {
	row                      string // name of its row in the table; "" for the load generator
	service                  string
	version                  string
	app                      string // host:port the app listens on
	inbound, outbound, admin string
	p                        *proc
}

func (m *member) label() string {
	if m.row != "" {
		return m.row
	}
	return m.service
}

// rowOrder is the table's order: the call graph, top down.
var rowOrder = []string{"frontend", "orders", "payments", "inventory-v1", "inventory-v2"}

// Run starts a control plane and the shop, each app behind its own proxy,
// drives traffic through the mesh and reports per-app traffic from the
// proxies' metrics until ctx is cancelled or Duration has passed. Every
// process it started is stopped before it returns.
func Run(ctx context.Context, o Options) (res Result, err error) {
	if o.RPS == 0 {
		o.RPS = 50
	}
	if o.RPS < 0 {
		return Result{}, fmt.Errorf("demo: rps must be > 0, got %d", o.RPS)
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	// The CLI scopes the logger (component=demo).
	log := o.Logger
	if o.Binary == "" {
		if o.Binary, err = os.Executable(); err != nil {
			return Result{}, fmt.Errorf("demo: find the trellis binary: %w", err)
		}
	}
	temp := o.DataDir == ""
	if temp {
		if o.DataDir, err = os.MkdirTemp("", "trellis-demo-"); err != nil {
			return Result{}, fmt.Errorf("demo: %w", err)
		}
		defer os.RemoveAll(o.DataDir)
	} else if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
		return Result{}, fmt.Errorf("demo: data dir: %w", err)
	}
	if o.DataDir, err = filepath.Abs(o.DataDir); err != nil {
		return Result{}, fmt.Errorf("demo: data dir: %w", err)
	}
	logDir := filepath.Join(o.DataDir, "logs")
	if err := os.MkdirAll(logDir, 0o700); err != nil {
		return Result{}, fmt.Errorf("demo: %w", err)
	}
	for name, b := range map[string][]byte{"shop.yaml": shopYAML, "inventory-90-10.yaml": inventory9010YAML, "inventory-v2-only.yaml": inventoryV2OnlyYAML} {
		if err := os.WriteFile(filepath.Join(o.DataDir, name), b, 0o644); err != nil {
			return Result{}, fmt.Errorf("demo: %w", err)
		}
	}
	res.DataDir = o.DataDir

	members := []*member{
		{row: "frontend", service: "frontend"},
		{row: "orders", service: "orders"},
		{row: "payments", service: "payments"},
		{row: "inventory-v1", service: "inventory", version: "v1"},
		{row: "inventory-v2", service: "inventory", version: "v2"},
		{service: "loadgen"},
	}
	ports, err := loopback.Addrs(3 + 4*len(members))
	if err != nil {
		return Result{}, fmt.Errorf("demo: %w", err)
	}
	grpcAddr, adminAddr, metricsAddr := ports[0], ports[1], ports[2]
	for i, m := range members {
		m.app, m.inbound, m.outbound, m.admin = ports[3+4*i], ports[4+4*i], ports[5+4*i], ports[6+4*i]
	}

	// Stop everything we started, however we leave: proxies first (each
	// forwards the signal to its app), the control plane last.
	var control *proc
	defer func() {
		var wg sync.WaitGroup
		for _, m := range members {
			if m.p != nil {
				wg.Go(func() { m.p.stop(stopGrace) })
			}
		}
		wg.Wait()
		if control != nil {
			control.stop(stopGrace)
		}
		log.Info("stopped")
	}()

	// The demo is dev mode: one shared bootstrap token for every member,
	// labelled as insecure in the control plane's log and 'trellis check'.
	control, err = startProc("control", filepath.Join(logDir, "control.log"), o.Binary, "control",
		"--data-dir", o.DataDir, "--grpc-addr", grpcAddr, "--admin-addr", adminAddr, "--metrics-addr", metricsAddr,
		"--insecure-bootstrap-token")
	if err != nil {
		return res, err
	}
	if err := waitControl(ctx, control, o.DataDir, grpcAddr); err != nil {
		return res, err
	}
	log.Info("control plane ready", "grpc", grpcAddr, "admin", adminAddr)
	logDNS(log, o.DataDir)
	if err := apply(ctx, o.Binary, filepath.Join(o.DataDir, "shop.yaml"), o.DataDir); err != nil {
		return res, err
	}

	statsFile := filepath.Join(logDir, "loadgen-stats.json")
	_ = os.Remove(statsFile) // a kept data dir may hold a previous run's
	start := func(m *member) error {
		args := []string{"proxy", "--control", grpcAddr,
			"--ca-file", filepath.Join(o.DataDir, "ca.crt"),
			"--token-file", filepath.Join(o.DataDir, "bootstrap-token"),
			"--service", m.service, "--namespace", "default",
			"--app", m.app, "--inbound", m.inbound, "--outbound", m.outbound, "--admin", m.admin}
		if m.version != "" {
			args = append(args, "--labels", "version="+m.version)
		}
		args = append(args, "--", o.Binary, "demo-app", m.service, "--listen", m.app, "--outbound", m.outbound)
		if m.version != "" {
			args = append(args, "--version", m.version)
		}
		if m.service == "loadgen" {
			args = append(args, "--rps", strconv.Itoa(o.RPS), "--stats-file", statsFile)
		}
		p, err := startProc(m.label(), filepath.Join(logDir, m.label()+".log"), o.Binary, args...)
		if err != nil {
			return err
		}
		m.p = p
		return nil
	}
	apps, loadgen := members[:len(members)-1], members[len(members)-1]
	for _, m := range apps {
		if err := start(m); err != nil {
			return res, err
		}
	}
	if err := waitReady(ctx, apps); err != nil {
		return res, err
	}
	log.Info("shop ready", "apps", len(apps))
	if err := start(loadgen); err != nil {
		return res, err
	}
	if err := waitReady(ctx, []*member{loadgen}); err != nil {
		return res, err
	}
	loadStart := time.Now()
	log.Info("traffic started", "rps", o.RPS)

	v := &view{o: o, start: loadStart}
	// A headless run in a temporary data dir deletes it at exit: a hint to
	// apply to it would name a directory that is gone when read.
	if !temp || o.Duration == 0 {
		v.cmd = applyHint(o.Binary, o.DataDir)
	}
	if !o.Live {
		v.header(o.Out)
	}
	var deadline <-chan time.Time
	if o.Duration > 0 {
		t := time.NewTimer(o.Duration)
		defer t.Stop()
		deadline = t.C
	}
	scr := newScraper(members[:len(members)-1])
	prev, prevAt := telemetry.NewSample(), loadStart
	tick := time.NewTicker(refreshEvery)
	defer tick.Stop()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-deadline:
			break loop
		case <-tick.C:
		}
		if p := exitedProc(control, members); p != nil {
			return res, p.failure()
		}
		cur, now := scr.scrape(ctx, log), time.Now()
		switch rows := ordered(telemetry.Rows(prev, cur, now.Sub(prevAt))); {
		case o.Live:
			v.draw(rows, now, now.Sub(prevAt))
		case o.Plain:
			v.lines(rows, now, now.Sub(prevAt))
		}
		prev, prevAt = cur, now
	}

	// Stop the load and let requests in flight finish, then take the final
	// count over the whole run.
	loadgen.p.stop(stopGrace)
	res.Duration = time.Since(loadStart)
	if b, err := os.ReadFile(statsFile); err != nil {
		log.Warn("the load generator did not report its counts", "err", err)
	} else if err := json.Unmarshal(b, &res.Load); err != nil {
		log.Warn("the load generator's counts are unreadable", "file", statsFile, "err", err)
	}
	scrapeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	final := scr.scrape(scrapeCtx, log)
	res.Rows = ordered(telemetry.Rows(telemetry.NewSample(), final, res.Duration))
	v.final(res)
	if p := exitedProc(control, members[:len(members)-1]); p != nil {
		return res, p.failure()
	}
	return res, nil
}

// exitedProc returns the first process that stopped on its own.
func exitedProc(control *proc, members []*member) *proc {
	if control.exited() {
		return control
	}
	for _, m := range members {
		if m.p != nil && m.p.exited() {
			return m.p
		}
	}
	return nil
}

// ordered puts rows in rowOrder, with an empty row for an app that has not
// reported yet.
func ordered(rows []telemetry.Row) []telemetry.Row {
	by := make(map[string]telemetry.Row, len(rows))
	for _, r := range rows {
		by[r.Service] = r
	}
	out := make([]telemetry.Row, 0, len(rowOrder))
	for _, name := range rowOrder {
		r, ok := by[name]
		if !ok {
			r = telemetry.Row{Service: name}
		}
		out = append(out, r)
	}
	return out
}

// poll calls ready every 100 ms until it returns true, the process dies or
// the timeout passes.
func poll(ctx context.Context, what string, timeout time.Duration, ready func() (bool, *proc)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		ok, dead := ready()
		if ok {
			return nil
		}
		if dead != nil {
			return dead.failure()
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("demo: %s not ready after %s", what, timeout)
			}
			return fmt.Errorf("demo: waiting for %s: %w", what, ctx.Err())
		case <-t.C:
		}
	}
}

func waitControl(ctx context.Context, control *proc, dataDir, grpcAddr string) error {
	files := []string{"ca.crt", "bootstrap-token", "admin-token", "control.json"}
	return poll(ctx, "control plane", readyTimeout, func() (bool, *proc) {
		if control.exited() {
			return false, control
		}
		for _, f := range files {
			if _, err := os.Stat(filepath.Join(dataDir, f)); err != nil {
				return false, nil
			}
		}
		return accepts(grpcAddr), nil
	})
}

// waitReady waits for each proxy's /ready and for its app to listen: the
// proxy starts the app only once it is ready itself.
func waitReady(ctx context.Context, ms []*member) error {
	client := &http.Client{Timeout: time.Second}
	defer client.CloseIdleConnections()
	ready := make(map[*member]bool, len(ms))
	names := ""
	for _, m := range ms {
		names += " " + m.label()
	}
	return poll(ctx, "proxies"+names, readyTimeout, func() (bool, *proc) {
		all := true
		for _, m := range ms {
			if ready[m] {
				continue
			}
			if m.p.exited() {
				return false, m.p
			}
			ready[m] = proxyReady(ctx, client, m.admin) && accepts(m.app)
			all = all && ready[m]
		}
		return all, nil
	})
}

func proxyReady(ctx context.Context, client *http.Client, admin string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/ready", nil)
	if err != nil {
		return false
	}
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func accepts(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func apply(ctx context.Context, bin, file, dataDir string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "apply", "-f", file, "--data-dir", dataDir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("demo: trellis apply -f %s: %w: %s", file, err, bytes.TrimSpace(out))
	}
	return nil
}

// applyHint is the command a user copies to move the inventory split. It
// works from any directory: the binary is "trellis" when that is on PATH,
// else its absolute path, and the file is the data dir's copy.
func applyHint(bin, dataDir string) string {
	name := bin
	if p, err := exec.LookPath("trellis"); err == nil && sameFile(p, bin) {
		name = "trellis"
	} else if abs, err := filepath.Abs(bin); err == nil {
		name = abs
	}
	return name + " apply -f " + filepath.Join(dataDir, "inventory-90-10.yaml") + " --data-dir " + dataDir
}

func sameFile(a, b string) bool {
	fa, err := os.Stat(a)
	if err != nil {
		return false
	}
	fb, err := os.Stat(b)
	return err == nil && os.SameFile(fa, fb)
}
