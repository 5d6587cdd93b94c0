// Package e2e runs the real trellis binary: a control plane, proxies and
// small apps as processes and servers on loopback.
package e2e

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"trellis.dev/trellis/internal/loopback"
)

var trellisBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "trellis-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	trellisBin = filepath.Join(dir, "trellis")
	build := exec.Command("go", "build", "-o", trellisBin, "trellis.dev/trellis/cmd/trellis")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: build trellis:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freeAddr returns a loopback address nothing listens on right now, below
// the ephemeral range (internal/loopback says why).
func freeAddr(t *testing.T) string {
	t.Helper()
	a, err := loopback.Addrs(1)
	if err != nil {
		t.Fatal(err)
	}
	return a[0]
}

// process is a child started by a test; it is killed (whole group) at cleanup.
type process struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func start(t *testing.T, name string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(trellisBin, args...)
	p := &process{cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
		if t.Failed() {
			t.Logf("--- output of %s ---\n%s", name, tail(p.out.String(), 60))
		}
	})
	return p
}

func tail(s string, lines int) string {
	parts := strings.Split(s, "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits for the process to exit and returns its exit code.
func (p *process) wait(t *testing.T, limit time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(limit):
		t.Fatalf("process %v did not exit within %s", p.cmd.Args, limit)
	}
	if p.err == nil {
		return 0
	}
	if ee, ok := p.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	t.Fatalf("wait: %v", p.err)
	return -1
}

// eventually polls cond until it holds or the limit passes.
func eventually(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s", limit, what)
}

type controlPlane struct {
	dir, grpc, admin, metrics string
	extra                     []string
	proc                      *process
	// tokens: join token files (in tokenDir) by "ns/sa", see joinToken.
	mu       sync.Mutex
	tokenDir string
	tokens   map[string]string
}

func startControl(t *testing.T, dir string, extra ...string) *controlPlane {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	cp := &controlPlane{dir: dir, grpc: freeAddr(t), admin: freeAddr(t), metrics: freeAddr(t), extra: extra, tokenDir: t.TempDir()}
	cp.start(t)
	return cp
}

func (cp *controlPlane) start(t *testing.T) {
	t.Helper()
	os.Remove(filepath.Join(cp.dir, "control.json"))
	args := append([]string{"control", "--data-dir", cp.dir, "--grpc-addr", cp.grpc, "--admin-addr", cp.admin, "--metrics-addr", cp.metrics, "--log-level", "debug"}, cp.extra...)
	cp.proc = start(t, "control", args...)
	eventually(t, 15*time.Second, "control plane to start", func() bool {
		if cp.proc.exited() {
			t.Fatalf("control plane exited:\n%s", cp.proc.out.String())
		}
		if _, err := os.Stat(filepath.Join(cp.dir, "control.json")); err != nil {
			return false
		}
		c, err := net.Dial("tcp", cp.grpc)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
}

func (cp *controlPlane) kill(t *testing.T) {
	t.Helper()
	_ = syscall.Kill(-cp.proc.cmd.Process.Pid, syscall.SIGKILL)
	<-cp.proc.done
}

// cli runs a trellis CLI command against this control plane.
func (cp *controlPlane) cli(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, trellisBin, append([]string{"--data-dir", cp.dir}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (cp *controlPlane) apply(t *testing.T, yaml string) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "res.yaml")
	if err := os.WriteFile(f, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := cp.cli(t, "apply", "-f", f); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
}

type sidecar struct {
	name                     string
	admin, inbound, outbound string
	upstreams                map[string]string
	proc                     *process
}

type proxyConfig struct {
	service   string
	app       string
	labels    string
	upstreams []string // service names; each gets a free local port
	command   []string
	extra     []string
	noWait    bool
	heartbeat string // default 1s
}

func (cp *controlPlane) proxy(t *testing.T, pc proxyConfig) *sidecar {
	t.Helper()
	s := &sidecar{name: pc.service, admin: freeAddr(t), inbound: freeAddr(t), outbound: freeAddr(t), upstreams: map[string]string{}}
	if pc.heartbeat == "" {
		pc.heartbeat = "1s"
	}
	args := []string{"proxy", "--data-dir", cp.dir, "--service", pc.service,
		"--admin", s.admin, "--inbound", s.inbound, "--outbound", s.outbound,
		"--heartbeat", pc.heartbeat, "--log-level", "debug"}
	if pc.app != "" {
		args = append(args, "--app", pc.app)
	}
	if pc.labels != "" {
		args = append(args, "--labels", pc.labels)
	}
	for _, u := range pc.upstreams {
		s.upstreams[u] = freeAddr(t)
		args = append(args, "--upstream", u+"="+s.upstreams[u])
	}
	if flagValue(pc.extra, "--token-file") == "" {
		args = append(args, "--token-file", cp.joinToken(t, pc))
	}
	args = append(args, pc.extra...)
	if len(pc.command) > 0 {
		args = append(append(args, "--"), pc.command...)
	}
	s.proc = start(t, "proxy "+pc.service, args...)
	if !pc.noWait {
		s.waitReady(t)
	}
	return s
}

// joinToken returns a file holding a join token for the identity the proxy
// pc will ask for (its --service-account and --namespace, else the service
// name and default), created with the CLI the first time that identity
// joins this control plane and reused after, so a proxy started while the
// control plane is down (the token lives in its store) still finds one.
// Unbounded uses, so restarts and renewal fallbacks work too.
func (cp *controlPlane) joinToken(t *testing.T, pc proxyConfig) string {
	t.Helper()
	sa := cmp.Or(flagValue(pc.extra, "--service-account"), pc.service)
	ns := cmp.Or(flagValue(pc.extra, "--namespace"), "default")
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if f, ok := cp.tokens[ns+"/"+sa]; ok {
		return f
	}
	f := filepath.Join(cp.tokenDir, ns+"-"+sa+".token")
	if out, err := cp.cli(t, "token", "create", "--service-account", sa, "--namespace", ns, "--ttl", "1h", "--uses", "0", "--file", f); err != nil {
		t.Fatalf("token create for %s/%s: %v\n%s", ns, sa, err, out)
	}
	if cp.tokens == nil {
		cp.tokens = map[string]string{}
	}
	cp.tokens[ns+"/"+sa] = f
	return f
}

// flagValue is the value of flag in args ("--flag v" or "--flag=v"), or "".
func flagValue(args []string, flag string) string {
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			return args[i+1]
		}
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			return v
		}
	}
	return ""
}

func (s *sidecar) waitReady(t *testing.T) {
	t.Helper()
	eventually(t, 20*time.Second, "proxy "+s.name+" ready", func() bool {
		if s.proc.exited() {
			t.Fatalf("proxy %s exited:\n%s", s.name, s.proc.out.String())
		}
		resp, err := http.Get("http://" + s.admin + "/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

// config returns the proxy's current snapshot from its admin port.
func (s *sidecar) config(t *testing.T) map[string]any {
	t.Helper()
	resp, err := http.Get("http://" + s.admin + "/config")
	if err != nil {
		t.Fatalf("GET /config: %v", err)
	}
	defer resp.Body.Close()
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatalf("decode /config: %v", err)
	}
	return m
}

// endpointCount counts the endpoints of service (name) in the proxy's config.
func (s *sidecar) endpointCount(t *testing.T, service string) int {
	t.Helper()
	svcs, _ := s.config(t)["services"].([]any)
	n := 0
	for _, sv := range svcs {
		m, _ := sv.(map[string]any)
		if m["name"] == service {
			eps, _ := m["endpoints"].([]any)
			n += len(eps)
		}
	}
	return n
}

// viaProxy is an HTTP client that sends every request through the proxy's
// outbound port.
func (s *sidecar) client() *http.Client {
	proxyURL := must(url.Parse("http://" + s.outbound))
	return &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL), MaxIdleConnsPerHost: 64},
	}
}

// appServer starts an HTTP app on loopback answering with its name.
func appServer(t *testing.T, name string, h http.HandlerFunc) string {
	t.Helper()
	if h == nil {
		h = func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-App", name)
			fmt.Fprintf(w, "%s %s", name, r.URL.Path)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// getAll sends 20 GETs to url and fails the test unless every one answers
// 200 with a body starting with prefix (which app served it).
func getAll(t *testing.T, c *http.Client, url, prefix, when string) {
	t.Helper()
	for i := 0; i < 20; i++ {
		code, body, err := get(c, url)
		if err != nil || code != 200 || !strings.HasPrefix(body, prefix) {
			t.Fatalf("%s, request %d: %d %q %v; want 200 from %q", when, i, code, body, err, strings.TrimSpace(prefix))
		}
	}
}

func get(c *http.Client, url string) (int, string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
