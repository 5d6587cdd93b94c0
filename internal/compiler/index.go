package compiler

import (
	"crypto/sha256"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"

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
	// policy is the inbound policy of a proxy of this service (inbound
	// only), covered by hash.
	policy *meshv1.InboundPolicy
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
	// byApp narrows a selector with an "app" label (every default one) to
	// the endpoints carrying it: by namespace, then app, sorted by id. The
	// scale harness showed scanning the namespace's endpoints for every
	// service compiled, on every change, growing as services × endpoints.
	byApp    map[string]map[string][]*meshv1.Endpoint
	cache    map[svcKey]*compiled
	inbounds map[svcKey]*compiled
	// inboundObjs contribute to proxies' own inbound policy, in Ref order.
	inboundObjs []config.InboundContributor
	// defaultAuthz is the mesh-wide default decision.
	defaultAuthz meshv1.AuthzAction
	// routeAttached: policies on routes (RateLimitPolicy on an HTTPRoute),
	// by route, in resource order (kind, namespace, name).
	routeAttached map[config.Ref][]config.RouteAttacher
	// scoped configure proxies by their own service (Telemetry).
	scoped []config.ProxyScoped
	// egress: the namespaces and external hosts every snapshot carries.
	egress egressIndex
}

// buildIndex sorts the state's resources by the hooks their kinds implement.
func buildIndex(st *view.State, log *slog.Logger, defaultAuthz meshv1.AuthzAction) *index {
	idx := &index{
		log:          log,
		defaultAuthz: defaultAuthz,
		declared:     map[svcKey]config.Declarer{},
		attached:     map[svcKey][]attached{},
		objects:      map[config.Ref]config.Object{},
		endpoints:    map[string][]*meshv1.Endpoint{},
		byApp:        map[string]map[string][]*meshv1.Endpoint{},
		cache:        map[svcKey]*compiled{},
		inbounds:     map[svcKey]*compiled{},

		routeAttached: map[config.Ref][]config.RouteAttacher{},
	}
	for _, r := range st.Resources() {
		idx.objects[r.Object.Ref()] = r.Object
		if d, ok := r.Object.(config.Declarer); ok {
			idx.declared[keyOf(d.Declares())] = d
		}
		if ic, ok := r.Object.(config.InboundContributor); ok {
			idx.inboundObjs = append(idx.inboundObjs, ic)
		}
		if ps, ok := r.Object.(config.ProxyScoped); ok {
			idx.scoped = append(idx.scoped, ps)
		}
		if a, ok := r.Object.(config.Attacher); ok {
			for _, at := range a.Attachments() {
				k := keyOf(at.Service)
				idx.attached[k] = append(idx.attached[k], attached{obj: a, at: at, createRev: r.CreateRevision})
			}
		}
		if a, ok := r.Object.(config.RouteAttacher); ok {
			for _, ref := range a.RouteTargets() {
				idx.routeAttached[ref] = append(idx.routeAttached[ref], a)
			}
		}
	}
	sort.Slice(idx.inboundObjs, func(i, j int) bool { return refLess(idx.inboundObjs[i].Ref(), idx.inboundObjs[j].Ref()) })
	for _, ep := range st.Endpoints() {
		idx.endpoints[ep.Namespace] = append(idx.endpoints[ep.Namespace], ep)
	}
	for ns, eps := range idx.endpoints {
		sort.Slice(eps, func(i, j int) bool { return eps[i].Id < eps[j].Id })
		apps := map[string][]*meshv1.Endpoint{}
		for _, ep := range eps {
			if app, ok := ep.Labels["app"]; ok {
				apps[app] = append(apps[app], ep)
			}
		}
		idx.byApp[ns] = apps
	}
	idx.egress = buildEgress(st, idx.declared)
	return idx
}

func hashService(s *meshv1.Service) [sha256.Size]byte { return sha256.Sum256(marshal(s)) }

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

// inbound is the proxy's own service (ports) and its inbound policy; the
// hash covers both.
func (idx *index) inbound(k svcKey) *compiled {
	if c, ok := idx.inbounds[k]; ok {
		return c
	}
	svc := idx.base(k)
	if h, ok := idx.declared[k].(healthChecked); ok {
		svc.HealthCheck = h.HealthCheck() // only the service's own proxies run it
	}
	pol := idx.inboundPolicy(k)
	h := sha256.New()
	sh := hashService(svc)
	h.Write(sh[:])
	h.Write(marshal(pol))
	c := &compiled{key: k, svc: svc, policy: pol}
	h.Sum(c.hash[:0])
	idx.inbounds[k] = c
	return c
}

// healthChecked is a declaring kind with a health check (a Service).
type healthChecked interface{ HealthCheck() *meshv1.HealthCheck }

// mtlsModer is a declaring kind with an mTLS mode (a Service).
type mtlsModer interface{ MTLSMode() meshv1.MtlsMode }

// inboundPolicy is what a proxy of service k enforces on traffic it
// receives: its mTLS mode (STRICT unless the Service says otherwise), the
// mesh-wide default authorization and every object that applies to k
// (authorization policies, rate limits), in Ref order.
func (idx *index) inboundPolicy(k svcKey) *meshv1.InboundPolicy {
	mode := meshv1.MtlsMode_STRICT
	if m, ok := idx.declared[k].(mtlsModer); ok {
		mode = m.MTLSMode()
	}
	p := &meshv1.InboundPolicy{MtlsMode: mode, Authorization: &meshv1.Authorization{DefaultAction: idx.defaultAuthz}}
	key := config.ServiceKey{Namespace: k.ns, Name: k.name}
	for _, o := range idx.inboundObjs {
		if o.AppliesTo(key) {
			o.ContributeInbound(p)
		}
	}
	return p
}

func refLess(a, b config.Ref) bool {
	if a.Kind != b.Kind {
		return a.Kind < b.Kind
	}
	if a.Namespace != b.Namespace {
		return a.Namespace < b.Namespace
	}
	return a.Name < b.Name
}

// marshal is m's deterministic encoding, what content hashes are taken of.
func marshal(m proto.Message) []byte {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		// Marshal of a well-formed message does not fail; hash the text
		// form rather than pretend the content is unchanged.
		b = []byte(fmt.Sprint(m))
	}
	return b
}

func (idx *index) service(k svcKey) *compiled {
	if c, ok := idx.cache[k]; ok {
		return c
	}
	svc := idx.base(k)
	sel := idx.selector(k)
	accounts, nsPath := idx.accounts(k), "ns/"+k.ns+"/sa/"
	if eps, ok := idx.externalEndpoints(k); ok {
		svc.Endpoints = eps
	} else {
		candidates := idx.endpoints[k.ns]
		if app, ok := sel["app"]; ok {
			candidates = idx.byApp[k.ns][app]
		}
		for _, ep := range candidates {
			if ep.Healthy && matches(sel, ep.Labels) && runsAs(ep.Identity, nsPath, accounts) {
				svc.Endpoints = append(svc.Endpoints, ep)
			}
		}
	}
	b := config.NewServiceBuild(svc)
	b.Lookup = func(ref config.Ref) config.Object { return idx.objects[ref] }
	b.RoutePolicies = func(ref config.Ref) []config.RouteAttacher { return idx.routeAttached[ref] }
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
	c := &compiled{key: k, svc: svc, hash: hashService(svc)}
	for d := range deps {
		c.deps = append(c.deps, d)
	}
	sort.Slice(c.deps, func(i, j int) bool { return c.deps[i].less(c.deps[j]) })
	idx.cache[k] = c
	return c
}

// accounts are the service accounts k's endpoints may run as (a Service's
// spec.serviceAccounts and their default; an undeclared service: its name).
func (idx *index) accounts(k svcKey) []string {
	if a, ok := idx.declared[k].(interface{ Accounts() []string }); ok {
		return a.Accounts()
	}
	return []string{k.name}
}

// runsAs reports whether an endpoint whose certificate is identity may serve
// a service running as accounts in the namespace whose SPIFFE path prefix is
// nsPath ("ns/<ns>/sa/"). Register already refuses others; this keeps out
// one registered before the Service's accounts changed (or through a
// replica that did not check), as soon as the change is compiled. An
// endpoint without an identity (tests' hand-made ones; Register always sets
// it) is not judged here.
func runsAs(identity, nsPath string, accounts []string) bool {
	if identity == "" {
		return true
	}
	_, path, ok := strings.Cut(strings.TrimPrefix(identity, "spiffe://"), "/")
	if !ok {
		return false
	}
	sa, ok := strings.CutPrefix(path, nsPath)
	return ok && slices.Contains(accounts, sa)
}

func matches(selector, labels map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}
