package dns

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// toolMesh is shopMesh plus a service with 200 endpoints (too many for 512
// bytes of UDP) served on loopback.
func toolMesh(t *testing.T) (host, port string) {
	m := shopMesh(t)
	for i := range 200 {
		m.endpoint("default", "big", fmt.Sprintf("big-%03d", i), fmt.Sprintf("127.1.%d.%d:15001", i/250, i%250+1), true)
	}
	s := startServer(t, m, Options{})
	m.caughtUp(s)
	host, port, err := net.SplitHostPort(s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	return host, port
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestDig queries the server with BIND's dig (Debian dnsutils).
func TestDig(t *testing.T) {
	if _, err := exec.LookPath("dig"); err != nil {
		t.Skip("dig not installed (apt-get install dnsutils)")
	}
	host, port := toolMesh(t)
	dig := func(args ...string) string {
		return run(t, "dig", append([]string{"@" + host, "-p", port, "+time=5", "+tries=1"}, args...)...)
	}
	const z = ".svc.trellis.local"
	tests := []struct {
		name string
		args []string
		want []string // substrings of dig's output
	}{
		{"A", []string{"+short", "orders.default" + z, "A"}, []string{"127.0.0.1\n"}},
		{"short name", []string{"+short", "orders.default", "A"}, []string{"127.0.0.1\n"}},
		{"AAAA", []string{"+short", "web.default" + z, "AAAA"}, []string{"::1\n"}},
		{"SRV", []string{"+short", "_grpc._tcp.orders.default" + z, "SRV"}, []string{
			"0 10 15001 orders-default-00000001.orders.default" + z + ".\n",
			"0 10 15002 orders-default-00000002.orders.default" + z + ".\n"}},
		{"SRV glue", []string{"_http._tcp.orders.default" + z, "SRV"}, []string{
			"ADDITIONAL SECTION:\norders-default-0000000"}},
		{"NXDOMAIN with SOA", []string{"payments.default" + z, "A"}, []string{
			"status: NXDOMAIN", "flags: qr aa rd;", "AUTHORITY SECTION:\ntrellis.local.\t\t5\tIN\tSOA\tns.trellis.local. hostmaster.trellis.local."}},
		{"NODATA with SOA", []string{"orders.default" + z, "AAAA"}, []string{
			"status: NOERROR", "ANSWER: 0, AUTHORITY: 1", "IN\tSOA\tns.trellis.local."}},
		{"REFUSED", []string{"example.com", "A"}, []string{"status: REFUSED"}},
		{"AXFR refused", []string{"trellis.local", "AXFR"}, []string{"Transfer failed."}},
		{"EDNS0", []string{"orders.default" + z, "A"}, []string{"EDNS: version: 0, flags:; udp: 1232"}},
		{"BADVERS, then version 0", []string{"+edns=1", "orders.default" + z, "A"}, []string{"BADVERS", "status: NOERROR"}},
		{"TC, then TCP", []string{"+noedns", "big.default" + z, "A"}, []string{"Truncated, retrying in TCP mode", "ANSWER: 200,"}},
		{"TCP", []string{"+tcp", "big.default" + z, "A"}, []string{"ANSWER: 200,"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out := dig(tc.args...)
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("dig %s: no %q in\n%s", strings.Join(tc.args, " "), w, out)
				}
			}
		})
	}
}

// TestDNSPython runs testdata/dnspython_check.py with Debian's Python and
// python3-dnspython (not whatever python3 is first on PATH).
func TestDNSPython(t *testing.T) {
	const python = "/usr/bin/python3"
	if _, err := os.Stat(python); err != nil {
		t.Skip("no /usr/bin/python3")
	}
	if err := exec.Command(python, "-c", "import dns.resolver").Run(); err != nil {
		t.Skip("dnspython not installed (apt-get install python3-dnspython)")
	}
	host, port := toolMesh(t)
	out := run(t, python, "testdata/dnspython_check.py", host, port)
	if !strings.Contains(out, "ok EDNS0 4096 fits") {
		t.Fatalf("dnspython checks did not all run:\n%s", out)
	}
	t.Log(out)
}
