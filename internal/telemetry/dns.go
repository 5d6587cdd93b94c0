package telemetry

import (
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// ControlDNSRepliesName counts the control plane's DNS replies.
const ControlDNSRepliesName = "trellis_control_dns_replies_total"

// dnsRcodes are the rcodes with a series of their own; any other (an
// upstream's, when forwarding) counts as "other", so the label set stays
// bounded whatever an upstream sends.
var dnsRcodes = []int{dns.RcodeSuccess, dns.RcodeFormatError, dns.RcodeServerFailure,
	dns.RcodeNameError, dns.RcodeNotImplemented, dns.RcodeRefused, dns.RcodeBadVers}

// DNSMetrics implements dns.Metrics on a registry.
type DNSMetrics struct {
	// byRcode[tcp] holds the counter of each rcode in dnsRcodes; read-only
	// after construction, so a reply takes no lock and allocates nothing.
	byRcode    [2]map[int]prometheus.Counter
	other      [2]prometheus.Counter
	transports [2]string
}

// NewDNSMetrics registers the DNS server's instruments on reg.
func NewDNSMetrics(reg prometheus.Registerer) (*DNSMetrics, error) {
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: ControlDNSRepliesName,
		Help: "DNS replies sent, by transport (udp, tcp) and rcode (NOERROR includes NODATA; forwarded replies included).",
	}, []string{"transport", "rcode"})
	if err := reg.Register(vec); err != nil {
		return nil, err
	}
	m := &DNSMetrics{transports: [2]string{"udp", "tcp"}}
	for i, tr := range m.transports {
		m.byRcode[i] = map[int]prometheus.Counter{}
		for _, rc := range dnsRcodes {
			m.byRcode[i][rc] = vec.WithLabelValues(tr, dns.RcodeToString[rc])
		}
		m.other[i] = vec.WithLabelValues(tr, "other")
	}
	return m, nil
}

// Reply implements dns.Metrics.
func (m *DNSMetrics) Reply(rcode int, tcp bool) {
	i := 0
	if tcp {
		i = 1
	}
	if c, ok := m.byRcode[i][rcode]; ok {
		c.Inc()
		return
	}
	m.other[i].Inc()
}
