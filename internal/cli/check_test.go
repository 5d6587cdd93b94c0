package cli

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"trellis.dev/trellis/internal/control"
	"trellis.dev/trellis/internal/push"
	"trellis.dev/trellis/internal/testpki"
)

// TestCheckProxiesGolden: a NACKed proxy, a stale one and an expired
// certificate each give a ✗ with what to do; the verdict counts them.
func TestCheckProxiesGolden(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	list := proxyFixture(now)
	list = append(list, push.ProxyStatus{NodeID: "web-default-4", Service: "web", Namespace: "default", State: push.StateStale, CertExpiry: now.Add(20 * time.Hour)})
	var buf bytes.Buffer
	failed := printChecks(&buf, []checkSection{{title: "proxies", lines: checkProxies(list, now)}})
	if failed != 3 {
		t.Errorf("%d failed, want 3 (not synced, NACK, expiring)", failed)
	}
	golden(t, "check-proxies", buf.Bytes())

	buf.Reset()
	healthy := []push.ProxyStatus{{NodeID: "web-default-2", State: push.StateSynced, CertExpiry: now.Add(20 * time.Hour)}}
	if failed := printChecks(&buf, []checkSection{{title: "proxies", lines: checkProxies(healthy, now)}}); failed != 0 {
		t.Errorf("healthy proxy: %d failed:\n%s", failed, buf.String())
	}
	if !strings.HasSuffix(buf.String(), "Status check results are ✓\n") || strings.Contains(buf.String(), "✗") {
		t.Errorf("healthy proxy:\n%s", buf.String())
	}
}

func writeCA(t *testing.T, dir string, opts ...testpki.Option) {
	t.Helper()
	ca := testpki.NewCA(t, opts...)
	if err := os.WriteFile(filepath.Join(dir, control.CAFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestCheckCA(t *testing.T) {
	now := time.Now()
	validFor := func(d time.Duration) testpki.Option {
		return func(c *x509.Certificate) { c.NotBefore, c.NotAfter = now.Add(-time.Hour), now.Add(d) }
	}
	tests := []struct {
		name string
		opt  testpki.Option
		ok   bool
		want string
	}{
		{"a year left", validFor(365 * 24 * time.Hour), true, `CA root "testpki root" is valid until`},
		{"a week left", validFor(7 * 24 * time.Hour), false, `CA root "testpki root" expires in 168h`},
		{"expired", validFor(-time.Minute), false, "expired on"},
		{"not yet valid", func(c *x509.Certificate) { c.NotBefore = now.Add(time.Hour) }, false, "is not valid until"},
	}
	for _, tt := range tests {
		dir := t.TempDir()
		writeCA(t, dir, tt.opt)
		lines := checkCA(checkEnv{dataDir: dir, now: time.Now})
		if len(lines) != 1 || lines[0].ok != tt.ok || !strings.Contains(lines[0].what, tt.want) {
			t.Errorf("%s: %+v; want ok=%v and %q", tt.name, lines, tt.ok, tt.want)
		}
		if !tt.ok && lines[0].next == "" {
			t.Errorf("%s: a ✗ without what to do next", tt.name)
		}
	}
	if lines := checkCA(checkEnv{dataDir: t.TempDir(), now: time.Now}); len(lines) != 1 || lines[0].ok {
		t.Errorf("missing ca.crt: %+v", lines)
	}
}

func TestCheckClockAndSkew(t *testing.T) {
	dir := t.TempDir()
	writeCA(t, dir)
	at := func(ts time.Time) checkEnv { return checkEnv{dataDir: dir, now: func() time.Time { return ts }} }
	if l := checkClock(at(time.Now())); !l.ok {
		t.Errorf("now: %+v", l)
	}
	if l := checkClock(at(time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC))); l.ok || !strings.Contains(l.what, "before 2025-01-01") {
		t.Errorf("2001: %+v", l)
	}
	// Sane, but before the CA root was made: certificates would not verify.
	if l := checkClock(at(time.Now().Add(-3 * time.Hour))); l.ok || !strings.Contains(l.what, "before the CA root was made") {
		t.Errorf("behind the CA: %+v", l)
	}
	h := http.Header{}
	h.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	if l := checkSkew(time.Now(), h); !l.ok {
		t.Errorf("same clock: %+v", l)
	}
	if l := checkSkew(time.Now().Add(2*time.Minute), h); l.ok || !strings.Contains(l.what, "clocks differ by 2m") {
		t.Errorf("2 minutes off: %+v", l)
	}
}

// TestCheckPreflight: a taken port, a data dir that cannot be written and
// a missing tool are each a ✗ with the fix, and the command exits 1; with
// all of them fine it exits 0.
func TestCheckPreflight(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	freeAddr := free.Addr().String()
	free.Close()

	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "trellis"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin)
	var out, errb bytes.Buffer
	code := run([]string{"check", "--pre", "--data-dir", filepath.Join(t.TempDir(), "new"), "--listen", freeAddr}, nil, &out, &errb)
	if code != 0 || strings.Contains(out.String(), "✗") || !strings.Contains(out.String(), "can be created") {
		t.Errorf("all fine: exit %d\n%s%s", code, out.String(), errb.String())
	}

	t.Setenv("PATH", t.TempDir())
	ro := t.TempDir()
	if err := os.Chmod(ro, 0o500); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	code = run([]string{"check", "--pre", "--data-dir", ro, "--listen", held.Addr().String()}, nil, &out, &errb)
	got := out.String()
	wants := []string{"✗ port " + held.Addr().String() + " is in use", "    → stop what listens there", "✗ trellis is not on PATH", "→ run 'make install'", "Status check results are ✗"}
	if os.Geteuid() != 0 { // root writes anywhere
		wants = append(wants, "✗ data dir "+ro+" is not writable")
	}
	for _, want := range wants {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if code != 1 {
		t.Errorf("exit %d with failures, want 1", code)
	}
}

// TestCheckHealthLive: against a real control plane with no proxies,
// every check passes; without one, the ✗ says how to start it.
func TestCheckHealthLive(t *testing.T) {
	lc := startLiveControl(t)
	code, out, errOut := lc.run("", "check")
	for _, want := range []string{"✓ control plane answers at https://127.0.0.1:", "✓ metrics are served at http://127.0.0.1:", "✓ clocks agree",
		"✓ CA root", "✓ no proxies connected", "Status check results are ✓"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s%s", want, out, errOut)
		}
	}
	if code != 0 {
		t.Errorf("exit %d, want 0:\n%s", code, out)
	}

	var o, e bytes.Buffer
	dir := t.TempDir()
	code = run([]string{"check", "--data-dir", dir}, nil, &o, &e)
	if code != 1 || !strings.Contains(o.String(), "✗ no control plane found") || !strings.Contains(o.String(), "start one with 'trellis control --data-dir "+dir+"'") {
		t.Errorf("no control plane: exit %d\n%s", code, o.String())
	}
}

// TestCheckReplicasGolden: proxies counted per replica; a replica with none
// warns; a proxy whose replica is gone fails; no leader fails.
func TestCheckReplicasGolden(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	proxies := proxyFixture(now) // api on cp1, web-2 on cp2, web-3 on none yet
	proxies = append(proxies, push.ProxyStatus{NodeID: "web-default-4", Replica: "cp9", State: push.StateSynced})
	reps := []control.Replica{{ID: "cp1", Leader: true}, {ID: "cp2"}, {ID: "cp3"}}
	var buf bytes.Buffer
	failed := printChecks(&buf, []checkSection{{title: "replicas", lines: checkReplicas(reps, proxies)}})
	if failed != 1 {
		t.Errorf("%d failed, want 1 (a proxy on a stopped replica)", failed)
	}
	buf.WriteString("\n")
	leaderless := []control.Replica{{ID: "cp1"}, {ID: "cp2"}}
	if failed := printChecks(&buf, []checkSection{{title: "replicas", lines: checkReplicas(leaderless, proxies[:2])}}); failed != 1 {
		t.Errorf("no leader: %d failed, want 1", failed)
	}
	golden(t, "check-replicas", buf.Bytes())
}
