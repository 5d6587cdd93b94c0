// Package etcdtest starts a real etcd server for tests: one member on
// loopback, random free ports, a temporary data directory, stopped by
// t.Cleanup. A test that needs etcd is skipped only when no etcd binary is
// installed (Debian: apt-get install etcd-server). Production code must not
// import it.
package etcdtest

import (
	"bytes"
	"errors"
	"fmt"
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

// Env names an etcd binary to use instead of the one on PATH or in /usr/bin.
const Env = "TRELLIS_ETCD"

// Options tune Start. The zero value is a plain-HTTP server.
type Options struct {
	// CertFile and KeyFile make the client URL https; ClientCAFile also
	// requires clients to present a certificate signed by it.
	CertFile, KeyFile, ClientCAFile string
	// Args are extra etcd flags.
	Args []string
}

// Server is a running etcd.
type Server struct {
	// Endpoint is the client URL, http://127.0.0.1:<port> (https with TLS).
	Endpoint string
	DataDir  string

	bin  string
	args []string

	mu   sync.Mutex
	cmd  *exec.Cmd     // nil when stopped
	log  *syncBuffer   // this run's output
	done chan struct{} // closed when this run's process exited
}

// Binary returns the etcd binary to run, or "" if none is installed.
func Binary() string {
	if p := os.Getenv(Env); p != "" {
		return p
	}
	if p, err := exec.LookPath("etcd"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/bin/etcd"); err == nil {
		return "/usr/bin/etcd"
	}
	return ""
}

// Start runs etcd until the test ends, skipping the test if etcd is not
// installed. A start that loses its ports to another process is retried.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	bin := Binary()
	if bin == "" {
		t.Skip("etcd not installed (apt-get install etcd-server, or set " + Env + ")")
	}
	var err error
	for range 3 {
		s := newServer(t, bin, o)
		if err = s.run(); err == nil {
			t.Cleanup(s.Stop)
			return s
		}
	}
	t.Fatalf("etcdtest: %v", err)
	return nil
}

func newServer(t testing.TB, bin string, o Options) *Server {
	scheme := "http"
	if o.CertFile != "" {
		scheme = "https"
	}
	s := &Server{
		Endpoint: fmt.Sprintf("%s://127.0.0.1:%d", scheme, freePort()),
		DataDir:  filepath.Join(t.TempDir(), "data"),
		bin:      bin,
	}
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", freePort())
	s.args = []string{
		"--name", "test",
		"--data-dir", s.DataDir,
		"--listen-client-urls", s.Endpoint,
		"--advertise-client-urls", s.Endpoint,
		"--listen-peer-urls", peerURL,
		"--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "test=" + peerURL,
		"--initial-cluster-state", "new",
		"--logger", "zap",
	}
	if o.CertFile != "" {
		s.args = append(s.args, "--cert-file", o.CertFile, "--key-file", o.KeyFile)
	}
	if o.ClientCAFile != "" {
		s.args = append(s.args, "--client-cert-auth", "--trusted-ca-file", o.ClientCAFile)
	}
	s.args = append(s.args, o.Args...)
	return s
}

// run starts the process and waits until it serves clients.
func (s *Server) run() error {
	s.mu.Lock()
	cmd := exec.Command(s.bin, s.args...)
	log, done := &syncBuffer{}, make(chan struct{})
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = procAttr()
	if err := cmd.Start(); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	go func() { cmd.Wait(); close(done) }()
	s.cmd, s.log, s.done = cmd, log, done
	s.mu.Unlock()
	if err := waitReady(log, done, 30*time.Second); err != nil {
		s.Kill()
		return fmt.Errorf("%w; etcd output:\n%s", err, log.tail(4000))
	}
	return nil
}

// waitReady waits for etcd to say it serves clients, which it does once its
// single member is leader and published ("serving client traffic" in 3.4,
// "ready to serve client requests" later).
func waitReady(log *syncBuffer, done <-chan struct{}, timeout time.Duration) error {
	deadline := time.After(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return errors.New("etcd exited before it was ready")
		case <-deadline:
			return fmt.Errorf("etcd not ready within %v", timeout)
		case <-tick.C:
			if out := log.String(); strings.Contains(out, "serving client traffic") || strings.Contains(out, "ready to serve client requests") {
				return nil
			}
		}
	}
}

// Stop ends etcd (SIGTERM, then SIGKILL after 5s) and waits for it. It does
// nothing if etcd is stopped.
func (s *Server) Stop() { s.end(syscall.SIGTERM) }

// Kill ends etcd at once, as a crash would.
func (s *Server) Kill() { s.end(syscall.SIGKILL) }

func (s *Server) end(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(sig)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
}

// Restart stops etcd and starts it again on the same ports and data, as an
// operator's restart (or a crash and recovery) would.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	if err := s.run(); err != nil {
		t.Fatalf("etcdtest: restart: %v", err)
	}
}

// Log is what etcd printed since it last started.
func (s *Server) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.String()
}

// freePort returns a loopback TCP port for etcd, or 0.
func freePort() int {
	p, _ := loopback.Port()
	return p
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func (b *syncBuffer) tail(n int) string {
	s := b.String()
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
