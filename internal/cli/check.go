package cli

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"trellis.dev/trellis/internal/control"
	"trellis.dev/trellis/internal/push"
)

// Thresholds of trellis check.
const (
	// caWarnBefore: a CA root that expires sooner must be rotated now.
	caWarnBefore = 30 * 24 * time.Hour
	// certWarnBefore: a proxy renews at 45-55% of its certificate's life
	// (about 12 h of 24 h); one with less than this left has failed to renew.
	certWarnBefore = time.Hour
	// maxClockSkew between this machine and the control plane; certificates
	// are checked against both clocks.
	maxClockSkew = 30 * time.Second
)

// checkLine is one line of trellis check: ✓ or ✗, what was checked and,
// for a ✗, what to do next.
type checkLine struct {
	ok bool
	// warn: passes, but printed with "!" and its next step (a choice the
	// operator made, such as dev mode, that they must not forget).
	warn       bool
	what, next string
}

func pass(format string, a ...any) checkLine {
	return checkLine{ok: true, what: fmt.Sprintf(format, a...)}
}

func fail(next, format string, a ...any) checkLine {
	return checkLine{what: fmt.Sprintf(format, a...), next: next}
}

// checkSection is a titled group of lines.
type checkSection struct {
	title string
	lines []checkLine
}

// checkEnv is what the checks read of the world, so tests can fix it.
type checkEnv struct {
	dataDir  string
	now      func() time.Time
	lookPath func(string) (string, error)
	listen   []listenAddr
}

// listenAddr is a port pre-flight wants free, and the flag that moves it.
type listenAddr struct{ addr, flag string }

func defaultListenAddrs() []listenAddr {
	return []listenAddr{
		{control.DefaultGRPCAddr, "trellis control --grpc-addr"},
		{control.DefaultAdminAddr, "trellis control --admin-addr"},
		{control.DefaultMetricsAddr, "trellis control --metrics-addr"},
		{"127.0.0.1:15000", "trellis proxy --admin"},
		{"127.0.0.1:15001", "trellis proxy --outbound"},
		{"127.0.0.1:15006", "trellis proxy --inbound"},
	}
}

func newCheckCmd(g *globals) *cobra.Command {
	var pre bool
	var addrs []string
	cmd := &cobra.Command{
		Use:   "check [--pre]",
		Short: "Check that this machine can run Trellis (--pre) or that the running mesh is healthy",
		Long: `Check, as 'linkerd check' does, and print one line per check: ✓ when it
passes, ✗ with what to do next when it does not. The exit code is 1 when any
check fails.

With --pre (before the first 'trellis control'): the data dir is writable,
the default ports are free, the clock is sane, the tools are on PATH.

Without it (a control plane is running with --data-dir): the control plane
answers, its metrics are served, its clock agrees with this one, the CA is
valid and not near expiry, and every connected proxy is synced, has not
refused (NACKed) its config and holds a certificate that is not near expiry.`,
		Example: `  trellis check --pre
  trellis check
  trellis check --data-dir /var/lib/trellis`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			env := checkEnv{dataDir: g.dataDir, now: time.Now, lookPath: exec.LookPath, listen: defaultListenAddrs()}
			if cmd.Flags().Changed("listen") {
				env.listen = nil
				for _, a := range addrs {
					env.listen = append(env.listen, listenAddr{addr: a, flag: "its --*-addr flag"})
				}
			}
			var sections []checkSection
			if pre {
				sections = preflight(env)
			} else {
				sections = health(cmd.Context(), env)
			}
			if failed := printChecks(g.stdout, sections); failed > 0 {
				return exitError{code: 1}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&pre, "pre", false, "pre-flight checks: run them before the first 'trellis control'")
	cmd.Flags().StringArrayVar(&addrs, "listen", nil, "with --pre: an address that must be free (repeatable; default the control plane's and one proxy's default ports)")
	return cmd
}

// printChecks prints the sections and a verdict, and returns how many
// checks failed.
func printChecks(w io.Writer, sections []checkSection) int {
	failed := 0
	for i, s := range sections {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintln(w, s.title)
		fmt.Fprintln(w, strings.Repeat("-", len([]rune(s.title))))
		for _, l := range s.lines {
			if l.ok && l.warn {
				fmt.Fprintf(w, "! %s\n", l.what)
				for _, n := range strings.Split(l.next, "\n") {
					fmt.Fprintf(w, "    → %s\n", n)
				}
				continue
			}
			if l.ok {
				fmt.Fprintf(w, "✓ %s\n", l.what)
				continue
			}
			failed++
			fmt.Fprintf(w, "✗ %s\n", l.what)
			for _, n := range strings.Split(l.next, "\n") {
				fmt.Fprintf(w, "    → %s\n", n)
			}
		}
	}
	fmt.Fprintln(w)
	if failed > 0 {
		fmt.Fprintf(w, "Status check results are ✗ (%d failed)\n", failed)
	} else {
		fmt.Fprintln(w, "Status check results are ✓")
	}
	return failed
}

func preflight(env checkEnv) []checkSection {
	lines := []checkLine{checkDataDirWritable(env.dataDir)}
	for _, a := range env.listen {
		lines = append(lines, checkPortFree(a))
	}
	lines = append(lines, checkClock(env), checkTool(env, "trellis",
		"run 'make install' (it installs to $(go env GOPATH)/bin, or PREFIX=/usr/local) and put that directory on PATH"))
	return []checkSection{{title: "pre-flight", lines: lines}}
}

func checkDataDirWritable(dir string) checkLine {
	probe := dir
	for {
		if _, err := os.Stat(probe); err == nil {
			break
		}
		parent := filepath.Dir(probe)
		if parent == probe {
			break
		}
		probe = parent
	}
	f, err := os.CreateTemp(probe, ".trellis-check-*")
	if err != nil {
		return fail("pass --data-dir (or set TRELLIS_DATA_DIR) to a directory you can write", "data dir %s is not writable: %v", dir, err)
	}
	name := f.Name()
	f.Close()
	os.Remove(name)
	if probe != dir {
		return pass("data dir %s can be created", dir)
	}
	return pass("data dir %s is writable", dir)
}

func checkPortFree(a listenAddr) checkLine {
	ln, err := net.Listen("tcp", a.addr)
	if err != nil {
		_, port, _ := net.SplitHostPort(a.addr)
		return fail(fmt.Sprintf("stop what listens there (ss -ltnp 'sport = :%s'), or give %s another address", port, a.flag),
			"port %s is in use", a.addr)
	}
	ln.Close()
	return pass("port %s is free", a.addr)
}

// checkClock: the clock is past clockFloor and not before the CA's roots
// were made (certificates would look not yet valid).
func checkClock(env checkEnv) checkLine {
	now := env.now()
	// Every sane clock is past this date (this code did not exist before).
	clockFloor := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	const next = "set the system clock (timedatectl set-ntp true)"
	if now.Before(clockFloor) {
		return fail(next, "clock reads %s, before %s", now.UTC().Format(time.RFC3339), clockFloor.Format("2006-01-02"))
	}
	roots, err := readRoots(filepath.Join(env.dataDir, control.CAFile))
	if err == nil {
		for _, r := range roots {
			if now.Before(r.NotBefore) {
				return fail(next, "clock reads %s, before the CA root was made (%s)", now.UTC().Format(time.RFC3339), r.NotBefore.UTC().Format(time.RFC3339))
			}
		}
	}
	return pass("clock is sane (%s)", now.UTC().Format(time.RFC3339))
}

func checkTool(env checkEnv, tool, next string) checkLine {
	p, err := env.lookPath(tool)
	if err != nil {
		return fail(next, "%s is not on PATH", tool)
	}
	return pass("%s is on PATH (%s)", tool, p)
}

// health checks a running control plane and its proxies.
func health(ctx context.Context, env checkEnv) []checkSection {
	cp := checkSection{title: "control plane"}
	c, err := newAdminClient(env.dataDir)
	if err != nil {
		cp.lines = append(cp.lines, fail("start one with 'trellis control --data-dir "+env.dataDir+"', or pass the --data-dir it runs with",
			"no control plane found: %v", errors.Unwrap(err)))
		return []checkSection{cp}
	}
	list := []push.ProxyStatus{}
	hdr, err := c.roundTrip(ctx, "GET", "/v1/proxies", nil, &list)
	if err != nil {
		cp.lines = append(cp.lines, fail("is 'trellis control' still running? its log says why it stopped; restart it with the same --data-dir",
			"control plane does not answer at %s: %v", c.base, err))
		return []checkSection{cp}
	}
	cp.lines = append(cp.lines, pass("control plane answers at %s", c.base))
	cp.lines = append(cp.lines, checkMetrics(ctx, env.dataDir), checkBootstrap(env.dataDir), checkClock(env), checkSkew(env.now(), hdr))
	cp.lines = append(cp.lines, checkCA(env)...)
	sections := []checkSection{cp, {title: "proxies", lines: checkProxies(list, env.now())}}
	var reps replicaList
	if err := c.do(ctx, "GET", "/v1/replicas", nil, &reps); err == nil {
		sections = append(sections, checkSection{title: "replicas", lines: checkReplicas(reps.Replicas, list)})
	}
	return sections
}

// checkBootstrap flags dev mode, in which the shared bootstrap-token
// obtains any identity.
func checkBootstrap(dataDir string) checkLine {
	addrs, err := control.ReadAddrs(dataDir)
	if err == nil && addrs.InsecureBootstrapToken {
		return checkLine{ok: true, warn: true,
			what: "INSECURE DEV MODE: the control plane runs with --insecure-bootstrap-token; anyone who reads " + filepath.Join(dataDir, control.BootstrapTokenFile) + " can obtain ANY identity",
			next: "for anything but a demo, restart without --insecure-bootstrap-token and join proxies with 'trellis token create --service-account SA'"}
	}
	return pass("proxies join with identity-bound tokens (no shared bootstrap token)")
}

func checkMetrics(ctx context.Context, dataDir string) checkLine {
	addrs, err := control.ReadAddrs(dataDir)
	if err != nil || addrs.Metrics == "" {
		return fail("restart 'trellis control' so it writes metrics_addr to control.json", "control.json names no metrics address")
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	url := "http://" + addrs.Metrics + "/metrics"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err == nil {
		var resp *http.Response
		if resp, err = http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("status %d", resp.StatusCode)
			}
		}
	}
	if err != nil {
		return fail("check 'trellis control --metrics-addr' and its log", "metrics are not served at %s: %v", url, err)
	}
	return pass("metrics are served at %s", url)
}

func checkSkew(now time.Time, hdr http.Header) checkLine {
	server, err := http.ParseTime(hdr.Get("Date"))
	if err != nil {
		return fail("upgrade the control plane (its answers carry no Date)", "the control plane's clock is unknown")
	}
	// Date has one-second resolution.
	skew := now.Truncate(time.Second).Sub(server)
	if skew < 0 {
		skew = -skew
	}
	if skew > maxClockSkew {
		return fail("sync both clocks (timedatectl set-ntp true): certificates look expired or not yet valid across a skew",
			"clocks differ by %s between this machine and the control plane", skew)
	}
	return pass("clocks agree with the control plane's (within %s)", maxClockSkew)
}

func readRoots(file string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var roots []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		roots = append(roots, c)
	}
	if len(roots) == 0 {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return roots, nil
}

// checkCA checks every root of the trust bundle: valid now, and not
// expiring within caWarnBefore.
func checkCA(env checkEnv) []checkLine {
	file := filepath.Join(env.dataDir, control.CAFile)
	roots, err := readRoots(file)
	if err != nil {
		return []checkLine{fail("restore ca.crt from the control plane's data dir; restarting 'trellis control' rewrites it", "CA bundle unreadable: %v", err)}
	}
	now := env.now()
	var lines []checkLine
	const rotate = "rotate the root: start 'trellis control' with a new --ca-cert/--ca-key (docs/operations.md, Certificates)"
	for _, r := range roots {
		name := r.Subject.CommonName
		if name == "" {
			name = r.SerialNumber.String()
		}
		switch left := r.NotAfter.Sub(now); {
		case now.Before(r.NotBefore):
			lines = append(lines, fail("set the system clock (timedatectl set-ntp true)", "CA root %q is not valid until %s", name, r.NotBefore.UTC().Format(time.RFC3339)))
		case left <= 0:
			lines = append(lines, fail(rotate, "CA root %q expired on %s", name, r.NotAfter.UTC().Format("2006-01-02")))
		case left < caWarnBefore:
			lines = append(lines, fail(rotate, "CA root %q expires in %s (%s)", name, left.Round(time.Hour), r.NotAfter.UTC().Format("2006-01-02")))
		default:
			lines = append(lines, pass("CA root %q is valid until %s", name, r.NotAfter.UTC().Format("2006-01-02")))
		}
	}
	return lines
}

// allProxies is "the 1 proxy is" or "all 3 proxies are".
func allProxies(n int) string {
	if n == 1 {
		return "the 1 proxy is"
	}
	return fmt.Sprintf("all %d proxies are", n)
}

// checkProxies: every proxy synced, none refusing its config, every
// certificate renewed in time.
func checkProxies(list []push.ProxyStatus, now time.Time) []checkLine {
	if len(list) == 0 {
		return []checkLine{pass("no proxies connected (start one with 'trellis proxy --service NAME --app ADDR')")}
	}
	var notSynced, nacked, expiring []string
	for _, p := range list {
		switch {
		case p.State == push.StateNacked:
			nacked = append(nacked, fmt.Sprintf("%s: %s", p.NodeID, p.Error))
		case p.State != push.StateSynced:
			notSynced = append(notSynced, fmt.Sprintf("%s (%s)", p.NodeID, p.State))
		}
		if left := p.CertExpiry.Sub(now); !p.CertExpiry.IsZero() && left < certWarnBefore {
			expiring = append(expiring, fmt.Sprintf("%s: %s", p.NodeID, expiryText(p.CertExpiry, now)))
		}
	}
	n := len(list)
	var lines []checkLine
	if len(notSynced) > 0 {
		lines = append(lines, fail("a proxy stays STALE while it applies a config, PENDING while its first one compiles; if it persists, see the proxy's log and 'trellis proxy-status'",
			"%d of %d proxies are not synced: %s", len(notSynced), n, strings.Join(notSynced, ", ")))
	} else {
		lines = append(lines, pass("%s synced", allProxies(n)))
	}
	if len(nacked) > 0 {
		lines = append(lines, fail("they keep their last good config; fix the resource they refuse and apply again ('trellis proxy-status' shows the error)",
			"%d of %d proxies refused their config (NACK):\n  %s", len(nacked), n, strings.Join(nacked, "\n  ")))
	} else {
		lines = append(lines, pass("no proxy refused its config (no NACKs)"))
	}
	if len(expiring) > 0 {
		lines = append(lines, fail("a proxy renews at about half of its certificate's life; see its log for renewal errors (is the control plane reachable from it?)",
			"%d of %d proxies hold a certificate that expires within %s:\n  %s", len(expiring), n, certWarnBefore, strings.Join(expiring, "\n  ")))
	} else {
		lines = append(lines, pass("no proxy certificate expires within %s", certWarnBefore))
	}
	return lines
}
