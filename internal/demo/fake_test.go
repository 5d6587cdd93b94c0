package demo

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"trellis.dev/trellis/internal/telemetry"
)

// fakeEnv makes the test binary act as a fake trellis: Run's tests start it
// as the control plane, the proxies and (through RunApp) the apps, so the
// whole demo runs as real processes on real sockets without the real mesh.
const (
	fakeEnv     = "TRELLIS_DEMO_FAKE"
	fakeFailEnv = "TRELLIS_DEMO_FAKE_FAIL" // "control", or a service whose proxy fails
)

func TestMain(m *testing.M) {
	if os.Getenv(fakeEnv) != "" {
		if err := fakeTrellis(os.Args[1:]); err != nil {
			fmt.Fprintln(os.Stderr, "fake trellis:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func fakeTrellis(args []string) error {
	if len(args) == 0 {
		return errors.New("no command")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	switch args[0] {
	case "control":
		return fakeControl(ctx, args[1:])
	case "apply":
		fs := flag.NewFlagSet("apply", flag.ContinueOnError)
		file, dir := fs.String("f", "", ""), fs.String("data-dir", "", "")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		b, err := os.ReadFile(*file)
		if err != nil {
			return err
		}
		if _, err := os.Stat(filepath.Join(*dir, "admin-token")); err != nil {
			return err
		}
		if !strings.Contains(string(b), "kind: HTTPRoute") {
			return errors.New("no route in " + *file)
		}
		return nil
	case "proxy":
		return fakeProxy(ctx, args[1:])
	case "demo-app":
		return RunApp(ctx, args[1], args[2:])
	}
	return fmt.Errorf("unknown command %q", args[0])
}

func fakeControl(ctx context.Context, args []string) error {
	if os.Getenv(fakeFailEnv) == "control" {
		return errors.New("control: cannot open store: disk on fire")
	}
	fs := flag.NewFlagSet("control", flag.ContinueOnError)
	dir, grpcAddr := fs.String("data-dir", "", ""), fs.String("grpc-addr", "", "")
	fs.String("admin-addr", "", "")
	fs.String("metrics-addr", "", "")
	dev := fs.Bool("insecure-bootstrap-token", false, "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	// The demo's proxies share the bootstrap token: only dev mode takes it.
	if !*dev {
		return errors.New("control: the demo must run the control plane with --insecure-bootstrap-token")
	}
	ln, err := net.Listen("tcp", *grpcAddr)
	if err != nil {
		return err
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	for _, f := range []string{"ca.crt", "bootstrap-token", "admin-token", "control.json"} {
		if err := os.WriteFile(filepath.Join(*dir, f), []byte("fake\n"), 0o600); err != nil {
			return err
		}
	}
	<-ctx.Done()
	return nil
}

// fakeProxy registers its inbound address in a directory next to the CA file,
// serves inbound (to the app, with the real metric names), outbound (an HTTP
// proxy to a registered inbound of the addressed service) and admin, and runs
// the app after the "--".
func fakeProxy(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	caFile, service := fs.String("ca-file", "", ""), fs.String("service", "", "")
	labels, appAddr := fs.String("labels", "", ""), fs.String("app", "", "")
	inbound, outbound, admin := fs.String("inbound", "", ""), fs.String("outbound", "", ""), fs.String("admin", "", "")
	fs.String("control", "", "")
	fs.String("token-file", "", "")
	fs.String("namespace", "", "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if os.Getenv(fakeFailEnv) == *service {
		return errors.New("proxy: certify: permission denied")
	}
	regDir := filepath.Join(filepath.Dir(*caFile), "fake-registry")
	if err := os.MkdirAll(regDir, 0o700); err != nil {
		return err
	}
	reg := filepath.Join(regDir, *service+"_"+strings.ReplaceAll(*labels, "=", "-")+"_"+strings.ReplaceAll(*inbound, ":", "-"))
	if err := os.WriteFile(reg, []byte(*inbound), 0o600); err != nil {
		return err
	}

	// The real proxy's instruments, so the demo reads what a proxy writes.
	metrics := prometheus.NewRegistry()
	pm, err := telemetry.NewProxyMetrics(metrics)
	if err != nil {
		return err
	}
	appURL := &url.URL{Scheme: "http", Host: *appAddr}
	in := httputil.NewSingleHostReverseProxy(appURL)
	serve := func(addr string, h http.Handler) error {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		go http.Serve(ln, h)
		return nil
	}
	if err := serve(*inbound, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, code: 200}
		in.ServeHTTP(rec, r)
		pm.Sources(telemetry.Peer{Service: *service, Namespace: "default"}).Series("", "").Request(telemetry.Result{
			Code: rec.code, GRPCStatus: telemetry.None, Flags: telemetry.NoFlags, MTLS: true, Duration: time.Since(start),
		})
	})); err != nil {
		return err
	}
	if err := serve(*outbound, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		eps, _ := filepath.Glob(filepath.Join(regDir, r.URL.Hostname()+"_*"))
		if len(eps) == 0 {
			http.Error(w, "no endpoints", http.StatusServiceUnavailable)
			return
		}
		addr, err := os.ReadFile(eps[rand.N(len(eps))])
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: string(addr)}).ServeHTTP(w, r)
	})); err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", func(http.ResponseWriter, *http.Request) {})
	mux.Handle("GET /metrics", promhttp.HandlerFor(metrics, promhttp.HandlerOpts{}))
	if err := serve(*admin, mux); err != nil {
		return err
	}

	cmdArgs := fs.Args()
	cmd := exec.Command(cmdArgs[0], cmdArgs[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	go func() {
		<-ctx.Done()
		cmd.Process.Signal(syscall.SIGTERM)
	}()
	return cmd.Wait()
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}
