package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

const dnsServices = `apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: web}
spec:
  ports:
  - {name: http, port: 80}
  - {name: admin, port: 9000}
`

// dig runs BIND's dig against addr and returns its +short lines, sorted.
func dig(t *testing.T, addr string, args ...string) []string {
	t.Helper()
	lines, err := tryDig(addr, args...)
	if err != nil {
		t.Fatal(err)
	}
	return lines
}

// digStatus returns the rcode dig reports for name A ("NOERROR", ...).
func digStatus(t *testing.T, addr, name string) string {
	t.Helper()
	out, err := runDig(addr, name, "A")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(out, "status: ")
	if !ok {
		t.Fatalf("no status in dig's output:\n%s", out)
	}
	status, _, _ := strings.Cut(rest, ",")
	return status
}

func runDig(addr string, args ...string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	args = append([]string{"@" + host, "-p", port, "+time=2", "+tries=2"}, args...)
	out, err := exec.CommandContext(ctx, "dig", args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("dig %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func tryDig(addr string, args ...string) ([]string, error) {
	out, err := runDig(addr, append([]string{"+short"}, args...)...)
	if err != nil {
		return nil, err
	}
	var lines []string
	for l := range strings.Lines(string(out)) {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	slices.Sort(lines)
	return lines, nil
}

// startDnsmasq runs dnsmasq on loopback at addr, answering every name under
// example.test with 192.0.2.9 (a documentation address: only ever data).
func startDnsmasq(t *testing.T, addr string) {
	t.Helper()
	cmd := exec.Command("dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port="+port(t, addr),
		"--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts", "--pid-file=",
		"--user=root", "--address=/example.test/192.0.2.9")
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start dnsmasq: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("--- output of dnsmasq ---\n%s", out.String())
		}
	})
	eventually(t, 5*time.Second, "dnsmasq to answer", func() bool {
		got, err := tryDig(addr, "example.test", "A")
		return err == nil && slices.Equal(got, []string{"192.0.2.9"})
	})
}

func needTool(t *testing.T, path, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(path); err != nil {
		t.Skipf("%s not installed (apt-get install %s)", path, pkg)
	}
}

func port(t *testing.T, addr string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDNSFollowsProxies: `trellis control --dns-addr` answers for the
// proxies that register, with dig and dnspython; a proxy killed leaves DNS
// within one push of leaving the other proxies' config.
func TestDNSFollowsProxies(t *testing.T) {
	needTool(t, "dig", "dnsutils")
	dnsAddr := freeAddr(t)
	cp := startControl(t, "", "--dns-addr", dnsAddr, "--dns-ttl", "3s")
	cp.apply(t, dnsServices)
	a := cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "a", nil)})
	b := cp.proxy(t, proxyConfig{service: "web", app: appServer(t, "b", nil)})
	client := cp.proxy(t, proxyConfig{service: "client", upstreams: []string{"web"}})
	eventually(t, 5*time.Second, "both web endpoints in the client's config", func() bool {
		return client.endpointCount(t, "web") == 2
	})
	srvName := "_admin._tcp.web.default.svc.trellis.local"
	srvPorts := func() []string {
		var ports []string
		for _, l := range dig(t, dnsAddr, srvName, "SRV") {
			f := strings.Fields(l) // priority weight port target
			ports = append(ports, f[2])
		}
		return ports
	}
	// Registered and pushed: in DNS already (or within a moment: the
	// compiler and DNS rebuild from the same view change).
	want := []string{port(t, a.inbound), port(t, b.inbound)}
	slices.Sort(want)
	eventually(t, time.Second, "both endpoints in SRV", func() bool { return slices.Equal(srvPorts(), want) })
	if got := dig(t, dnsAddr, "web.default.svc.trellis.local", "A"); !slices.Equal(got, []string{"127.0.0.1"}) {
		t.Fatalf("A: %q", got)
	}
	if got := dig(t, dnsAddr, "web.default", "A"); !slices.Equal(got, []string{"127.0.0.1"}) {
		t.Fatalf("short A: %q", got)
	}
	dnspythonSRV(t, dnsAddr, srvName, want)

	if err := b.proc.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-b.proc.done
	eventually(t, 6*time.Second, "killed endpoint to leave the client's config", func() bool {
		return client.endpointCount(t, "web") == 1
	})
	eventually(t, time.Second, "killed endpoint to leave DNS", func() bool {
		return slices.Equal(srvPorts(), []string{port(t, a.inbound)})
	})
	if got := dig(t, dnsAddr, "client.default.svc.trellis.local", "A"); !slices.Equal(got, []string{"127.0.0.1"}) {
		t.Fatalf("the client proxy's own service: %q", got)
	}
}

// dnspythonSRV resolves name's SRV with Debian's dnspython and checks the
// ports.
func dnspythonSRV(t *testing.T, addr, name string, ports []string) {
	t.Helper()
	const python = "/usr/bin/python3"
	if _, err := os.Stat(python); err != nil || exec.Command(python, "-c", "import dns.resolver").Run() != nil {
		t.Log("dnspython not installed (apt-get install python3-dnspython): skipping its check")
		return
	}
	host, p, _ := net.SplitHostPort(addr)
	script := `
import sys, dns.resolver
r = dns.resolver.Resolver(configure=False)
r.nameservers = [sys.argv[1]]
r.port = int(sys.argv[2])
for rr in sorted(r.resolve(sys.argv[3], "SRV"), key=lambda x: x.port):
    addrs = [a.address for a in r.resolve(rr.target, "A")]
    print(rr.port, ",".join(addrs))
`
	out, err := exec.Command(python, "-c", script, host, p, name).CombinedOutput()
	if err != nil {
		t.Fatalf("dnspython: %v\n%s", err, out)
	}
	var want []string
	for _, p := range ports {
		want = append(want, p+" 127.0.0.1")
	}
	if got := strings.Split(strings.TrimSpace(string(out)), "\n"); !slices.Equal(got, want) {
		t.Fatalf("dnspython SRV: %q, want %q", got, want)
	}
}

// TestDNSForwardsToDnsmasq: names outside the mesh go to --dns-forward, here
// a dnsmasq the test starts on loopback; without it they are REFUSED.
func TestDNSForwardsToDnsmasq(t *testing.T) {
	needTool(t, "dig", "dnsutils")
	needTool(t, "dnsmasq", "dnsmasq")
	upstream := freeAddr(t)
	startDnsmasq(t, upstream)
	dnsAddr := freeAddr(t)
	cp := startControl(t, "", "--dns-addr", dnsAddr, "--dns-forward", upstream)
	cp.apply(t, dnsServices)
	if got := dig(t, dnsAddr, "www.example.test", "A"); !slices.Equal(got, []string{"192.0.2.9"}) {
		t.Fatalf("forwarded: %q", got)
	}
	if got := dig(t, dnsAddr, "+tcp", "www.example.test", "A"); !slices.Equal(got, []string{"192.0.2.9"}) {
		t.Fatalf("forwarded over TCP: %q", got)
	}
	// A mesh name is answered, not forwarded (dnsmasq knows nothing of it).
	if got := digStatus(t, dnsAddr, "web.default.svc.trellis.local"); got != "NOERROR" {
		t.Fatalf("mesh name with forwarding on: %s, want NOERROR (NODATA: no endpoints)", got)
	}
	if got := digStatus(t, dnsAddr, "nope.default.svc.trellis.local"); got != "NXDOMAIN" {
		t.Fatalf("unknown mesh name with forwarding on: %s, want NXDOMAIN from Trellis", got)
	}

	plain := freeAddr(t)
	startControl(t, "", "--dns-addr", plain)
	if got := digStatus(t, plain, "www.example.test"); got != "REFUSED" {
		t.Fatalf("no forwarding: %s, want REFUSED", got)
	}
}
