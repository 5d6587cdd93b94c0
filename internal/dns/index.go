package dns

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	mdns "github.com/miekg/dns"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/config"
	"trellis.dev/trellis/internal/meshname"
	"trellis.dev/trellis/internal/view"
)

// SOA timers. Secondaries never transfer the zone (AXFR is refused), so only
// MINIMUM matters: it is the TTL of negative answers (RFC 2308), set to the
// configured TTL so a new service is not hidden longer than a changed one.
const (
	soaRefresh = 3600
	soaRetry   = 600
	soaExpire  = 86400
	// srvWeight is the same for every endpoint: the mesh's balancers, not
	// DNS clients, weigh endpoints.
	srvWeight = 10
)

// zone is one zone the server is authoritative for: the mesh domain, or a
// known service's short name "<service>.<namespace>.".
type zone struct {
	origin string
	soa    mdns.RR
}

// node is one name that exists, with its records. A node without records
// is an empty non-terminal (svc.<domain>, a namespace, _tcp.<service>): it
// exists, so a query for it gets NODATA, not NXDOMAIN.
type node struct {
	a, aaaa, srv []mdns.RR
	soa, ns      []mdns.RR // only at the mesh zone's apex
	extra        []mdns.RR // addresses of the SRV or NS targets
	zone         *zone
}

// records returns the answer and additional records for qtype.
func (n *node) records(qtype uint16) (answer, extra []mdns.RR) {
	switch qtype {
	case mdns.TypeA:
		return n.a, nil
	case mdns.TypeAAAA:
		return n.aaaa, nil
	case mdns.TypeSRV:
		return n.srv, n.extra
	case mdns.TypeSOA:
		return n.soa, nil
	case mdns.TypeNS:
		return n.ns, n.extra
	case mdns.TypeANY:
		return slices.Concat(n.soa, n.ns, n.a, n.aaaa, n.srv), nil
	}
	return nil, nil
}

// index is what the server answers from: every name of the mesh, built
// from one view state and never modified afterwards. Queries read it
// without locks; a view change builds a new one.
type index struct {
	ready      bool // false until the view has listed the store once
	revision   int64
	generation uint64
	mesh       *zone
	names      map[string]*node // every existing name in the mesh zone
	short      map[string]*node // "<service>.<namespace>." of known services
}

// lookup finds name (lower case, absolute). ours is false for a name
// outside every zone the server is authoritative for; n is nil for a name
// that does not exist in the zone z.
func (idx *index) lookup(name string) (n *node, z *zone, ours bool) {
	if name == idx.mesh.origin || strings.HasSuffix(name, "."+idx.mesh.origin) {
		return idx.names[name], idx.mesh, true
	}
	// A short name is a zone of its own: below it nothing exists.
	apex := lastLabels(name, 2)
	if sn := idx.short[apex]; sn != nil {
		if apex == name {
			return sn, sn.zone, true
		}
		return nil, sn.zone, true
	}
	return nil, nil, false
}

// lastLabels returns the last k labels of the absolute name, or "" if it
// has fewer. Escaped dots (\.) are not handled: such names are never mesh
// names, and at worst miss a short-name zone.
func lastLabels(name string, k int) string {
	if len(name) < 2 || name[len(name)-1] != '.' {
		return ""
	}
	i := len(name) - 1
	for j := range k {
		d := strings.LastIndexByte(name[:i], '.')
		if d < 0 {
			if j == k-1 {
				return name
			}
			return ""
		}
		i = d
	}
	return name[i+1:]
}

// buildOptions configure an index.
type buildOptions struct {
	origin string // the mesh domain, absolute: "trellis.local."
	ttl    uint32
	// nsAddrs are the server's own addresses, the glue of ns.<domain>; empty
	// when it listens on an unspecified address.
	nsAddrs []netip.Addr
	log     *slog.Logger
}

// service is one mesh service as DNS sees it.
type service struct {
	key      config.ServiceKey
	ports    []*meshv1.Port
	selector map[string]string
}

// meshServices are the declared services plus, as the compiler does, an
// implicit one (one http port) for every service endpoints register under.
func meshServices(st *view.State) []service {
	byKey := map[config.ServiceKey]service{}
	for _, r := range st.Resources() {
		if _, ext := r.Object.(config.ExternalDeclarer); ext {
			continue // outside the mesh: its hosts are the world's DNS names, not the mesh's
		}
		if d, ok := r.Object.(config.Declarer); ok {
			svc := &meshv1.Service{}
			d.DeclarePorts(svc)
			byKey[d.Declares()] = service{key: d.Declares(), ports: svc.Ports, selector: d.Selector()}
		}
	}
	for _, ep := range st.Endpoints() {
		k := config.ServiceKey{Namespace: ep.Namespace, Name: ep.Service}
		if _, ok := byKey[k]; !ok {
			byKey[k] = service{key: k, ports: []*meshv1.Port{{Name: "http", Port: 80}},
				selector: map[string]string{"app": ep.Service}}
		}
	}
	out := make([]service, 0, len(byKey))
	for _, s := range byKey {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b service) int {
		return cmp.Or(cmp.Compare(a.key.Namespace, b.key.Namespace), cmp.Compare(a.key.Name, b.key.Name))
	})
	return out
}

// builder builds one index.
type builder struct {
	o   buildOptions
	idx *index
	eps map[string][]*meshv1.Endpoint // healthy endpoints by namespace
}

// build makes the index of st.
func build(st *view.State, ready bool, o buildOptions) *index {
	serial := uint32(st.Revision())
	b := &builder{o: o, eps: map[string][]*meshv1.Endpoint{}, idx: &index{
		ready: ready, revision: st.Revision(), generation: st.Generation(),
		mesh:  &zone{origin: o.origin, soa: newSOA(o.origin, o.origin, o.ttl, serial)},
		names: map[string]*node{}, short: map[string]*node{},
	}}
	b.apex()
	b.name("svc." + o.origin)
	for _, ep := range st.Endpoints() {
		if ep.GetHealthy() {
			b.eps[ep.Namespace] = append(b.eps[ep.Namespace], ep)
		}
	}
	for _, svc := range meshServices(st) {
		b.service(svc, serial)
	}
	return b.idx
}

// name returns the node of an existing name in the mesh zone, adding it.
func (b *builder) name(fqdn string) *node {
	n := b.idx.names[fqdn]
	if n == nil {
		n = &node{zone: b.idx.mesh}
		b.idx.names[fqdn] = n
	}
	return n
}

// apex adds the zone's SOA and NS, and ns.<domain> with the server's own
// addresses, so the zone is well-formed for a resolver that asks.
func (b *builder) apex() {
	apex := b.name(b.o.origin)
	apex.soa = []mdns.RR{b.idx.mesh.soa}
	nsName := "ns." + b.o.origin
	apex.ns = []mdns.RR{&mdns.NS{Hdr: b.hdr(b.o.origin, mdns.TypeNS), Ns: nsName}}
	ns := b.name(nsName)
	for _, ip := range b.o.nsAddrs {
		ns.addAddr(b.addrRR(nsName, ip))
	}
	apex.extra = slices.Concat(ns.a, ns.aaaa)
}

// target is one endpoint as an SRV target.
type target struct {
	name  string
	port  uint16
	addrs []mdns.RR // the target's A or AAAA; none for a host name
}

// service adds one service's names: its A/AAAA, a name per endpoint, an SRV
// name per named port, and its short name.
func (b *builder) service(svc service, serial uint32) {
	full := svc.key.Name + "." + svc.key.Namespace + ".svc." + b.o.origin
	b.name(svc.key.Namespace + ".svc." + b.o.origin)
	n := b.name(full)
	var targets []target
	taken := map[string]bool{}
	for _, ep := range b.eps[svc.key.Namespace] {
		if !matches(svc.selector, ep.Labels) {
			continue
		}
		if t, ok := b.endpoint(ep, full, taken); ok {
			for _, rr := range t.addrs {
				n.addAddr(b.addrRR(full, addrOf(rr)))
			}
			targets = append(targets, t)
		}
	}
	b.srv(svc, full, targets)

	short := svc.key.Name + "." + svc.key.Namespace + "."
	sn := &node{a: b.reown(n.a, short), aaaa: b.reown(n.aaaa, short),
		zone: &zone{origin: short, soa: newSOA(short, b.o.origin, b.o.ttl, serial)}}
	b.idx.short[short] = sn
}

// endpoint adds the endpoint's own name under the service and returns it as
// an SRV target. Its SRV port is the port of Endpoint.address: the proxy's
// inbound mTLS listener. That is the only port an endpoint is reached on from
// elsewhere — a Service's port is what a client addresses through its own
// outbound proxy (not a port of the endpoint), and its targetPort is the
// app's port on the endpoint's loopback, behind the proxy. One inbound
// listener serves every port of the service (the service port travels
// in-band), so each named port's SRV carries the same port per endpoint.
func (b *builder) endpoint(ep *meshv1.Endpoint, full string, taken map[string]bool) (target, bool) {
	host, portStr, err := net.SplitHostPort(ep.GetAddress())
	port, perr := strconv.ParseUint(portStr, 10, 16)
	if err != nil || perr != nil || port == 0 {
		b.o.log.Debug("endpoint left out of DNS: bad address", "id", ep.Id, "address", ep.GetAddress())
		return target{}, false
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		// A host name: SRV can point at it, A/AAAA cannot carry it.
		if !meshname.IsSubdomain(strings.ToLower(strings.TrimSuffix(host, "."))) {
			b.o.log.Debug("endpoint left out of DNS: bad host", "id", ep.Id, "address", ep.GetAddress())
			return target{}, false
		}
		return target{name: mdns.Fqdn(strings.ToLower(host)), port: uint16(port)}, true
	}
	ip = ip.Unmap().WithZone("")
	if ip.IsUnspecified() {
		// 0.0.0.0 or :: says "every address of that host": no address a
		// client could use.
		b.o.log.Debug("endpoint left out of DNS: unspecified address", "id", ep.Id, "address", ep.GetAddress())
		return target{}, false
	}
	label := endpointLabel(ep.Id, taken)
	if label == "" {
		b.o.log.Warn("endpoint left out of DNS: no free name", "id", ep.Id)
		return target{}, false
	}
	name := label + "." + full
	en := b.name(name)
	en.addAddr(b.addrRR(name, ip))
	return target{name: name, port: uint16(port), addrs: slices.Concat(en.a, en.aaaa)}, true
}

// srv adds _<port>._tcp.<service> for each named port. Every mesh protocol
// runs over TCP. Unnamed ports get no SRV name, as in Kubernetes.
func (b *builder) srv(svc service, full string, targets []target) {
	for _, p := range svc.ports {
		if p.Name == "" {
			continue
		}
		b.name("_tcp." + full)
		name := "_" + p.Name + "._tcp." + full
		n := b.name(name)
		for _, t := range targets {
			n.srv = append(n.srv, &mdns.SRV{Hdr: b.hdr(name, mdns.TypeSRV),
				Priority: 0, Weight: srvWeight, Port: t.port, Target: t.name})
			n.extra = append(n.extra, t.addrs...)
		}
	}
}

// endpointLabel names an endpoint under its service: its id when that is a
// label (the sidecar's ids are), else a hash of it. "" if both are taken.
func endpointLabel(id string, taken map[string]bool) string {
	sum := sha256.Sum256([]byte(id))
	for _, l := range []string{id, "ep-" + hex.EncodeToString(sum[:6])} {
		if meshname.IsLabel(l) && !taken[l] {
			taken[l] = true
			return l
		}
	}
	return ""
}

func (b *builder) hdr(name string, t uint16) mdns.RR_Header {
	return mdns.RR_Header{Name: name, Rrtype: t, Class: mdns.ClassINET, Ttl: b.o.ttl}
}

// addrRR is an A record for an IPv4 address, else an AAAA record.
func (b *builder) addrRR(name string, ip netip.Addr) mdns.RR {
	if ip.Is4() {
		return &mdns.A{Hdr: b.hdr(name, mdns.TypeA), A: net.IP(ip.AsSlice())}
	}
	return &mdns.AAAA{Hdr: b.hdr(name, mdns.TypeAAAA), AAAA: net.IP(ip.AsSlice())}
}

// reown copies address records under another owner name.
func (b *builder) reown(rrs []mdns.RR, name string) []mdns.RR {
	out := make([]mdns.RR, 0, len(rrs))
	for _, rr := range rrs {
		out = append(out, b.addrRR(name, addrOf(rr)))
	}
	return out
}

// addAddr adds an address record unless the node has it: several endpoints
// on one host share an address, and an RRset holds no duplicates (RFC 2181).
func (n *node) addAddr(rr mdns.RR) {
	set := &n.a
	if rr.Header().Rrtype == mdns.TypeAAAA {
		set = &n.aaaa
	}
	ip := addrOf(rr)
	for _, have := range *set {
		if addrOf(have) == ip {
			return
		}
	}
	*set = append(*set, rr)
}

func addrOf(rr mdns.RR) netip.Addr {
	var ip net.IP
	switch r := rr.(type) {
	case *mdns.A:
		ip = r.A
	case *mdns.AAAA:
		ip = r.AAAA
	}
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

func newSOA(origin, meshOrigin string, ttl, serial uint32) mdns.RR {
	return &mdns.SOA{
		Hdr: mdns.RR_Header{Name: origin, Rrtype: mdns.TypeSOA, Class: mdns.ClassINET, Ttl: ttl},
		Ns:  "ns." + meshOrigin, Mbox: "hostmaster." + meshOrigin,
		Serial: serial, Refresh: soaRefresh, Retry: soaRetry, Expire: soaExpire, Minttl: ttl,
	}
}

// matches is the compiler's selector rule: every selector label present
// with the same value.
func matches(selector, labels map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}
