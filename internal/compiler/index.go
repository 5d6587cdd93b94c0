package compiler

import (
	"crypto/sha256"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/config"
)

type svcKey struct{ ns, name string }

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
}

// routeRef is an HTTPRoute attached to a service through one parentRef.
type routeRef struct {
	route     *config.HTTPRoute
	createRev int64
	port      uint32 // parentRef port; 0 = every port
}

// index is the view rearranged for compiling, rebuilt after every change;
// services are compiled lazily and cached.
type index struct {
	log       *slog.Logger
	services  map[svcKey]*config.Service
	routes    map[svcKey][]routeRef
	endpoints map[string][]*meshv1.Endpoint // by namespace, sorted by id
	cache     map[svcKey]*compiled
	inbounds  map[svcKey]*compiled
}

func (c *Compiler) buildIndex() *index {
	idx := &index{
		log:       c.log,
		services:  map[svcKey]*config.Service{},
		routes:    map[svcKey][]routeRef{},
		endpoints: map[string][]*meshv1.Endpoint{},
		cache:     map[svcKey]*compiled{},
		inbounds:  map[svcKey]*compiled{},
	}
	for _, r := range c.resources {
		switch o := r.obj.(type) {
		case *config.Service:
			ref := o.Ref()
			idx.services[svcKey{ns: ref.Namespace, name: ref.Name}] = o
		case *config.HTTPRoute:
			idx.addRoute(o, r.createRev)
		}
	}
	for _, ep := range c.endpoints {
		idx.endpoints[ep.Namespace] = append(idx.endpoints[ep.Namespace], ep)
	}
	for _, eps := range idx.endpoints {
		sort.Slice(eps, func(i, j int) bool { return eps[i].Id < eps[j].Id })
	}
	return idx
}

// isServiceRef reports whether a Gateway API reference names a core Service.
// A missing kind counts as Service: Trellis has no Gateways, so a parentRef
// without a kind can only mean the mesh (GAMMA) Service.
func isServiceRef(group *gwapiv1.Group, kind *gwapiv1.Kind) bool {
	if group != nil && *group != "" && *group != "core" {
		return false
	}
	return kind == nil || *kind == "Service"
}

func (idx *index) addRoute(r *config.HTTPRoute, createRev int64) {
	ports := map[svcKey]map[uint32]bool{}
	for _, p := range r.Spec.ParentRefs {
		if !isServiceRef(p.Group, p.Kind) {
			continue
		}
		k := svcKey{ns: r.Namespace, name: string(p.Name)}
		if p.Namespace != nil && *p.Namespace != "" {
			k.ns = string(*p.Namespace)
		}
		var port uint32
		if p.Port != nil {
			port = uint32(*p.Port)
		}
		if ports[k] == nil {
			ports[k] = map[uint32]bool{}
		}
		ports[k][port] = true
	}
	for k, set := range ports {
		if set[0] {
			// A parentRef without port already covers every port.
			set = map[uint32]bool{0: true}
		}
		for port := range set {
			idx.routes[k] = append(idx.routes[k], routeRef{route: r, createRev: createRev, port: port})
		}
	}
}

func hashService(s *meshv1.Service) [sha256.Size]byte {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(s)
	if err != nil {
		// Marshal of a well-formed message does not fail; hash the text
		// form rather than pretend the content is unchanged.
		b = []byte(s.String())
	}
	return sha256.Sum256(b)
}

var protocols = map[string]meshv1.Protocol{
	"":      meshv1.Protocol_HTTP,
	"http":  meshv1.Protocol_HTTP,
	"http2": meshv1.Protocol_HTTP2,
	"grpc":  meshv1.Protocol_GRPC,
	"tcp":   meshv1.Protocol_TCP,
}

// ports of a service: from its Service resource, or one http port 80 whose
// target (0) the proxy maps to its app's port.
func (idx *index) ports(k svcKey) []*meshv1.Port {
	res := idx.services[k]
	if res == nil || len(res.Spec.Ports) == 0 {
		return []*meshv1.Port{{Name: "http", Port: 80, Protocol: meshv1.Protocol_HTTP}}
	}
	out := make([]*meshv1.Port, 0, len(res.Spec.Ports))
	for _, p := range res.Spec.Ports {
		proto, ok := protocols[strings.ToLower(string(p.Protocol))]
		if !ok {
			proto = meshv1.Protocol_PROTOCOL_UNSPECIFIED
		}
		out = append(out, &meshv1.Port{
			Name:       p.Name,
			Port:       uint32(p.Port),
			TargetPort: uint32(p.TargetPort),
			Protocol:   proto,
		})
	}
	return out
}

func (idx *index) selector(k svcKey) map[string]string {
	if res := idx.services[k]; res != nil && len(res.Spec.Selector) > 0 {
		return res.Spec.Selector
	}
	return map[string]string{"app": k.name}
}

func (idx *index) inbound(k svcKey) *compiled {
	if c, ok := idx.inbounds[k]; ok {
		return c
	}
	svc := &meshv1.Service{Name: k.name, Namespace: k.ns, Ports: idx.ports(k)}
	c := &compiled{key: k, svc: svc, hash: hashService(svc)}
	idx.inbounds[k] = c
	return c
}

func (idx *index) service(k svcKey) *compiled {
	if c, ok := idx.cache[k]; ok {
		return c
	}
	svc := &meshv1.Service{Name: k.name, Namespace: k.ns, Ports: idx.ports(k)}
	sel := idx.selector(k)
	for _, ep := range idx.endpoints[k.ns] {
		if ep.Healthy && matches(sel, ep.Labels) {
			svc.Endpoints = append(svc.Endpoints, ep)
		}
	}
	svc.Routes = idx.compileRoutes(k)
	deps := map[svcKey]bool{}
	for _, r := range svc.Routes {
		for _, b := range r.Backends {
			if d := (svcKey{ns: b.Namespace, name: b.Service}); d != k {
				deps[d] = true
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

func matches(selector, labels map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// flatRoute is one HTTPRouteMatch of one rule, the unit Gateway API
// precedence orders.
type flatRoute struct {
	ref       routeRef
	created   time.Time
	fullName  string // namespace/name
	rule      int
	matchIdx  int
	pathRank  int // 0 exact, 1 regex, 2 prefix
	pathLen   int
	hasMethod bool
	headers   int
	route     *meshv1.Route
}

// compileRoutes orders the routes attached to k by Gateway API HTTPRoute
// precedence: exact path, then regex, then the longest prefix; then a method
// match; then the most header matches; then the oldest route
// (creationTimestamp, then store creation order), then namespace/name; then
// rule and match order within the route. Each match becomes one Route so
// the proxy's first-match walk follows this order exactly.
func (idx *index) compileRoutes(k svcKey) []*meshv1.Route {
	var flat []flatRoute
	for _, ref := range idx.routes[k] {
		r := ref.route
		for ri, rule := range r.Spec.Rules {
			name := fmt.Sprintf("%s/%s/rules[%d]", r.Namespace, r.Name, ri)
			backends := idx.backends(r, rule)
			matchList := rule.Matches
			if len(matchList) == 0 {
				matchList = []gwapiv1.HTTPRouteMatch{{}}
			}
			for mi, m := range matchList {
				if len(m.QueryParams) > 0 {
					// The snapshot cannot express query matches yet; dropping
					// the condition would widen the match, so drop the match.
					idx.log.Warn("query parameter matches are not supported; match ignored",
						"route", r.Namespace+"/"+r.Name, "rule", ri, "match", mi)
					continue
				}
				pm, rank := pathMatch(m.Path)
				match := &meshv1.Match{Path: pm}
				for _, h := range m.Headers {
					t := meshv1.HeaderMatch_EXACT
					if h.Type != nil && *h.Type == gwapiv1.HeaderMatchRegularExpression {
						t = meshv1.HeaderMatch_REGEX
					}
					match.Headers = append(match.Headers, &meshv1.HeaderMatch{
						Type: t, Name: strings.ToLower(string(h.Name)), Value: h.Value,
					})
				}
				if m.Method != nil {
					match.Method = string(*m.Method)
				}
				flat = append(flat, flatRoute{
					ref:       ref,
					created:   r.CreationTimestamp.Time,
					fullName:  r.Namespace + "/" + r.Name,
					rule:      ri,
					matchIdx:  mi,
					pathRank:  rank,
					pathLen:   len(pm.Value),
					hasMethod: match.Method != "",
					headers:   len(match.Headers),
					route: &meshv1.Route{
						Name:     name,
						Port:     ref.port,
						Matches:  []*meshv1.Match{match},
						Backends: backends,
					},
				})
			}
		}
	}
	sort.SliceStable(flat, func(i, j int) bool {
		a, b := &flat[i], &flat[j]
		switch {
		case a.pathRank != b.pathRank:
			return a.pathRank < b.pathRank
		case a.pathRank != 1 && a.pathLen != b.pathLen:
			return a.pathLen > b.pathLen
		case a.hasMethod != b.hasMethod:
			return a.hasMethod
		case a.headers != b.headers:
			return a.headers > b.headers
		case !a.created.Equal(b.created):
			return a.created.Before(b.created)
		case a.ref.createRev != b.ref.createRev:
			return a.ref.createRev < b.ref.createRev
		case a.fullName != b.fullName:
			return a.fullName < b.fullName
		case a.rule != b.rule:
			return a.rule < b.rule
		case a.matchIdx != b.matchIdx:
			return a.matchIdx < b.matchIdx
		}
		return a.ref.port < b.ref.port
	})
	out := make([]*meshv1.Route, len(flat))
	for i := range flat {
		out[i] = flat[i].route
	}
	return out
}

func pathMatch(p *gwapiv1.HTTPPathMatch) (*meshv1.PathMatch, int) {
	value := "/"
	t := gwapiv1.PathMatchPathPrefix
	if p != nil {
		if p.Value != nil {
			value = *p.Value
		}
		if p.Type != nil {
			t = *p.Type
		}
	}
	switch t {
	case gwapiv1.PathMatchExact:
		return &meshv1.PathMatch{Type: meshv1.PathMatch_EXACT, Value: value}, 0
	case gwapiv1.PathMatchRegularExpression:
		return &meshv1.PathMatch{Type: meshv1.PathMatch_REGEX, Value: value}, 1
	}
	return &meshv1.PathMatch{Type: meshv1.PathMatch_PREFIX, Value: value}, 2
}

func (idx *index) backends(r *config.HTTPRoute, rule gwapiv1.HTTPRouteRule) []*meshv1.Backend {
	var out []*meshv1.Backend
	for _, br := range rule.BackendRefs {
		if !isServiceRef(br.Group, br.Kind) {
			idx.log.Warn("backendRef is not a Service; ignored", "route", r.Namespace+"/"+r.Name, "backend", br.Name)
			continue
		}
		b := &meshv1.Backend{Service: string(br.Name), Namespace: r.Namespace, Weight: 1}
		if br.Namespace != nil && *br.Namespace != "" {
			b.Namespace = string(*br.Namespace)
		}
		if br.Port != nil {
			b.Port = uint32(*br.Port)
		}
		if br.Weight != nil {
			if *br.Weight < 0 {
				b.Weight = 0
			} else {
				b.Weight = uint32(*br.Weight)
			}
		}
		out = append(out, b)
	}
	return out
}
