package xds

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

func grpcStatus(c uint32) *uint32 { return &c }

// TestTranslateFilters: each Trellis route filter becomes its xDS form on
// every xDS route of its rule.
func TestTranslateFilters(t *testing.T) {
	prefix := &meshv1.Match{Path: &meshv1.PathMatch{Type: meshv1.PathMatch_PREFIX, Value: "/old"}}
	exactM := &meshv1.Match{Path: &meshv1.PathMatch{Type: meshv1.PathMatch_EXACT, Value: "/x"}}
	be := []*meshv1.Backend{{Service: "web", Namespace: "default", Weight: 1}}
	f := func(rf *meshv1.RouteFilter) []*meshv1.RouteFilter { return []*meshv1.RouteFilter{rf} }
	snap := &meshv1.Snapshot{Services: []*meshv1.Service{{Name: "web", Namespace: "default",
		Ports: []*meshv1.Port{{Name: "http", Port: 80, Protocol: meshv1.Protocol_HTTP}},
		Routes: []*meshv1.Route{
			{Name: "headers", Matches: []*meshv1.Match{prefix, exactM}, Backends: be, Filters: f(&meshv1.RouteFilter{Filter: &meshv1.RouteFilter_RequestHeaderModifier{
				RequestHeaderModifier: &meshv1.HeaderModifier{Set: []*meshv1.HeaderValue{{Name: "x-a", Value: "1"}}, Add: []*meshv1.HeaderValue{{Name: "x-b", Value: "2"}}, Remove: []string{"x-c"}}}})},
			{Name: "rewrite", Matches: []*meshv1.Match{prefix}, Backends: be, Filters: f(&meshv1.RouteFilter{Filter: &meshv1.RouteFilter_UrlRewrite{
				UrlRewrite: &meshv1.URLRewrite{Hostname: "new.example", Path: &meshv1.PathModifier{Type: meshv1.PathModifier_REPLACE_PREFIX_MATCH, Value: "/new"}}}})},
			{Name: "redirect", Matches: []*meshv1.Match{exactM}, Backends: be, Filters: f(&meshv1.RouteFilter{Filter: &meshv1.RouteFilter_RequestRedirect{
				RequestRedirect: &meshv1.RequestRedirect{Scheme: "https", StatusCode: 301, Path: &meshv1.PathModifier{Value: "/moved"}}}})},
			{Name: "mirror", Backends: be, Filters: f(&meshv1.RouteFilter{Filter: &meshv1.RouteFilter_RequestMirror{
				RequestMirror: &meshv1.RequestMirror{Backend: &meshv1.Backend{Service: "shadow", Namespace: "default", Port: 80}, Numerator: 1, Denominator: 10}}})},
			{Name: "fault", Backends: be, Filters: f(&meshv1.RouteFilter{Filter: &meshv1.RouteFilter_Fault{Fault: &meshv1.Fault{
				Delay: &meshv1.FaultDelay{FixedDelay: durationpb.New(150e6), Percent: 25},
				Abort: &meshv1.FaultAbort{HttpStatus: 503, GrpcStatus: grpcStatus(8), Percent: 12.5}}}})},
		}}}}
	rs, err := Translate(snap)
	if err != nil {
		t.Fatal(err)
	}
	routes := rs[resource.RouteType][0].(*routev3.RouteConfiguration).GetVirtualHosts()[0].GetRoutes()
	byName := map[string][]*routev3.Route{}
	for _, r := range routes {
		byName[r.GetName()] = append(byName[r.GetName()], r)
	}
	if h := byName["headers"]; len(h) != 2 || len(h[1].GetRequestHeadersToAdd()) != 2 ||
		h[1].GetRequestHeadersToAdd()[0].GetAppendAction() != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD || h[1].GetRequestHeadersToRemove()[0] != "x-c" {
		t.Errorf("header modifier on both matches' routes: %v", h)
	}
	if a := byName["rewrite"][0].GetRoute(); a.GetPrefixRewrite() != "/new" || a.GetHostRewriteLiteral() != "new.example" {
		t.Errorf("rewrite = %v", a)
	}
	if r := byName["redirect"][0].GetRedirect(); r == nil || r.GetSchemeRedirect() != "https" || r.GetPathRedirect() != "/moved" ||
		r.GetResponseCode() != routev3.RedirectAction_MOVED_PERMANENTLY {
		t.Errorf("redirect = %v", byName["redirect"][0])
	}
	if m := byName["mirror"][0].GetRoute().GetRequestMirrorPolicies(); len(m) != 1 || m[0].GetCluster() != "shadow.default:80" ||
		m[0].GetRuntimeFraction().GetDefaultValue().GetNumerator() != 100_000 {
		t.Errorf("mirror = %v", m)
	}
	hf := &faultv3.HTTPFault{}
	if err := byName["fault"][0].GetTypedPerFilterConfig()[faultFilterName].UnmarshalTo(hf); err != nil {
		t.Fatalf("fault config: %v", err)
	}
	if hf.GetAbort().GetGrpcStatus() != 8 || hf.GetAbort().GetPercentage().GetNumerator() != 125_000 ||
		hf.GetDelay().GetFixedDelay().AsDuration() != 150e6 || hf.GetDelay().GetPercentage().GetNumerator() != 250_000 {
		t.Errorf("fault = %v", hf)
	}
	for _, r := range routes {
		if err := r.Validate(); err != nil {
			t.Errorf("route %s does not validate: %v", r.GetName(), err)
		}
	}
}
