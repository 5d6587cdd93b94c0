package config

import (
	"sort"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// The hooks a kind may implement beyond Object. CheckSet and the compiler
// find them by interface, never by type, so a new kind plugs in by
// implementing them in its own file (see kinds.go).

// setChecker is a kind with cross-object checks: problems only a set of
// objects can show (a route naming a port its Service does not declare).
// CheckSet calls it for every object of the set, with the whole set.
type setChecker interface {
	checkSet(set *Set) []error
}

// ServiceKey names a mesh service.
type ServiceKey struct {
	Namespace, Name string
}

// String renders "name.namespace".
func (k ServiceKey) String() string { return k.Name + "." + k.Namespace }

// Declarer is a kind that declares a mesh service: its ports and which
// endpoints serve it (Service). A service nothing declares compiles to one
// http port 80 served by the endpoints labelled app=<name>.
type Declarer interface {
	Object
	// Declares is the service declared.
	Declares() ServiceKey
	// DeclarePorts sets svc's ports.
	DeclarePorts(svc *meshv1.Service)
	// Selector picks the service's endpoints by label.
	Selector() map[string]string
}

// Attachment is one service (and port) an Attacher attaches to.
type Attachment struct {
	Service ServiceKey
	// Port is the service port; 0 means every port.
	Port uint32
}

// Attacher is a kind that attaches to services — by parentRefs (routes) or
// targetRefs (policies) — and contributes to their compiled form.
type Attacher interface {
	Object
	// Attachments lists what the object attaches to, each service and port
	// once, in a stable order.
	Attachments() []Attachment
	// Contribute adds what the object brings to the service it attached to
	// through at. createRev is the object's store create revision (the
	// tie-breaker of route precedence).
	Contribute(b *ServiceBuild, at Attachment, createRev int64)
}

// Set is a set of objects indexed by Ref: what a set check reads.
type Set struct {
	byRef map[Ref]Object
}

// Get returns the object ref names, or nil.
func (s *Set) Get(ref Ref) Object { return s.byRef[ref] }

// service returns the Service ns/name of the set, or nil.
func (s *Set) service(ns, name string) *Service {
	svc, _ := s.byRef[Ref{Kind: "Service", Namespace: ns, Name: name}].(*Service)
	return svc
}

// ServiceBuild is one service being compiled. Attached objects add to it;
// Finish puts it in order.
type ServiceBuild struct {
	// Service is the compiled service: name, namespace and ports are set
	// when attached objects contribute; endpoints are the compiler's.
	Service *meshv1.Service
	// Lookup finds another resource of the mesh by Ref (a route's
	// FaultInjection); nil or a miss returns nil.
	Lookup func(Ref) Object
	routes []rankedRoute
	// inbound is what the service's own proxies enforce on their inbound
	// traffic; nil until a policy contributes to it.
	inbound *meshv1.InboundPolicy
}

// InboundPolicy is the service's inbound policy, created on first use:
// policies attached to the service add their part to it.
func (b *ServiceBuild) InboundPolicy() *meshv1.InboundPolicy {
	if b.inbound == nil {
		b.inbound = &meshv1.InboundPolicy{}
	}
	return b.inbound
}

// Inbound is the inbound policy the attached objects built, or nil.
func (b *ServiceBuild) Inbound() *meshv1.InboundPolicy { return b.inbound }

// NewServiceBuild starts building svc.
func NewServiceBuild(svc *meshv1.Service) *ServiceBuild { return &ServiceBuild{Service: svc} }

// RouteRank orders a service's routes (Gateway API HTTPRoute precedence):
// exact path, then regex, then the longest prefix; then a method match; then
// the most header matches; then the most query parameter matches; then the
// oldest route (creationTimestamp, then store create revision), then
// namespace/name; then rule and match order within the route; then port.
type RouteRank struct {
	PathRank    int // 0 exact, 1 regex, 2 prefix
	PathLen     int
	HasMethod   bool
	Headers     int
	QueryParams int
	Created     time.Time
	CreateRev   int64
	FullName    string // namespace/name
	Rule        int
	Match       int
	Port        uint32
}

func (a *RouteRank) less(b *RouteRank) bool {
	switch {
	case a.PathRank != b.PathRank:
		return a.PathRank < b.PathRank
	case a.PathRank != 1 && a.PathLen != b.PathLen:
		return a.PathLen > b.PathLen
	case a.HasMethod != b.HasMethod:
		return a.HasMethod
	case a.Headers != b.Headers:
		return a.Headers > b.Headers
	case a.QueryParams != b.QueryParams:
		return a.QueryParams > b.QueryParams
	case !a.Created.Equal(b.Created):
		return a.Created.Before(b.Created)
	case a.CreateRev != b.CreateRev:
		return a.CreateRev < b.CreateRev
	case a.FullName != b.FullName:
		return a.FullName < b.FullName
	case a.Rule != b.Rule:
		return a.Rule < b.Rule
	case a.Match != b.Match:
		return a.Match < b.Match
	}
	return a.Port < b.Port
}

type rankedRoute struct {
	rank  RouteRank
	route *meshv1.Route
}

// AddRoute adds a route to the service, ordered among all of its routes by
// rank; the proxy takes the first that matches.
func (b *ServiceBuild) AddRoute(r *meshv1.Route, rank RouteRank) {
	b.routes = append(b.routes, rankedRoute{rank: rank, route: r})
}

// Finish orders the routes into Service.Routes.
func (b *ServiceBuild) Finish() {
	if len(b.routes) == 0 {
		return
	}
	sort.SliceStable(b.routes, func(i, j int) bool { return b.routes[i].rank.less(&b.routes[j].rank) })
	b.Service.Routes = make([]*meshv1.Route, len(b.routes))
	for i := range b.routes {
		b.Service.Routes[i] = b.routes[i].route
	}
	b.routes = nil
}
