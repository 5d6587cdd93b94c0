package compiler

import (
	"crypto/sha256"
	"sort"
	"strconv"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/config"
	"trellis.dev/trellis/internal/view"
)

// egressIndex is what every snapshot's outbound_traffic_policy carries
// besides the mode: the mesh's namespaces and every ExternalService host,
// so a proxy can tell a mesh name (orders.shop) from an outside one
// (example.com) and an external service's host from an unknown one
// without asking. Built once per view state; shared, never modified.
type egressIndex struct {
	namespaces []string
	hosts      []*meshv1.ExternalHost
	hash       [sha256.Size]byte
}

// buildEgress collects the namespaces that hold a resource or an endpoint
// and the hosts of the external declarers.
func buildEgress(st *view.State, declared map[svcKey]config.Declarer) egressIndex {
	nss := map[string]bool{}
	for _, r := range st.Resources() {
		nss[r.Object.Ref().Namespace] = true
	}
	for _, ep := range st.Endpoints() {
		nss[ep.Namespace] = true
	}
	var e egressIndex
	for ns := range nss {
		e.namespaces = append(e.namespaces, ns)
	}
	sort.Strings(e.namespaces)
	for k, d := range declared {
		x, ok := d.(config.ExternalDeclarer)
		if !ok {
			continue
		}
		for _, h := range x.ExternalHosts() {
			e.hosts = append(e.hosts, &meshv1.ExternalHost{Host: h, Service: k.name, Namespace: k.ns})
		}
	}
	// checkSet refuses a host listed twice; the service breaks a tie left
	// by a state that slipped past it, so the order is still total.
	sort.Slice(e.hosts, func(i, j int) bool {
		a, b := e.hosts[i], e.hosts[j]
		if a.Host != b.Host {
			return a.Host < b.Host
		}
		return a.Namespace+"/"+a.Service < b.Namespace+"/"+b.Service
	})
	h := sha256.New()
	for _, ns := range e.namespaces {
		writeField(h, ns)
	}
	writeField(h, "hosts")
	for _, x := range e.hosts {
		writeField(h, x.Host)
		writeField(h, x.Namespace+"/"+x.Service)
	}
	h.Sum(e.hash[:0])
	return e
}

// contributeEgress completes the snapshot's outbound_traffic_policy (its
// mode is the MeshConfig's, set by contributeProxy, ALLOW_ANY without one)
// and hashes it into the version.
func (idx *index) contributeEgress(snap *meshv1.Snapshot, h hashWriter) {
	p := snap.OutboundTrafficPolicy
	if p == nil {
		p = &meshv1.OutboundTrafficPolicy{}
		snap.OutboundTrafficPolicy = p
	}
	p.Namespaces, p.ExternalHosts = idx.egress.namespaces, idx.egress.hosts
	writeField(h, "egress")
	writeField(h, strconv.Itoa(int(p.Mode)))
	h.Write(idx.egress.hash[:])
}

// externalEndpoints returns the endpoints of an external service k, and
// whether k is one: an ExternalService's endpoints are its own, never the
// registry's.
func (idx *index) externalEndpoints(k svcKey) ([]*meshv1.Endpoint, bool) {
	x, ok := idx.declared[k].(config.ExternalDeclarer)
	if !ok {
		return nil, false
	}
	return x.ExternalEndpoints(), true
}
