package compiler

import (
	"crypto/sha256"
	"fmt"
	"log/slog"
	"sort"

	"google.golang.org/protobuf/proto"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/config"
	"trellis.dev/trellis/internal/view"
)

type svcKey struct{ ns, name string }

func keyOf(k config.ServiceKey) svcKey { return svcKey{ns: k.Namespace, name: k.Name} }

func (k svcKey) less(o svcKey) bool {
	if k.ns != o.ns {
		return k.ns < o.ns
	}
	return k.name < o.name
}

func (k svcKey) String() string { return k.name + "." + k.ns }

// compiled is one service's compiled form, shared by every snapshot that
// includes it until the view changes. Never modified after creation.
type compiled struct {
	key  svcKey
	svc  *meshv1.Service
	hash [sha256.Size]byte
	deps []svcKey // services its routes send to, excluding itself
	// inbound is what the service's own proxies enforce (policies attached
	// to it); nil: nothing. Hashed into hash.
	inbound *meshv1.InboundPolicy
}

// attached is an object attached to a service through one Attachment.
type attached struct {
	obj       config.Attacher
	at        config.Attachment
	createRev int64
}

// index is one view state rearranged for compiling; services are compiled
// lazily and cached until the next state.
type index struct {
	log       *slog.Logger
	declared  map[svcKey]config.Declarer
	attached  map[svcKey][]attached
	objects   map[config.Ref]config.Object  // what Attachers look up (a route's FaultInjection)
	endpoints map[string][]*meshv1.Endpoint // by namespace, sorted by id
	cache     map[svcKey]*compiled
	inbounds  map[svcKey]*compiled
}

// buildIndex sorts the state's resources by the hooks their kinds implement.
func buildIndex(st *view.State, log *slog.Logger) *index {
	idx := &index{
		log:       log,
		declared:  map[svcKey]config.Declarer{},
		attached:  map[svcKey][]attached{},
		objects:   map[config.Ref]config.Object{},
		endpoints: map[string][]*meshv1.Endpoint{},
		cache:     map[svcKey]*compiled{},
		inbounds:  map[svcKey]*compiled{},
	}
	for _, r := range st.Resources() {
		idx.objects[r.Object.Ref()] = r.Object
		if d, ok := r.Object.(config.Declarer); ok {
			idx.declared[keyOf(d.Declares())] = d
		}
		if a, ok := r.Object.(config.Attacher); ok {
			for _, at := range a.Attachments() {
				k := keyOf(at.Service)
				idx.attached[k] = append(idx.attached[k], attached{obj: a, at: at, createRev: r.CreateRevision})
			}
		}
	}
	for _, ep := range st.Endpoints() {
		idx.endpoints[ep.Namespace] = append(idx.endpoints[ep.Namespace], ep)
	}
	for _, eps := range idx.endpoints {
		sort.Slice(eps, func(i, j int) bool { return eps[i].Id < eps[j].Id })
	}
	return idx
}

func hashService(s *meshv1.Service) [sha256.Size]byte {
	return sha256.Sum256(marshalDet(s))
}

// hashWith is h extended by m: a service's hash and its inbound policy's.
func hashWith(h [sha256.Size]byte, m proto.Message) [sha256.Size]byte {
	return sha256.Sum256(append(h[:], marshalDet(m)...))
}

func marshalDet(m proto.Message) []byte {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		// Marshal of a well-formed message does not fail; hash the text
		// form rather than pretend the content is unchanged.
		b = []byte(fmt.Sprint(m))
	}
	return b
}

// base is a service with its ports: declared, or one http port 80 whose
// target (0) the proxy maps to its app's port.
func (idx *index) base(k svcKey) *meshv1.Service {
	svc := &meshv1.Service{Name: k.name, Namespace: k.ns}
	if d := idx.declared[k]; d != nil {
		d.DeclarePorts(svc)
		return svc
	}
	svc.Ports = []*meshv1.Port{{Name: "http", Port: 80, Protocol: meshv1.Protocol_HTTP}}
	return svc
}

func (idx *index) selector(k svcKey) map[string]string {
	if d := idx.declared[k]; d != nil {
		return d.Selector()
	}
	return map[string]string{"app": k.name}
}

func (idx *index) inbound(k svcKey) *compiled {
	if c, ok := idx.inbounds[k]; ok {
		return c
	}
	svc := idx.base(k)
	c := &compiled{key: k, svc: svc, hash: hashService(svc)}
	idx.inbounds[k] = c
	return c
}

func (idx *index) service(k svcKey) *compiled {
	if c, ok := idx.cache[k]; ok {
		return c
	}
	svc := idx.base(k)
	sel := idx.selector(k)
	for _, ep := range idx.endpoints[k.ns] {
		if ep.Healthy && matches(sel, ep.Labels) {
			svc.Endpoints = append(svc.Endpoints, ep)
		}
	}
	b := config.NewServiceBuild(svc)
	b.Lookup = func(ref config.Ref) config.Object { return idx.objects[ref] }
	for _, a := range idx.attached[k] {
		a.obj.Contribute(b, a.at, a.createRev)
	}
	b.Finish()
	deps := map[svcKey]bool{}
	for _, r := range svc.Routes {
		for _, be := range r.Backends {
			if d := (svcKey{ns: be.Namespace, name: be.Service}); d != k {
				deps[d] = true
			}
		}
		// A mirror's backend must be in the snapshot too.
		for _, f := range r.Filters {
			if be := f.GetRequestMirror().GetBackend(); be != nil {
				if d := (svcKey{ns: be.Namespace, name: be.Service}); d != k {
					deps[d] = true
				}
			}
		}
	}
	c := &compiled{key: k, svc: svc, hash: hashService(svc), inbound: b.Inbound()}
	if c.inbound != nil {
		c.hash = hashWith(c.hash, c.inbound)
	}
	for d := range deps {
		c.deps = append(c.deps, d)
	}
	sort.Slice(c.deps, func(i, j int) bool { return c.deps[i].less(c.deps[j]) })
	idx.cache[k] = c
	return c
}

func matches(selector, labels map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}
