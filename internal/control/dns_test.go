package control

import (
	"context"
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	meshdns "trellis.dev/trellis/internal/dns"
	"trellis.dev/trellis/internal/telemetry"
)

func startWithDNS(t *testing.T, dnsAddr string) (*Control, error) {
	t.Helper()
	c, err := Start(context.Background(), Options{DataDir: t.TempDir(), GRPCAddr: "127.0.0.1:0",
		AdminAddr: "127.0.0.1:0", MetricsAddr: "127.0.0.1:0", DNSAddr: dnsAddr, DNSTTL: 7 * time.Second})
	if err == nil {
		t.Cleanup(func() { c.Stop() })
	}
	return c, err
}

// TestDNSServesTheView: an applied Service is a DNS name once the apply's
// revision is in the view; control.json says where DNS is.
func TestDNSServesTheView(t *testing.T) {
	c, err := startWithDNS(t, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := ReadAddrs(c.o.DataDir)
	if err != nil || addrs.DNS == "" || addrs.DNS != c.DNSAddr() {
		t.Fatalf("control.json DNS %q (%v), want %q", addrs.DNS, err, c.DNSAddr())
	}
	ask := func() *mdns.Msg {
		m := new(mdns.Msg).SetQuestion("orders.default.svc.trellis.local.", mdns.TypeA)
		resp, err := mdns.Exchange(m, c.DNSAddr())
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.dns.WaitFor(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if resp := ask(); resp.Rcode != mdns.RcodeNameError {
		t.Fatalf("before apply: %s, want NXDOMAIN", mdns.RcodeToString[resp.Rcode])
	}
	status, a := newClient(t, c).apply(false, file{Name: "svc.yaml", Content: `apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {name: orders}
spec:
  ports: [{name: http, port: 80}]
`})
	if status != 200 {
		t.Fatalf("apply: %d %+v", status, a)
	}
	if err := c.dns.WaitFor(ctx, a.Revision); err != nil {
		t.Fatal(err)
	}
	resp := ask()
	if resp.Rcode != mdns.RcodeSuccess || len(resp.Answer) != 0 || len(resp.Ns) != 1 || resp.Ns[0].Header().Ttl != 7 {
		t.Fatalf("after apply: %v; want NODATA (a service without endpoints), SOA TTL 7", resp)
	}
	fams := parseMetrics(t, scrape(t, c))
	for rcode, want := range map[string]float64{"NXDOMAIN": 1, "NOERROR": 1, "REFUSED": 0} {
		if got := fams.must(t, telemetry.ControlDNSRepliesName, "transport", "udp", "rcode", rcode); got != want {
			t.Errorf("%s udp %s = %v, want %v", telemetry.ControlDNSRepliesName, rcode, got, want)
		}
	}
}

func TestDNSOff(t *testing.T) {
	c, err := startWithDNS(t, DNSOff)
	if err != nil {
		t.Fatal(err)
	}
	if c.DNSAddr() != "" {
		t.Fatalf("DNS off, yet served on %s", c.DNSAddr())
	}
	if addrs, _ := ReadAddrs(c.o.DataDir); addrs.DNS != "" {
		t.Fatalf("DNS off, yet control.json says %q", addrs.DNS)
	}
}

// TestDNSDefaultPortBusy: the default port taken, the control plane starts
// without DNS; an explicit address taken is an error.
func TestDNSDefaultPortBusy(t *testing.T) {
	// Hold the default port; if something else already holds it, the
	// condition under test is there anyway.
	if ln, err := net.Listen("tcp", meshdns.DefaultAddr); err == nil {
		defer ln.Close()
	}
	c, err := startWithDNS(t, "")
	if err != nil {
		t.Fatalf("default DNS port busy: %v, want a start without DNS", err)
	}
	if c.DNSAddr() != "" {
		t.Fatalf("DNS served on %s with the default port busy", c.DNSAddr())
	}

	_, err = startWithDNS(t, meshdns.DefaultAddr)
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("explicit busy DNS address: %v, want EADDRINUSE", err)
	}
}

func TestDNSAddrValidated(t *testing.T) {
	for addr, want := range map[string]string{
		"0.0.0.0:8600": "dnsAddr: \"0.0.0.0:8600\" is not a loopback address",
		"nonsense":     "dnsAddr: \"nonsense\"",
	} {
		o := Options{DataDir: t.TempDir(), DNSAddr: addr}
		o.setDefaults()
		if err := o.Validate(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("DNSAddr %q: %v, want %q", addr, err, want)
		}
	}
	o := Options{DataDir: t.TempDir(), DNSAddr: "0.0.0.0:8600", AllowRemote: true}
	o.setDefaults()
	if err := o.Validate(); err != nil {
		t.Errorf("AllowRemote: %v", err)
	}
}
