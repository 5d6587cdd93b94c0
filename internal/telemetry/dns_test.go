package telemetry

import (
	"testing"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

func TestDNSMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewDNSMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	m.Reply(dns.RcodeNameError, false)
	m.Reply(dns.RcodeNameError, false)
	m.Reply(dns.RcodeSuccess, true)
	m.Reply(dns.RcodeYXDomain, false) // an upstream's, relayed
	want := map[[2]string]float64{
		{"udp", "NXDOMAIN"}: 2, {"tcp", "NOERROR"}: 1, {"udp", "other"}: 1, {"udp", "REFUSED"}: 0,
	}
	for k, v := range want {
		c, err := testutilCounter(reg, k[0], k[1])
		if err != nil {
			t.Fatal(err)
		}
		if c != v {
			t.Errorf("%s{transport=%s,rcode=%s} = %v, want %v", ControlDNSRepliesName, k[0], k[1], c, v)
		}
	}
	fams, err := reg.Gather()
	if err != nil || len(fams) != 1 {
		t.Fatalf("gather: %d families, %v", len(fams), err)
	}
	if n := len(fams[0].GetMetric()); n != 2*(len(dnsRcodes)+1) {
		t.Errorf("%d series, want every transport × rcode up front (%d)", n, 2*(len(dnsRcodes)+1))
	}
	if _, err := NewDNSMetrics(reg); err == nil {
		t.Error("registered twice on one registry")
	}
}

func testutilCounter(reg *prometheus.Registry, transport, rcode string) (float64, error) {
	fams, err := reg.Gather()
	if err != nil {
		return 0, err
	}
	for _, f := range fams {
		if f.GetName() != ControlDNSRepliesName {
			continue
		}
		for _, m := range f.GetMetric() {
			l := map[string]string{}
			for _, p := range m.GetLabel() {
				l[p.GetName()] = p.GetValue()
			}
			if l["transport"] == transport && l["rcode"] == rcode {
				return m.GetCounter().GetValue(), nil
			}
		}
	}
	return -1, nil
}
