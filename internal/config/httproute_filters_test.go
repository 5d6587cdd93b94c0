package config

import (
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/prototext"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

func TestRouteFilterValidation(t *testing.T) {
	const at = "v.yaml: document 1 (HTTPRoute default/r): spec.rules[0]."
	rule := func(filters string) string {
		return route(rules("  - filters: [" + filters + "]\n    backendRefs: [{name: a}]\n"))
	}
	cases := []validationCase{
		{"every supported filter", route(rules("  - matches: [{path: {value: /api}}]\n    filters:\n" +
			"    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: '1'}], add: [{name: x-b, value: '2'}], remove: [x-c]}}\n" +
			"    - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-served-by, value: mesh}]}}\n" +
			"    - {type: URLRewrite, urlRewrite: {hostname: inventory.internal, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}\n" +
			"    - {type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 80}, percent: 10}}\n" +
			"    - {type: ExtensionRef, extensionRef: {group: trellis.dev, kind: FaultInjection, name: slow}}\n" +
			"    timeouts: {request: 10s, backendRequest: 2s}\n    backendRefs: [{name: a}]\n")), nil},
		{"redirect needs no backends", route(rules("  - filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301}}]\n")), nil},
		{"no backends and no redirect", route(rules("  - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x, value: z}]}}]\n")),
			[]string{at + "backendRefs: at least one backendRef is required (or a RequestRedirect filter)"}},
		{"useDefaultGateways refused", route(gamma + "  useDefaultGateways: All\n  rules: [{backendRefs: [{name: a}]}]\n"),
			[]string{"v.yaml: document 1 (HTTPRoute default/r): spec.useDefaultGateways: not supported"}},
		{"CORS refused by name", rule("{type: CORS, cors: {allowOrigins: ['https://a.example']}}"), []string{at + "filters[0].type: CORS filters are not supported by the mesh"}},
		{"ExternalAuth refused by name", rule("{type: ExternalAuth, externalAuth: {protocol: HTTP, backendRef: {name: auth}}}"), []string{at + "filters[0].type: ExternalAuth filters are not supported"}},
		{"ExtensionRef to another kind", rule("{type: ExtensionRef, extensionRef: {group: example.com, kind: RateLimit, name: x}}"),
			[]string{at + `filters[0].extensionRef: ExtensionRef to RateLimit (group "example.com") is not supported: only kind FaultInjection, group trellis.dev`}},
		{"type and field disagree", rule("{type: RequestHeaderModifier, responseHeaderModifier: {set: [{name: x, value: z}]}}"),
			[]string{at + `filters[0]: responseHeaderModifier must be unset when type is "RequestHeaderModifier"`, at + `filters[0].requestHeaderModifier: required when type is "RequestHeaderModifier"`}},
		{"filter twice", rule("{type: URLRewrite, urlRewrite: {hostname: a}}, {type: URLRewrite, urlRewrite: {hostname: b}}"), []string{at + "filters: URLRewrite appears 2 times: at most once per rule"}},
		{"redirect and rewrite", rule("{type: URLRewrite, urlRewrite: {hostname: a}}, {type: RequestRedirect, requestRedirect: {hostname: b}}"),
			[]string{at + "filters: RequestRedirect and URLRewrite cannot be in the same rule"}},
		{"hop-by-hop header", rule("{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: Connection, value: close}]}}"),
			[]string{at + "filters[0].requestHeaderModifier.set[0].name: Connection is a hop-by-hop header the proxy owns"}},
		{"internal header", rule("{type: RequestHeaderModifier, requestHeaderModifier: {remove: [X-Trellis-Client-Id]}}"),
			[]string{"remove[0]: X-Trellis-Client-Id is a header the mesh uses internally"}},
		{"header named twice", rule("{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: '1'}], remove: [X-A]}}"),
			[]string{at + `filters[0].requestHeaderModifier.remove[0]: "X-A" is already modified by`}},
		{"empty header modifier", rule("{type: ResponseHeaderModifier, responseHeaderModifier: {}}"), []string{"responseHeaderModifier: empty: give set, add or remove"}},
		{"prefix rewrite needs prefix matches", route(rules("  - matches: [{path: {type: Exact, value: /a}}]\n    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]\n    backendRefs: [{name: a}]\n")),
			[]string{at + "filters[0].urlRewrite.path.type: ReplacePrefixMatch needs every match of the rule to be a PathPrefix match"}},
		{"full path rewrite value", rule("{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: 'x'}}}"), []string{`urlRewrite.path.replaceFullPath: "x" must start with "/"`}},
		{"rewrite hostname", rule("{type: URLRewrite, urlRewrite: {hostname: 'a:80'}}"), []string{`urlRewrite.hostname: "a:80" is not a valid host name`}},
		{"redirect scheme", rule("{type: RequestRedirect, requestRedirect: {scheme: ftp}}"), []string{`requestRedirect.scheme: "ftp": must be http or https`}},
		{"redirect status", rule("{type: RequestRedirect, requestRedirect: {statusCode: 200}}"), []string{"requestRedirect.statusCode: 200: must be 301, 302, 303, 307 or 308"}},
		{"mirror percent", rule("{type: RequestMirror, requestMirror: {backendRef: {name: s}, percent: 101}}"), []string{"requestMirror.percent: must be between 0 and 100, got 101"}},
		{"mirror percent and fraction", rule("{type: RequestMirror, requestMirror: {backendRef: {name: s}, percent: 1, fraction: {numerator: 1}}}"), []string{"requestMirror: give percent or fraction, not both"}},
		{"mirror fraction", rule("{type: RequestMirror, requestMirror: {backendRef: {name: s}, fraction: {numerator: 3, denominator: 2}}}"), []string{"requestMirror.fraction.numerator: must be between 0 and the denominator (2), got 3"}},
		{"mirror backend kind", rule("{type: RequestMirror, requestMirror: {backendRef: {name: s, kind: Pod}}}"), []string{`requestMirror.backendRef.kind: kind "Pod" is not supported`}},
		{"bad timeout", route(rules("  - timeouts: {request: 5 seconds}\n    backendRefs: [{name: a}]\n")), []string{at + `timeouts.request: "5 seconds" is not a Gateway API duration`}},
		{"attempt longer than request", route(rules("  - timeouts: {request: 1s, backendRequest: 2s}\n    backendRefs: [{name: a}]\n")),
			[]string{at + "timeouts.backendRequest: 2s is longer than request 1s"}},
		{"query param regex", route(rules("  - matches: [{queryParams: [{type: RegularExpression, name: v, value: '('}]}]\n    backendRefs: [{name: a}]\n")),
			[]string{at + "matches[0].queryParams[0].value: invalid regular expression"}},
		{"query param twice", route(rules("  - matches: [{queryParams: [{name: v, value: '1'}, {name: v, value: '2'}]}]\n    backendRefs: [{name: a}]\n")),
			[]string{at + `matches[0].queryParams[1].name: "v" is already matched by queryParams[0]`}},
		{"query param names are case-sensitive", route(rules("  - matches: [{queryParams: [{name: v, value: '1'}, {name: V, value: '2'}]}]\n    backendRefs: [{name: a}]\n")), nil},
		{"query param type", route(rules("  - matches: [{queryParams: [{type: Prefix, name: v, value: '1'}]}]\n    backendRefs: [{name: a}]\n")),
			[]string{`queryParams[0].type: unknown query parameter match type "Prefix"`}},
	}
	runValidation(t, cases)
}

// TestHTTPRouteCompiles: filters, timeouts and query matches reach the
// snapshot route, a FaultInjection by ExtensionRef is resolved, and a
// missing one answers 500 rather than being skipped.
func TestHTTPRouteCompiles(t *testing.T) {
	objs := mustDecode(t, "r.yaml", []byte(`apiVersion: trellis.dev/v1alpha1
kind: FaultInjection
metadata: {name: flaky}
spec:
  delay: {fixedDelay: 150ms, percentage: 20}
  abort: {httpStatus: 503, grpcStatus: 14, percentage: 5.5}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{kind: Service, name: inventory}]
  rules:
  - matches: [{path: {value: /api}, queryParams: [{name: v, value: "2"}, {type: RegularExpression, name: debug, value: "1|true"}]}]
    filters:
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: "1"}]}}
    - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: shadow}, fraction: {numerator: 1, denominator: 4}}}
    - {type: ExtensionRef, extensionRef: {group: trellis.dev, kind: FaultInjection, name: flaky}}
    timeouts: {request: 3s, backendRequest: 0s}
    backendRefs: [{name: inventory-v2}]
  - filters:
    - {type: ExtensionRef, extensionRef: {group: trellis.dev, kind: FaultInjection, name: missing}}
    - {type: RequestRedirect, requestRedirect: {scheme: https, port: 8443}}
`))
	byRef := map[Ref]Object{}
	for _, o := range objs {
		byRef[o.Ref()] = o
	}
	r := objs[1].(*HTTPRoute)
	b := NewServiceBuild(&meshv1.Service{Name: "inventory", Namespace: "default"})
	b.Lookup = func(ref Ref) Object { return byRef[ref] }
	r.Contribute(b, Attachment{Service: ServiceKey{"default", "inventory"}}, 1)
	b.Finish()
	if n := len(b.Service.Routes); n != 2 {
		t.Fatalf("got %d routes", n)
	}
	first := b.Service.Routes[0]
	m := first.Matches[0]
	if len(m.QueryParams) != 2 || m.QueryParams[0].Name != "v" || m.QueryParams[1].Type != meshv1.QueryParamMatch_REGEX {
		t.Errorf("query params: %v", m.QueryParams)
	}
	if got := first.Timeouts.GetRequest().AsDuration(); got != 3*time.Second || first.Timeouts.GetBackendRequest() != nil {
		t.Errorf("timeouts: %v (0s means none)", first.Timeouts)
	}
	fs := first.Filters
	if len(fs) != 4 {
		t.Fatalf("filters: %v", fs)
	}
	if fs[1].GetUrlRewrite().GetPath().GetType() != meshv1.PathModifier_REPLACE_PREFIX_MATCH || fs[1].GetUrlRewrite().GetPath().GetValue() != "/v2" {
		t.Errorf("rewrite: %v", fs[1])
	}
	if mm := fs[2].GetRequestMirror(); mm.GetBackend().GetService() != "shadow" || mm.GetBackend().GetNamespace() != "default" || mm.GetNumerator() != 1 || mm.GetDenominator() != 4 {
		t.Errorf("mirror: %v", mm)
	}
	f := fs[3].GetFault()
	if f.GetDelay().GetFixedDelay().AsDuration() != 150*time.Millisecond || f.GetDelay().GetPercent() != 20 ||
		f.GetAbort().GetHttpStatus() != 503 || f.GetAbort().GetGrpcStatus() != 14 || f.GetAbort().GetPercent() != 5.5 {
		t.Errorf("fault: %s", prototext.Format(f))
	}
	second := b.Service.Routes[1]
	if len(second.Backends) != 0 {
		t.Errorf("redirect rule has backends: %v", second.Backends)
	}
	if a := second.Filters[0].GetFault().GetAbort(); a.GetHttpStatus() != 500 || a.GetPercent() != 100 {
		t.Errorf("unresolved ExtensionRef compiled to %v, want a 500 abort for every request", second.Filters[0])
	}
	if rd := second.Filters[1].GetRequestRedirect(); rd.GetScheme() != "https" || rd.GetPort() != 8443 || rd.GetStatusCode() != 302 {
		t.Errorf("redirect: %v", rd)
	}
}

func TestFaultInjectionValidation(t *testing.T) {
	const at = "v.yaml: document 1 (FaultInjection default/f): "
	fi := func(spec string) string {
		return "apiVersion: trellis.dev/v1alpha1\nkind: FaultInjection\nmetadata: {name: f}\nspec: " + spec + "\n"
	}
	cases := []validationCase{
		{"delay and abort", fi("{delay: {fixedDelay: 1s, percentage: 0.5}, abort: {httpStatus: 500, grpcStatus: 13}}"), nil},
		{"abort defaults", fi("{abort: {percentage: 5}}"), nil},
		{"nothing", fi("{}"), []string{at + "spec: give a delay, an abort or both"}},
		{"delay required", fi("{delay: {percentage: 5}}"), []string{at + "spec.delay.fixedDelay: required"}},
		{"delay format", fi("{delay: {fixedDelay: 1.5s}}"), []string{at + `spec.delay.fixedDelay: "1.5s" is not a Gateway API duration`}},
		{"delay too long", fi("{delay: {fixedDelay: 2h}}"), []string{at + "spec.delay.fixedDelay: 2h is longer than 1h"}},
		{"percentage", fi("{abort: {percentage: 101}}"), []string{at + "spec.abort.percentage: must be between 0 and 100, got 101"}},
		{"status", fi("{abort: {httpStatus: 600}}"), []string{at + "spec.abort.httpStatus: must be between 200 and 599, got 600"}},
		{"grpc status", fi("{abort: {grpcStatus: 0}}"), []string{at + "spec.abort.grpcStatus: must be a gRPC status code from 1"}},
		{"unknown field", fi("{abort: {status: 503}}"), []string{`unknown field`}},
	}
	runValidation(t, cases)
	objs := mustDecode(t, "d.yaml", []byte(fi("{abort: {grpcStatus: 14}, delay: {fixedDelay: 10ms}}")))
	f := objs[0].(*FaultInjection).compile()
	if f.GetAbort().GetHttpStatus() != 503 || f.GetAbort().GetPercent() != 100 || f.GetDelay().GetPercent() != 100 {
		t.Errorf("defaults: %v", f)
	}
}
