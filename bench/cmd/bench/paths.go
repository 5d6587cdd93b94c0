package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"trellis.dev/trellis/internal/loopback"
)

// A path is one way from the load generator to the fortio server. start
// brings it up under sup and returns the URL to load and the root pids of
// its proxy processes (nil for the direct path), one per half, named by
// halves in the same order.
type path struct {
	name   string
	start  func(ctx context.Context, h *harness, sup *supervisor) (url string, roots []int, err error)
	halves []string
}

var (
	trellisHalves = []string{"server-side", "client-side"}
	pairHalves    = []string{"back", "front"}
)

var allPaths = []path{
	{"direct", startDirect, nil},
	{"trellis", startTrellis, trellisHalves},
	{"trellis-nometrics", startTrellisNoMetrics, trellisHalves},
	{"trellis-authz", startTrellisAuthz, trellisHalves},
	{"trellis-tracing", startTrellisTracing, trellisHalves},
	{"trellis-accesslog", startTrellisAccessLog, trellisHalves},
	{"haproxy", startHAProxy, pairHalves},
	{"nginx", startNginx, pairHalves},
}

// harness holds what every path needs.
type harness struct {
	dir        string // temp dir: configs, certs, logs
	fortio     string
	trellis    string
	haproxy    string
	nginx      string
	gomaxprocs int
	certs      certFiles
	server     string // fortio server host:port (HTTP)
	serverGRPC string // the same fortio server's gRPC (ping) port
	// otlp is the OTLP/gRPC sink the tracing path exports to (observe.go);
	// nil unless that path runs.
	otlp *otlpSink
}

// freePorts returns n loopback ports for the children about to start.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		p, err := loopback.Port()
		if err != nil {
			return nil, err
		}
		ports = append(ports, p)
	}
	return ports, nil
}

func addr(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

var probeClient = &http.Client{Timeout: 2 * time.Second}

// probeHTTP succeeds when GET url answers 200.
func probeHTTP(url string) error {
	resp, err := probeClient.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

func probeTCP(a string) error {
	c, err := net.DialTimeout("tcp", a, time.Second)
	if err != nil {
		return err
	}
	return c.Close()
}

// startServer runs the fortio echo server, with every listener but HTTP and
// gRPC disabled so nothing binds beyond loopback; it sets h.serverGRPC.
func startServer(ctx context.Context, h *harness, sup *supervisor) (string, error) {
	ports, err := freePorts(2)
	if err != nil {
		return "", err
	}
	a := addr(ports[0])
	h.serverGRPC = addr(ports[1])
	data := filepath.Join(h.dir, "fortio-data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		return "", err
	}
	p, err := sup.start("fortio-server", h.fortio, []string{"server",
		"-http-port", a, "-grpc-port", h.serverGRPC, "-redirect-port", "disabled",
		"-tcp-port", "disabled", "-udp-port", "disabled", "-data-dir", data, "-loglevel", "warning",
	}, nil)
	if err != nil {
		return "", err
	}
	if err := waitReady(ctx, p, 10*time.Second, func() error {
		if err := probeHTTP("http://" + a + "/"); err != nil {
			return err
		}
		return probeTCP(h.serverGRPC)
	}); err != nil {
		return "", err
	}
	return a, nil
}

func startDirect(_ context.Context, h *harness, _ *supervisor) (string, []int, error) {
	return "http://" + h.server + "/", nil, nil
}

// startTrellis runs a control plane and two proxies with the real CLI:
// client → outbound (per-upstream port) → mTLS → inbound → server.
func startTrellis(ctx context.Context, h *harness, sup *supervisor) (string, []int, error) {
	return startTrellisWith(ctx, h, sup, "", nil)
}

// startTrellisAuthz is the trellis path with a bigger authorization
// policy: 10 rules on the server, the client's identity matching only the
// last, so every request walks them all.
func startTrellisAuthz(ctx context.Context, h *harness, sup *supervisor) (string, []int, error) {
	return startTrellisWith(ctx, h, sup, authzPolicy(10), nil)
}

// featuresYAML is what every trellis HTTP path runs with, so that what is
// measured is the hop a user runs (issue 13): a route with a request
// timeout and an attempt timeout, retries within a budget, a token bucket
// on the server's inbound traffic that admits everything, and, unless a
// path brings its own, an ALLOW policy naming the client.
const featuresYAML = `apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: bench-server}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bench-server}
spec:
  parentRefs:
  - {group: "", kind: Service, name: bench-server}
  rules:
  - timeouts: {request: 10s, backendRequest: 3s}
    backendRefs:
    - {name: bench-server, port: 80}
---
apiVersion: trellis.dev/v1alpha1
kind: BackendPolicy
metadata: {name: bench-server}
spec:
  targetRefs:
  - {kind: Service, name: bench-server}
  retry:
    attempts: 2
    statusCodes: [502, 503]
    budget: {retryRatio: 0.2, minRetriesPerSecond: 10, ttl: 10s}
---
apiVersion: trellis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: bench-server}
spec:
  targetRefs:
  - {kind: Service, name: bench-server}
  algorithm: TokenBucket
  rate: {requests: 1000000, per: 1s}
  burst: 100000
`

// authzPolicy is an ALLOW policy on bench-server of n rules, each a caller
// identity, methods and a path prefix; only the last names bench-client.
func authzPolicy(n int) string {
	var b strings.Builder
	b.WriteString("apiVersion: trellis.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: bench}\n" +
		"spec:\n  targetRefs: [{name: bench-server}]\n  action: ALLOW\n  rules:\n")
	for i := range n {
		who, path := fmt.Sprintf("caller-%d", i), fmt.Sprintf("/api/v%d", i)
		if i == n-1 {
			who, path = "bench-client", "/"
		}
		fmt.Fprintf(&b, "  - from: [{identity: \"spiffe://trellis.local/ns/default/sa/%s\"}]\n    methods: [GET, POST]\n    paths: [{prefix: %s}]\n", who, path)
	}
	return b.String()
}

// withFeatures is featuresYAML with policy, or with a one-rule ALLOW
// policy when policy is empty.
func withFeatures(policy string) string {
	if policy == "" {
		policy = authzPolicy(1)
	}
	return featuresYAML + "---\n" + policy
}

// startTrellisWith starts the trellis path with its features
// (withFeatures(policy)) applied with the trellis CLI before the proxies
// start; extra, when set, gives each half's proxy more flags.
func startTrellisWith(ctx context.Context, h *harness, sup *supervisor, policy string, extra func(half string) []string) (string, []int, error) {
	pr, err := startTrellisPair(ctx, h, sup, trellisOpts{apply: withFeatures(policy), extra: extra})
	if err != nil {
		return "", nil, err
	}
	return pr.url, pr.roots, nil
}

// trellisOpts shape one Trellis pair. The zero value is the trellis path:
// service bench-server in front of the fortio server, one upstream port.
type trellisOpts struct {
	apply string                     // YAML applied before the proxies start
	extra func(half string) []string // more flags per half ("server", "client")
	env   []string                   // more environment for both proxies (GOGC=...)
	// service is the server side's Service (default bench-server); its
	// first port is the app at the fortio server.
	service string
	// upstreams are the client side's per-upstream port keys (default
	// [service]); the first one's URL is probed and returned.
	upstreams []string
	// ready, when set, replaces the probe of the first upstream's URL.
	ready func(*trellisPair) error
}

// trellisPair is a running Trellis pair.
type trellisPair struct {
	url       string            // http:// URL of the first upstream port
	upstreams map[string]string // upstream key -> listen address
	outbound  string            // the client side's explicit HTTP proxy port
	roots     []int             // server-side, client-side proxy pids
}

// startTrellisPair runs a control plane and two proxies with the real CLI:
// client → outbound (per-upstream port) → mTLS → inbound → server.
func startTrellisPair(ctx context.Context, h *harness, sup *supervisor, o trellisOpts) (*trellisPair, error) {
	if _, err := os.Stat(h.trellis); err != nil {
		return nil, fmt.Errorf("trellis binary %s: %w (build it with `make build` or pass -trellis)", h.trellis, err)
	}
	if o.service == "" {
		o.service = "bench-server"
	}
	if len(o.upstreams) == 0 {
		o.upstreams = []string{o.service}
	}
	p, err := freePorts(9 + len(o.upstreams))
	if err != nil {
		return nil, err
	}
	grpc, admin, srvIn, srvOut, srvAdmin, cliIn, cliOut, cliAdmin, metrics := p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8]
	pair := &trellisPair{upstreams: make(map[string]string), outbound: addr(cliOut)}
	var upFlags []string
	for i, key := range o.upstreams {
		pair.upstreams[key] = addr(p[9+i])
		upFlags = append(upFlags, "--upstream", key+"="+addr(p[9+i]))
	}
	// A fresh data dir per path: a stored endpoint of an earlier path's
	// proxies would outlive them by its lease (leases survive a restart).
	data, err := os.MkdirTemp(h.dir, "trellis-control-")
	if err != nil {
		return nil, err
	}
	var ctlEnv []string
	if h.gomaxprocs > 0 {
		ctlEnv = append(ctlEnv, "GOMAXPROCS="+strconv.Itoa(h.gomaxprocs))
	}
	env := append(slices.Clip(ctlEnv), o.env...)

	ctl, err := sup.start("trellis-control", h.trellis, []string{"control",
		"--data-dir", data, "--grpc-addr", addr(grpc), "--admin-addr", addr(admin),
		"--metrics-addr", addr(metrics),
		// A throwaway benchmark mesh: dev mode's shared bootstrap token.
		"--insecure-bootstrap-token"}, ctlEnv)
	if err != nil {
		return nil, err
	}
	caFile, tokenFile := filepath.Join(data, "ca.crt"), filepath.Join(data, "bootstrap-token")
	err = waitReady(ctx, ctl, 30*time.Second, func() error {
		for _, f := range []string{caFile, tokenFile} {
			if _, err := os.Stat(f); err != nil {
				return err
			}
		}
		return probeTCP(addr(grpc))
	})
	if err != nil {
		return nil, err
	}
	if o.apply != "" {
		if err := applyPolicy(ctx, h, data, o.apply); err != nil {
			return nil, err
		}
	}

	common := []string{"proxy", "--control", addr(grpc), "--ca-file", caFile, "--token-file", tokenFile}
	srv, err := sup.start("trellis-proxy-server", h.trellis, append(common[:len(common):len(common)],
		append([]string{"--service", o.service, "--app", h.server,
			"--inbound", addr(srvIn), "--outbound", addr(srvOut), "--admin", addr(srvAdmin)}, extraFor(o.extra, "server")...)...), env)
	if err != nil {
		return nil, err
	}
	if err := waitReady(ctx, srv, 30*time.Second, func() error { return probeHTTP("http://" + addr(srvAdmin) + "/ready") }); err != nil {
		return nil, err
	}
	cliArgs := append([]string{"--service", "bench-client", // client-only: no --app, so no health check of one
		"--inbound", addr(cliIn), "--outbound", addr(cliOut), "--admin", addr(cliAdmin)}, upFlags...)
	cli, err := sup.start("trellis-proxy-client", h.trellis, append(common[:len(common):len(common)],
		append(cliArgs, extraFor(o.extra, "client")...)...), env)
	if err != nil {
		return nil, err
	}
	if err := waitReady(ctx, cli, 30*time.Second, func() error { return probeHTTP("http://" + addr(cliAdmin) + "/ready") }); err != nil {
		return nil, err
	}
	pair.url = "http://" + pair.upstreams[o.upstreams[0]] + "/"
	pair.roots = []int{srv.pid(), cli.pid()}
	ready := o.ready
	if ready == nil {
		ready = func(p *trellisPair) error { return probeHTTP(p.url) }
	}
	// Ready proxies may still be waiting for the server's endpoint to reach
	// the client's snapshot: wait for one request to go through.
	if err := waitReady(ctx, cli, 30*time.Second, func() error { return ready(pair) }); err != nil {
		return nil, err
	}
	return pair, nil
}

// HAProxy: one thread per half (nbthread 1), HTTP/1.1 keep-alive with
// connection reuse on the TLS hop, TLS 1.3, no logging.
const haproxyCommon = `global
    nbthread 1
    maxconn 4096
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-server-options ssl-min-ver TLSv1.3
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
`

func startHAProxy(ctx context.Context, h *harness, sup *supervisor) (string, []int, error) {
	p, err := freePorts(2)
	if err != nil {
		return "", nil, err
	}
	front, back := addr(p[0]), addr(p[1])
	c := h.certs
	backCfg := haproxyCommon + fmt.Sprintf(`frontend back
    bind %s ssl crt %s ca-file %s verify required alpn http/1.1
    default_backend app
backend app
    server app %s
`, back, c.backPEM, c.ca, h.server)
	frontCfg := haproxyCommon + fmt.Sprintf(`frontend front
    bind %s
    default_backend back
backend back
    server back %s ssl crt %s ca-file %s verify required verifyhost %s sni str(%s) alpn http/1.1
`, front, back, c.frontPEM, c.ca, backName, backName)
	var roots []int
	for _, half := range []struct{ name, cfg, listen string }{{"haproxy-back", backCfg, back}, {"haproxy-front", frontCfg, front}} {
		cfgPath := filepath.Join(h.dir, half.name+".cfg")
		if err := os.WriteFile(cfgPath, []byte(half.cfg), 0o644); err != nil {
			return "", nil, err
		}
		// -db: stay in the foreground, no daemon, no master process.
		pr, err := sup.start(half.name, h.haproxy, []string{"-db", "-f", cfgPath}, nil)
		if err != nil {
			return "", nil, err
		}
		if err := waitReady(ctx, pr, 10*time.Second, func() error { return probeTCP(half.listen) }); err != nil {
			return "", nil, err
		}
		roots = append(roots, pr.pid())
	}
	url := "http://" + front + "/"
	if err := waitReady(ctx, sup.last(), 10*time.Second, func() error { return probeHTTP(url) }); err != nil {
		return "", nil, err
	}
	return url, roots, nil
}

// nginx: one worker per half (plus its idle master), upstream keep-alive on
// both hops with no per-connection request cap, TLS 1.3, no access log.
const nginxMain = `daemon off;
master_process on;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %[1]s/client_body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
%[2]s
}
`

func startNginx(ctx context.Context, h *harness, sup *supervisor) (string, []int, error) {
	p, err := freePorts(2)
	if err != nil {
		return "", nil, err
	}
	front, back := addr(p[0]), addr(p[1])
	c := h.certs
	backHTTP := fmt.Sprintf(`    upstream app {
        server %s;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen %s ssl;
        ssl_protocols TLSv1.3;
        ssl_certificate %s;
        ssl_certificate_key %s;
        ssl_client_certificate %s;
        ssl_verify_client on;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }`, h.server, back, c.backCrt, c.backKey, c.ca)
	frontHTTP := fmt.Sprintf(`    upstream back {
        server %s;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen %s;
        location / {
            proxy_pass https://back;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ssl_protocols TLSv1.3;
            proxy_ssl_certificate %s;
            proxy_ssl_certificate_key %s;
            proxy_ssl_trusted_certificate %s;
            proxy_ssl_verify on;
            proxy_ssl_name %s;
            proxy_ssl_server_name on;
            proxy_ssl_session_reuse on;
        }
    }`, back, front, c.frontCrt, c.frontKey, c.ca, backName)
	var roots []int
	for _, half := range []struct{ name, http, listen string }{{"nginx-back", backHTTP, back}, {"nginx-front", frontHTTP, front}} {
		prefix := filepath.Join(h.dir, half.name)
		if err := os.MkdirAll(prefix, 0o755); err != nil {
			return "", nil, err
		}
		cfgPath := filepath.Join(prefix, "nginx.conf")
		if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(nginxMain, prefix, half.http)), 0o644); err != nil {
			return "", nil, err
		}
		// -e: the startup error log goes to the prefix, not /var/log/nginx.
		pr, err := sup.start(half.name, h.nginx, []string{"-p", prefix + "/", "-c", cfgPath, "-e", filepath.Join(prefix, "error.log")}, nil)
		if err != nil {
			return "", nil, err
		}
		if err := waitReady(ctx, pr, 10*time.Second, func() error { return probeTCP(half.listen) }); err != nil {
			return "", nil, fmt.Errorf("%w\nnginx error log:\n%s", err, tail(filepath.Join(prefix, "error.log"), 10))
		}
		roots = append(roots, pr.pid())
	}
	url := "http://" + front + "/"
	if err := waitReady(ctx, sup.last(), 10*time.Second, func() error { return probeHTTP(url) }); err != nil {
		return "", nil, fmt.Errorf("%w\nnginx error logs:\n%s\n%s", err,
			tail(filepath.Join(h.dir, "nginx-front", "error.log"), 10), tail(filepath.Join(h.dir, "nginx-back", "error.log"), 10))
	}
	return url, roots, nil
}

// pathNames lists the valid -only values.
func pathNames() string {
	var n []string
	for _, p := range allPaths {
		n = append(n, p.name)
	}
	return strings.Join(n, ",")
}

// applyPolicy applies yaml (policies, Services) to the control plane in
// data with the CLI.
func applyPolicy(ctx context.Context, h *harness, data, yaml string) error {
	f := filepath.Join(data, "apply.yaml")
	if err := os.WriteFile(f, []byte(yaml), 0o644); err != nil {
		return err
	}
	var err error
	for range 50 { // the admin API comes up just after the gRPC port
		var out []byte
		out, err = exec.CommandContext(ctx, h.trellis, "--data-dir", data, "apply", "-f", f).CombinedOutput()
		if err == nil {
			return nil
		}
		err = fmt.Errorf("trellis apply: %w: %s", err, out)
		time.Sleep(200 * time.Millisecond)
	}
	return err
}
