package xds

import (
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	commonfaultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// faultFilterName is the HTTP fault filter every listener carries (empty:
// no fault) so that a route can configure it; grpc-go implements it.
const faultFilterName = "envoy.filters.http.fault"

// Route filters in xDS terms. grpc-go honours faults only (and fails an
// RPC on a redirect route, as a redirect means nothing to gRPC); Envoy
// honours all of them.

// applyFilters sets what route's Trellis filters say on one xDS route.
// match is the route's path match, which a prefix rewrite needs.
func (t *translator) applyFilters(rt *routev3.Route, filters []*meshv1.RouteFilter, match *meshv1.Match, port uint32) error {
	a := rt.GetRoute()
	for i, f := range filters {
		switch f := f.GetFilter().(type) {
		case *meshv1.RouteFilter_RequestHeaderModifier:
			rt.RequestHeadersToAdd = append(rt.RequestHeadersToAdd, headerOptions(f.RequestHeaderModifier)...)
			rt.RequestHeadersToRemove = append(rt.RequestHeadersToRemove, f.RequestHeaderModifier.GetRemove()...)
		case *meshv1.RouteFilter_ResponseHeaderModifier:
			rt.ResponseHeadersToAdd = append(rt.ResponseHeadersToAdd, headerOptions(f.ResponseHeaderModifier)...)
			rt.ResponseHeadersToRemove = append(rt.ResponseHeadersToRemove, f.ResponseHeaderModifier.GetRemove()...)
		case *meshv1.RouteFilter_UrlRewrite:
			rewrite(a, f.UrlRewrite, match)
		case *meshv1.RouteFilter_RequestRedirect:
			rt.Action = &routev3.Route_Redirect{Redirect: redirect(f.RequestRedirect, match)}
		case *meshv1.RouteFilter_RequestMirror:
			m := f.RequestMirror
			a.RequestMirrorPolicies = append(a.RequestMirrorPolicies, &routev3.RouteAction_RequestMirrorPolicy{
				Cluster:         t.backendCluster(m.GetBackend(), port),
				RuntimeFraction: &corev3.RuntimeFractionalPercent{DefaultValue: perMillion(mirrorFraction(m))},
			})
		case *meshv1.RouteFilter_Fault:
			cfg, err := anypb.New(fault(f.Fault))
			if err != nil {
				return err
			}
			if rt.TypedPerFilterConfig == nil {
				rt.TypedPerFilterConfig = map[string]*anypb.Any{}
			}
			rt.TypedPerFilterConfig[faultFilterName] = cfg
		default:
			return fmt.Errorf("filters[%d]: unknown filter", i)
		}
	}
	return nil
}

func headerOptions(m *meshv1.HeaderModifier) []*corev3.HeaderValueOption {
	var out []*corev3.HeaderValueOption
	for _, h := range m.GetSet() {
		out = append(out, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: h.GetName(), Value: h.GetValue()},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD})
	}
	for _, h := range m.GetAdd() {
		out = append(out, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: h.GetName(), Value: h.GetValue()},
			AppendAction: corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD})
	}
	return out
}

// fullPath matches a whole path, for REPLACE_FULL_PATH.
var fullPath = &matcherv3.RegexMatcher{Regex: "^/.*$"}

func rewrite(a *routev3.RouteAction, r *meshv1.URLRewrite, match *meshv1.Match) {
	if a == nil {
		return
	}
	if h := r.GetHostname(); h != "" {
		a.HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: h}
	}
	p := r.GetPath()
	switch {
	case p == nil:
	case p.GetType() == meshv1.PathModifier_REPLACE_PREFIX_MATCH && match.GetPath().GetType() == meshv1.PathMatch_PREFIX && match.GetPath() != nil:
		a.PrefixRewrite = p.GetValue()
	default:
		a.RegexRewrite = &matcherv3.RegexMatchAndSubstitute{Pattern: fullPath, Substitution: p.GetValue()}
	}
}

var redirectCodes = map[uint32]routev3.RedirectAction_RedirectResponseCode{
	301: routev3.RedirectAction_MOVED_PERMANENTLY, 302: routev3.RedirectAction_FOUND, 303: routev3.RedirectAction_SEE_OTHER,
	307: routev3.RedirectAction_TEMPORARY_REDIRECT, 308: routev3.RedirectAction_PERMANENT_REDIRECT,
}

func redirect(r *meshv1.RequestRedirect, match *meshv1.Match) *routev3.RedirectAction {
	ra := &routev3.RedirectAction{HostRedirect: r.GetHostname(), PortRedirect: r.GetPort(), ResponseCode: routev3.RedirectAction_FOUND}
	if c, ok := redirectCodes[r.GetStatusCode()]; ok {
		ra.ResponseCode = c
	}
	if s := r.GetScheme(); s != "" {
		ra.SchemeRewriteSpecifier = &routev3.RedirectAction_SchemeRedirect{SchemeRedirect: s}
	}
	if p := r.GetPath(); p != nil {
		if p.GetType() == meshv1.PathModifier_REPLACE_PREFIX_MATCH && match.GetPath() != nil && match.GetPath().GetType() == meshv1.PathMatch_PREFIX {
			ra.PathRewriteSpecifier = &routev3.RedirectAction_PrefixRewrite{PrefixRewrite: p.GetValue()}
		} else {
			ra.PathRewriteSpecifier = &routev3.RedirectAction_PathRedirect{PathRedirect: p.GetValue()}
		}
	}
	return ra
}

// mirrorFraction is the mirrored share in millionths (denominator 0: all).
func mirrorFraction(m *meshv1.RequestMirror) uint32 {
	d := uint64(m.GetDenominator())
	if d == 0 {
		return 1_000_000
	}
	n := min(uint64(m.GetNumerator()), d)
	return uint32(n * 1_000_000 / d)
}

func perMillion(n uint32) *typev3.FractionalPercent {
	return &typev3.FractionalPercent{Numerator: n, Denominator: typev3.FractionalPercent_MILLION}
}

// percentPerMillion turns a 0..100 percentage into millionths.
func percentPerMillion(p float64) uint32 {
	switch {
	case p <= 0 || p != p:
		return 0
	case p >= 100:
		return 1_000_000
	}
	return uint32(p * 10_000)
}

// fault is the route's fault as Envoy's HTTP fault filter config: a gRPC
// status where one is set (grpc-go aborts with it), else the HTTP status.
func fault(f *meshv1.Fault) *faultv3.HTTPFault {
	out := &faultv3.HTTPFault{}
	if d := f.GetDelay(); d != nil {
		out.Delay = &commonfaultv3.FaultDelay{
			FaultDelaySecifier: &commonfaultv3.FaultDelay_FixedDelay{FixedDelay: d.GetFixedDelay()},
			Percentage:         perMillion(percentPerMillion(d.GetPercent())),
		}
	}
	if ab := f.GetAbort(); ab != nil {
		out.Abort = &faultv3.FaultAbort{Percentage: perMillion(percentPerMillion(ab.GetPercent()))}
		if ab.GrpcStatus != nil {
			out.Abort.ErrorType = &faultv3.FaultAbort_GrpcStatus{GrpcStatus: ab.GetGrpcStatus()}
		} else {
			out.Abort.ErrorType = &faultv3.FaultAbort_HttpStatus{HttpStatus: ab.GetHttpStatus()}
		}
	}
	return out
}
