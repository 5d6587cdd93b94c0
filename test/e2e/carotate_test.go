package e2e

import (
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"trellis.dev/trellis/internal/identity"
	"trellis.dev/trellis/internal/store/etcdtest"
	"trellis.dev/trellis/internal/testpki"
)

// load sends GETs to url through c at about rate a second from workers
// goroutines until stop, counting answers that are not 200 from the app.
type load struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	firstErr   string
	stop       chan struct{}
	wg         sync.WaitGroup
}

func startLoad(c *http.Client, url, prefix string, rate, workers int) *load {
	l := &load{stop: make(chan struct{})}
	every := time.Duration(workers) * time.Second / time.Duration(rate)
	for range workers {
		l.wg.Go(func() {
			t := time.NewTicker(every)
			defer t.Stop()
			for {
				select {
				case <-l.stop:
					return
				case <-t.C:
				}
				code, body, err := get(c, url)
				if err != nil || code != 200 || !strings.HasPrefix(body, prefix) {
					l.failed.Add(1)
					l.mu.Lock()
					if l.firstErr == "" {
						l.firstErr = fmt.Sprintf("%s: %d %q %v", time.Now().Format(time.StampMilli), code, body, err)
					}
					l.mu.Unlock()
					continue
				}
				l.ok.Add(1)
			}
		})
	}
	return l
}

// end stops the load and fails t if any request failed.
func (l *load) end(t *testing.T, when string) int64 {
	t.Helper()
	close(l.stop)
	l.wg.Wait()
	if n := l.failed.Load(); n > 0 {
		t.Errorf("%s: %d of %d requests failed; first: %s", when, n, n+l.ok.Load(), l.firstErr)
	}
	return l.ok.Load()
}

// bundleFile returns the DER roots in the control plane's ca.crt.
func bundleFile(t *testing.T, dir string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			return out
		}
		out = append(out, blk.Bytes)
	}
}

// proxyCA is what proxy-status says of a proxy's CA state.
type proxyCA struct {
	NodeID      string `json:"nodeId"`
	Service     string `json:"service"`
	CertIssuer  string `json:"certIssuer"`
	TrustBundle string `json:"trustBundle"`
}

func proxiesCA(t *testing.T, cp *controlPlane) []proxyCA {
	t.Helper()
	out, err := cp.cli(t, "proxy-status", "-o", "json")
	if err != nil {
		t.Fatalf("proxy-status: %v\n%s", err, out)
	}
	var list []proxyCA
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("proxy-status json: %v\n%s", err, out)
	}
	return list
}

// TestCARotationUnderLoad: `trellis ca rotate --wait` replaces the root and
// intermediate while ~500 requests a second cross two proxy hops (a client
// and two server replicas), without one failing; afterwards every proxy's
// certificate chains to the new root, the old root is in no proxy's bundle
// nor in ca.crt, and the rotation's steps are in the audit log.
func TestCARotationUnderLoad(t *testing.T) {
	cp := startControl(t, "")
	oldRoot := bundleFile(t, cp.dir)
	if len(oldRoot) != 1 {
		t.Fatalf("ca.crt holds %d roots before rotation, want 1", len(oldRoot))
	}
	cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "web", nil)})
	cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "web", nil)})
	client := cp.proxy(t, proxyConfig{service: "client", upstreams: []string{"web"}})
	c := client.client()
	getAll(t, c, "http://web/", "web ", "before rotation")

	l := startLoad(c, "http://web/", "web ", 500, 16)
	time.Sleep(2 * time.Second) // pooled connections under the old chain
	start := time.Now()
	out, err := cp.cli(t, "ca", "rotate", "--wait", "--timeout", "25s")
	took := time.Since(start)
	if err != nil {
		l.end(t, "during rotation")
		t.Fatalf("ca rotate: %v\n%s\n%s", err, out, tail(cp.proc.out.String(), 40))
	}
	time.Sleep(2 * time.Second) // new connections under the new chain only
	n := l.end(t, "across the rotation")
	t.Logf("rotation took %s; %d requests at ~500/s, 0 failed\n%s", took, n, out)

	newRoot := bundleFile(t, cp.dir)
	if len(newRoot) != 1 || string(newRoot[0]) == string(oldRoot[0]) {
		t.Fatalf("ca.crt after rotation holds %d roots (old one among them: %t), want the new root alone",
			len(newRoot), len(newRoot) > 0 && string(newRoot[0]) == string(oldRoot[0]))
	}
	wantIssuer := hex.EncodeToString(identity.Fingerprint(newRoot[0]))
	wantBundle := hex.EncodeToString(identity.BundleFingerprint(newRoot))
	eventually(t, 5*time.Second, "every proxy to report the new root alone", func() bool {
		list := proxiesCA(t, cp)
		if len(list) != 3 {
			return false
		}
		for _, p := range list {
			if p.CertIssuer != wantIssuer || p.TrustBundle != wantBundle {
				return false
			}
		}
		return true
	})
	getAll(t, c, "http://web/", "web ", "after rotation")

	audit, err := cp.cli(t, "audit", "-o", "json")
	if err != nil {
		t.Fatalf("audit: %v\n%s", err, audit)
	}
	for _, action := range []string{"ca.rotate.start", "ca.rotate.reissue", "ca.rotate.complete"} {
		if !strings.Contains(audit, action) {
			t.Errorf("audit log lacks %s:\n%s", action, audit)
		}
	}
}

// TestCARotateRefusedForOperatorCA: with a root from files the control
// plane refuses `trellis ca rotate`, saying who rotates it and how.
func TestCARotateRefusedForOperatorCA(t *testing.T) {
	ca := testpki.NewCA(t)
	keyDER, err := x509.MarshalECPrivateKey(ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(t.TempDir(), "ca.crt"), filepath.Join(t.TempDir(), "ca.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cp := startControl(t, "", "--ca-cert", certFile, "--ca-key", keyFile)
	out, err := cp.cli(t, "ca", "rotate")
	if err == nil {
		t.Fatalf("ca rotate with an operator's root succeeded:\n%s", out)
	}
	for _, want := range []string{"--ca-cert", "its owner rotates it", "restart each replica"} {
		if !strings.Contains(out, want) {
			t.Errorf("ca rotate error does not mention %q:\n%s", want, out)
		}
	}
	st, err := cp.cli(t, "ca", "status")
	if err != nil || !strings.Contains(st, "idle") {
		t.Fatalf("ca status: %v\n%s", err, st)
	}
}

// TestCARotationTwoReplicas: on etcd with two control-plane replicas and
// the proxies split between them (web on A, the client on B), a rotation
// started on A completes (each replica stores the reports of the proxies
// it watches for the other to see) with no failed request, and both data
// dirs end with the new root alone.
func TestCARotationTwoReplicas(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	flags := []string{"--store", "etcd", "--etcd-endpoints", srv.Endpoint, "--etcd-prefix", "/rotate"}
	a := startControl(t, "", flags...)
	dirB := t.TempDir()
	tok, err := os.ReadFile(filepath.Join(a.dir, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dirB, "admin-token"), tok, 0o600); err != nil {
		t.Fatal(err)
	}
	b := startControl(t, dirB, flags...)
	oldRoot := bundleFile(t, a.dir)
	a.proxy(t, proxyConfig{service: "web", app: appServer(t, "web", nil)})
	client := b.proxy(t, proxyConfig{service: "client", upstreams: []string{"web"}})
	c := client.client()
	getAll(t, c, "http://web/", "web ", "before rotation")

	l := startLoad(c, "http://web/", "web ", 200, 8)
	out, err := a.cli(t, "ca", "rotate", "--wait", "--timeout", "25s")
	if err != nil {
		l.end(t, "during rotation")
		t.Fatalf("ca rotate on replica A: %v\n%s", err, out)
	}
	time.Sleep(time.Second)
	n := l.end(t, "across the rotation")
	t.Logf("%d requests, 0 failed\n%s", n, out)
	for _, cp := range []*controlPlane{a, b} {
		dir := cp.dir
		eventually(t, 5*time.Second, "ca.crt of "+dir+" to hold the new root alone", func() bool {
			r := bundleFile(t, dir)
			return len(r) == 1 && string(r[0]) != string(oldRoot[0])
		})
	}
	newRoot := bundleFile(t, a.dir)
	if string(bundleFile(t, b.dir)[0]) != string(newRoot[0]) {
		t.Fatal("replicas ended with different roots")
	}
	getAll(t, c, "http://web/", "web ", "after rotation")
}
