package config

import (
	"fmt"
	"strings"
	"testing"
)

type validationCase struct {
	name string
	in   string   // one document
	want []string // substrings of the error; none: must decode
}

func runValidation(t *testing.T, cases []validationCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := Decode("v.yaml", []byte(tc.in))
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if len(objs) != 1 {
					t.Fatalf("got %d objects", len(objs))
				}
				return
			}
			if objs != nil {
				t.Errorf("partial result %v", objs)
			}
			wantErrs(t, err, tc.want...)
		})
	}
}

func service(meta, spec string) string {
	return "apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata: {name: web" + meta + "}\nspec: " + spec + "\n"
}

func TestServiceValidation(t *testing.T) {
	const at = "v.yaml: document 1 (Service default/web): "
	cases := []validationCase{
		{"minimal", service("", "{ports: [{port: 80}]}"), nil},
		{"all fields", service(", namespace: shop, labels: {team: a, example.com/tier: x}, annotations: {note: hi}", "{selector: {app: web, version: v1}, ports: [{name: http, port: 80, targetPort: 8080, protocol: http}, {name: grpc, port: 90, protocol: grpc}, {name: h2, port: 91, protocol: http2}, {name: db, port: 92, protocol: tcp}]}"), nil},
		{"no ports", service("", "{}"), []string{at + "spec.ports: at least one port is required"}},
		{"empty ports", service("", "{ports: []}"), []string{at + "spec.ports: at least one port is required"}},
		{"port zero", service("", "{ports: [{port: 0}]}"), []string{at + "spec.ports[0].port: must be between 1 and 65535, got 0"}},
		{"port too big", service("", "{ports: [{port: 65536}]}"), []string{at + "spec.ports[0].port: must be between 1 and 65535, got 65536"}},
		{"negative targetPort", service("", "{ports: [{port: 80, targetPort: -1}]}"), []string{at + "spec.ports[0].targetPort: must be between 1 and 65535, got -1"}},
		{"targetPort too big", service("", "{ports: [{port: 80, targetPort: 70000}]}"), []string{at + "spec.ports[0].targetPort: must be between 1 and 65535, got 70000"}},
		{"duplicate port number", service("", "{ports: [{name: a, port: 80}, {name: b, port: 80}]}"), []string{at + "spec.ports[1].port: 80 is already used by spec.ports[0]"}},
		{"duplicate port name", service("", "{ports: [{name: a, port: 80}, {name: a, port: 81}]}"), []string{at + `spec.ports[1].name: "a" is already used by spec.ports[0]`}},
		{"unnamed port among several", service("", "{ports: [{name: a, port: 80}, {port: 81}]}"), []string{at + "spec.ports[1].name: required when a service has more than one port"}},
		{"bad port name", service("", "{ports: [{name: HTTP_1, port: 80}]}"), []string{at + `spec.ports[0].name: "HTTP_1" is not a valid name`}},
		{"unknown protocol lists the valid ones", service("", "{ports: [{port: 80, protocol: udp}]}"), []string{at + `spec.ports[0].protocol: unknown protocol "udp": must be one of http, http2, grpc, tcp`}},
		{"protocol is case-sensitive", service("", "{ports: [{port: 80, protocol: GRPC}]}"), []string{`unknown protocol "GRPC"`}},
		{"protocol not a string", service("", "{ports: [{port: 80, protocol: 1}]}"), []string{"spec.ports.protocol: must be a string (quote it), got number"}},
		{"bad selector key", service("", "{selector: {'bad key': x}, ports: [{port: 80}]}"), []string{at + `spec.selector: key "bad key": use letters`}},
		{"bad selector key prefix", service("", "{selector: {'Example.com/app': x}, ports: [{port: 80}]}"), []string{at + `spec.selector: key "Example.com/app": prefix must be a DNS subdomain`}},
		{"bad selector value", service("", "{selector: {app: 'a b'}, ports: [{port: 80}]}"), []string{at + `spec.selector[app]: value "a b": use letters`}},
		{"selector value too long", service("", "{selector: {app: "+strings.Repeat("a", 64)+"}, ports: [{port: 80}]}"), []string{"spec.selector[app]: value", "longer than 63 characters"}},
		{"bad name", strings.Replace(service("", "{ports: [{port: 80}]}"), "name: web", "name: Web", 1), []string{`v.yaml: document 1 (Service default/Web): metadata.name: "Web" is not a valid name`}},
		{"bad name says why", strings.Replace(service("", "{ports: [{port: 80}]}"), "name: web", "name: Web", 1), []string{`metadata.name: "Web" is not a valid name: upper case is not allowed (did you mean "web"?)`}},
		{"name with underscore", strings.Replace(service("", "{ports: [{port: 80}]}"), "name: web", "name: web_v1", 1), []string{`metadata.name: "web_v1" is not a valid name: '_' is not allowed`}},
		{"name with dot", strings.Replace(service("", "{ports: [{port: 80}]}"), "name: web", "name: web.v1", 1), []string{`metadata.name: "web.v1" is not a valid name`}},
		{"name too long", strings.Replace(service("", "{ports: [{port: 80}]}"), "name: web", "name: "+strings.Repeat("a", 64), 1), []string{"metadata.name:", "longer than 63 characters"}},
		{"missing name", strings.Replace(service("", "{ports: [{port: 80}]}"), "name: web", "labels: {a: b}", 1), []string{"v.yaml: document 1 (Service): metadata.name: required"}},
		{"bad namespace", service(", namespace: Shop", "{ports: [{port: 80}]}"), []string{`(Service Shop/web): metadata.namespace: "Shop" is not a valid name`}},
		{"bad label", service(", labels: {'a/b/c': x}", "{ports: [{port: 80}]}"), []string{at + `metadata.labels: key "a/b/c"`}},
		{"bad annotation key", service(", annotations: {'-x': z}", "{ports: [{port: 80}]}"), []string{at + `metadata.annotations: key "-x"`}},
		{"several problems reported together", service("", "{ports: [{port: 0, protocol: udp}, {port: 70000}]}"), []string{
			"spec.ports[0].name: required", "spec.ports[0].port: must be between", "spec.ports[0].protocol: unknown protocol", "spec.ports[1].port: must be between"}},
	}
	runValidation(t, cases)
}

func route(spec string) string {
	return "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n" + spec
}

// gamma is a valid parentRefs block.
const gamma = "  parentRefs: [{group: '', kind: Service, name: inventory}]\n"

func rules(r string) string { return gamma + "  rules:\n" + r }

func TestHTTPRouteValidation(t *testing.T) {
	const at = "v.yaml: document 1 (HTTPRoute default/r): "
	cases := []validationCase{
		{"minimal", route(rules("  - backendRefs: [{name: inventory-v1}]\n")), nil},
		{"full supported surface", route(
			"  parentRefs:\n  - {group: '', kind: Service, name: inventory, namespace: shop, port: 8080}\n  - {group: trellis.dev, kind: Service, name: inventory, port: 9090}\n" +
				"  rules:\n" +
				"  - name: api-v2\n    matches:\n" +
				"    - path: {type: Exact, value: /healthz}\n" +
				"    - path: {type: PathPrefix, value: /api/v2}\n      method: POST\n      headers: [{name: X-Canary, value: 'yes please'}, {type: RegularExpression, name: x-user, value: '^(alice|bob)$'}]\n" +
				"    - path: {type: RegularExpression, value: '/items/[0-9]+'}\n" +
				"    backendRefs: [{name: inventory-v2, namespace: shop, port: 8080, weight: 0}, {group: '', kind: Service, name: inventory-v1, weight: 1000000}]\n"), nil},
		{"group omitted on a Service parent", route("  parentRefs: [{kind: Service, name: inventory}]\n  rules: [{backendRefs: [{name: a}]}]\n"), nil},

		// parentRefs
		{"no parentRefs", route("  rules: [{backendRefs: [{name: a}]}]\n"), []string{at + "spec.parentRefs: at least one parentRef is required"}},
		{"Gateway parent", route("  parentRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]\n  rules: [{backendRefs: [{name: a}]}]\n"),
			[]string{at + "spec.parentRefs[0].kind: Gateway parents are not supported: Trellis routes are mesh (GAMMA) routes; use kind: Service"}},
		{"parent kind omitted means Gateway", route("  parentRefs: [{name: inventory}]\n  rules: [{backendRefs: [{name: a}]}]\n"),
			[]string{at + "spec.parentRefs[0].kind: required: when omitted it means Gateway", "use kind: Service"}},
		{"other parent kind", route("  parentRefs: [{group: multicluster.x-k8s.io, kind: ServiceImport, name: inventory}]\n  rules: [{backendRefs: [{name: a}]}]\n"),
			[]string{at + `spec.parentRefs[0].kind: kind "ServiceImport" is not supported`}},
		{"Service parent in wrong group", route("  parentRefs: [{group: gateway.networking.k8s.io, kind: Service, name: inventory}]\n  rules: [{backendRefs: [{name: a}]}]\n"),
			[]string{at + `spec.parentRefs[0].group: group "gateway.networking.k8s.io" is not supported for kind Service`}},
		{"parent port zero", route("  parentRefs: [{kind: Service, name: inventory, port: 0}]\n  rules: [{backendRefs: [{name: a}]}]\n"),
			[]string{at + "spec.parentRefs[0].port: must be between 1 and 65535, got 0"}},
		{"parent port too big", route("  parentRefs: [{kind: Service, name: inventory, port: 65536}]\n  rules: [{backendRefs: [{name: a}]}]\n"),
			[]string{at + "spec.parentRefs[0].port: must be between 1 and 65535, got 65536"}},
		{"parent name missing", route("  parentRefs: [{kind: Service}]\n  rules: [{backendRefs: [{name: a}]}]\n"),
			[]string{at + "spec.parentRefs[0].name: required"}},
		{"parent namespace invalid", route("  parentRefs: [{kind: Service, name: a, namespace: Bad}]\n  rules: [{backendRefs: [{name: a}]}]\n"),
			[]string{at + `spec.parentRefs[0].namespace: "Bad" is not a valid name`}},
		{"parent sectionName", route("  parentRefs: [{kind: Service, name: a, sectionName: http}]\n  rules: [{backendRefs: [{name: a}]}]\n"),
			[]string{at + "spec.parentRefs[0].sectionName: not supported yet: select the Service port with port instead"}},
		{"duplicate parentRefs", route("  parentRefs: [{kind: Service, name: a}, {kind: Service, name: a, namespace: default}]\n  rules: [{backendRefs: [{name: a}]}]\n"),
			[]string{at + "spec.parentRefs[1]: duplicates spec.parentRefs[0]"}},
		{"same parent on two ports is fine", route("  parentRefs: [{kind: Service, name: a, port: 80}, {kind: Service, name: a, port: 81}]\n  rules: [{backendRefs: [{name: a}]}]\n"), nil},
		{"too many parentRefs", route("  parentRefs: [" + repeatJoin(33, func(i int) string { return fmt.Sprintf("{kind: Service, name: s%d}", i) }) + "]\n  rules: [{backendRefs: [{name: a}]}]\n"),
			[]string{at + "spec.parentRefs: at most 32 parentRefs are allowed, got 33"}},
		{"hostnames", route(gamma + "  hostnames: [inventory.example.com]\n  rules: [{backendRefs: [{name: a}]}]\n"),
			[]string{at + "spec.hostnames: not supported for mesh routes"}},

		// rules
		{"no rules", route(gamma), []string{at + "spec.rules: at least one rule is required"}},
		{"too many rules", route(rules(strings.Repeat("  - backendRefs: [{name: a}]\n", 17))), []string{at + "spec.rules: at most 16 rules are allowed, got 17"}},
		{"too many matches in a rule", route(rules("  - matches: [" + repeatJoin(65, func(int) string { return "{}" }) + "]\n    backendRefs: [{name: a}]\n")),
			[]string{at + "spec.rules[0].matches: at most 64 matches are allowed in a rule, got 65"}},
		{"too many matches in total", route(rules(strings.Repeat("  - matches: ["+repeatJoin(50, func(int) string { return "{}" })+"]\n    backendRefs: [{name: a}]\n", 3))),
			[]string{at + "spec.rules: at most 128 matches are allowed across all rules, got 150"}},
		{"duplicate rule names", route(rules("  - {name: a, backendRefs: [{name: a}]}\n  - {name: a, backendRefs: [{name: b}]}\n")),
			[]string{at + `spec.rules[1].name: "a" is already used by spec.rules[0]`}},
		{"bad rule name", route(rules("  - {name: A_B, backendRefs: [{name: a}]}\n")), []string{at + `spec.rules[0].name: "A_B" is not valid`}},
		{"rule without backends", route(rules("  - matches: [{path: {value: /x}}]\n")), []string{at + "spec.rules[0].backendRefs: at least one backendRef is required"}},
		{"rule filters", route(rules("  - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x, value: z}]}}]\n    backendRefs: [{name: a}]\n")), nil},
		{"timeouts", route(rules("  - timeouts: {request: 5s}\n    backendRefs: [{name: a}]\n")), nil},
		{"retry", route(rules("  - retry: {attempts: 3}\n    backendRefs: [{name: a}]\n")), []string{at + "spec.rules[0].retry: not supported: retries are a BackendPolicy's"}},
		{"sessionPersistence", route(rules("  - sessionPersistence: {sessionName: s}\n    backendRefs: [{name: a}]\n")), []string{at + "spec.rules[0].sessionPersistence: sessionPersistence is not supported"}},

		// matches
		{"path prefix without slash", route(rules("  - matches: [{path: {type: PathPrefix, value: api}}]\n    backendRefs: [{name: a}]\n")),
			[]string{at + `spec.rules[0].matches[0].path.value: "api" must start with "/"`}},
		{"exact path without slash", route(rules("  - matches: [{path: {type: Exact, value: ''}}]\n    backendRefs: [{name: a}]\n")),
			[]string{at + `spec.rules[0].matches[0].path.value: "" must start with "/"`}},
		{"path with double slash", route(rules("  - matches: [{path: {value: /a//b}}]\n    backendRefs: [{name: a}]\n")), []string{`path.value: "/a//b" must not contain "//"`}},
		{"path with dot-dot", route(rules("  - matches: [{path: {value: /a/../b}}]\n    backendRefs: [{name: a}]\n")), []string{`path.value: "/a/../b" must not contain a ".." segment`}},
		{"path with encoded slash", route(rules("  - matches: [{path: {value: /a%2Fb}}]\n    backendRefs: [{name: a}]\n")), []string{"must not contain an encoded slash"}},
		{"path with fragment", route(rules("  - matches: [{path: {value: '/a#b'}}]\n    backendRefs: [{name: a}]\n")), []string{`must not contain "#"`}},
		{"path with space", route(rules("  - matches: [{path: {value: '/a b'}}]\n    backendRefs: [{name: a}]\n")), []string{"contains characters not allowed in a path"}},
		{"path too long", route(rules("  - matches: [{path: {value: /" + strings.Repeat("a", 1024) + "}}]\n    backendRefs: [{name: a}]\n")), []string{"path.value: longer than 1024 characters"}},
		{"bad regex path", route(rules("  - matches: [{path: {type: RegularExpression, value: '/items/(['}}]\n    backendRefs: [{name: a}]\n")),
			[]string{at + "spec.rules[0].matches[0].path.value: invalid regular expression (Go RE2 syntax)"}},
		{"regex path that RE2 refuses", route(rules("  - matches: [{path: {type: RegularExpression, value: '/(?=x)'}}]\n    backendRefs: [{name: a}]\n")),
			[]string{"path.value: invalid regular expression"}},
		{"unknown path type", route(rules("  - matches: [{path: {type: Prefix, value: /a}}]\n    backendRefs: [{name: a}]\n")),
			[]string{at + `spec.rules[0].matches[0].path.type: unknown path match type "Prefix": must be Exact, PathPrefix or RegularExpression`}},
		{"unknown header type", route(rules("  - matches: [{headers: [{type: Prefix, name: x, value: z}]}]\n    backendRefs: [{name: a}]\n")),
			[]string{at + `spec.rules[0].matches[0].headers[0].type: unknown header match type "Prefix"`}},
		{"bad header name", route(rules("  - matches: [{headers: [{name: 'x y', value: v}]}]\n    backendRefs: [{name: a}]\n")),
			[]string{at + `spec.rules[0].matches[0].headers[0].name: "x y" is not a valid HTTP header name`}},
		{"pseudo header", route(rules("  - matches: [{headers: [{name: ':authority', value: v}]}]\n    backendRefs: [{name: a}]\n")),
			[]string{`headers[0].name: ":authority" is not a valid HTTP header name`}},
		{"missing header name", route(rules("  - matches: [{headers: [{value: v}]}]\n    backendRefs: [{name: a}]\n")), []string{"headers[0].name: required"}},
		{"missing header value", route(rules("  - matches: [{headers: [{name: x}]}]\n    backendRefs: [{name: a}]\n")), []string{"headers[0].value: required"}},
		{"header value with control character", route(rules("  - matches: [{headers: [{name: x, value: \"a\\x01b\"}]}]\n    backendRefs: [{name: a}]\n")),
			[]string{"headers[0].value:", "is not a valid header value"}},
		{"duplicate header names ignore case", route(rules("  - matches: [{headers: [{name: X-Env, value: a}, {name: x-env, value: b}]}]\n    backendRefs: [{name: a}]\n")),
			[]string{at + `spec.rules[0].matches[0].headers[1].name: "x-env" is already matched by headers[0]`}},
		{"same header in two matches is fine", route(rules("  - matches: [{headers: [{name: x, value: a}]}, {headers: [{name: x, value: b}]}]\n    backendRefs: [{name: a}]\n")), nil},
		{"bad header regex", route(rules("  - matches: [{headers: [{type: RegularExpression, name: x, value: '('}]}]\n    backendRefs: [{name: a}]\n")),
			[]string{"headers[0].value: invalid regular expression (Go RE2 syntax)"}},
		{"too many headers", route(rules("  - matches: [{headers: [" + repeatJoin(17, func(i int) string { return fmt.Sprintf("{name: h%d, value: v}", i) }) + "]}]\n    backendRefs: [{name: a}]\n")),
			[]string{"spec.rules[0].matches[0].headers: at most 16 header matches are allowed, got 17"}},
		{"query params", route(rules("  - matches: [{queryParams: [{name: debug, value: '1'}]}]\n    backendRefs: [{name: a}]\n")), nil},
		{"bad method", route(rules("  - matches: [{method: get}]\n    backendRefs: [{name: a}]\n")),
			[]string{at + `spec.rules[0].matches[0].method: unknown method "get": must be one of GET, HEAD`}},

		// backendRefs
		{"weight too big", route(rules("  - backendRefs: [{name: a}, {name: b, weight: 1000001}]\n")),
			[]string{at + "spec.rules[0].backendRefs[1].weight: must be between 0 and 1000000, got 1000001"}},
		{"negative weight", route(rules("  - backendRefs: [{name: a, weight: -1}]\n")),
			[]string{at + "spec.rules[0].backendRefs[0].weight: must be between 0 and 1000000, got -1"}},
		{"every weight zero", route(rules("  - backendRefs: [{name: a, weight: 0}, {name: b, weight: 0}]\n")),
			[]string{at + "spec.rules[0].backendRefs: every weight is 0: give at least one backendRef a weight above 0"}},
		{"backend name missing", route(rules("  - backendRefs: [{port: 80}]\n")), []string{at + "spec.rules[0].backendRefs[0].name: required"}},
		{"backend name invalid", route(rules("  - backendRefs: [{name: Inventory}]\n")), []string{`spec.rules[0].backendRefs[0].name: "Inventory" is not a valid name`}},
		{"backend kind", route(rules("  - backendRefs: [{kind: ServiceImport, group: multicluster.x-k8s.io, name: a}]\n")),
			[]string{at + `spec.rules[0].backendRefs[0].kind: kind "ServiceImport" is not supported`, `backendRefs[0].group: group "multicluster.x-k8s.io" is not supported`}},
		{"backend port", route(rules("  - backendRefs: [{name: a, port: 0}]\n")), []string{at + "spec.rules[0].backendRefs[0].port: must be between 1 and 65535, got 0"}},
		{"backend namespace", route(rules("  - backendRefs: [{name: a, namespace: 'a.b'}]\n")), []string{`backendRefs[0].namespace: "a.b" is not a valid name`}},
		{"backend filters", route(rules("  - backendRefs: [{name: a, filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x, value: z}]}}]}]\n")),
			[]string{at + "spec.rules[0].backendRefs[0].filters: filters on a backendRef are not supported yet"}},
		{"too many backends", route(rules("  - backendRefs: [" + repeatJoin(17, func(i int) string { return fmt.Sprintf("{name: b%d}", i) }) + "]\n")),
			[]string{at + "spec.rules[0].backendRefs: at most 16 backendRefs are allowed in a rule, got 17"}},
		{"YAML 1.1 booleans must be quoted", route(rules("  - matches: [{headers: [{name: x-beta, value: yes}]}]\n    backendRefs: [{name: a}]\n")),
			[]string{"spec.rules.matches.headers.value: must be a string (quote it), got bool"}},
		{"weight out of int32", route(rules("  - backendRefs: [{name: a, weight: 99999999999}]\n")), []string{"backendRefs.weight: must be an integer, got number"}},
	}
	runValidation(t, cases)
}

func repeatJoin(n int, f func(int) string) string {
	parts := make([]string, n)
	for i := range parts {
		parts[i] = f(i)
	}
	return strings.Join(parts, ", ")
}

// TestErrorsBoundEchoedInput: a 1 MiB name or value comes back clipped and
// marked, not as a multi-megabyte error.
func TestErrorsBoundEchoedInput(t *testing.T) {
	big := strings.Repeat("x", 1<<20)
	for name, doc := range map[string]string{
		"name":  "apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata:\n  name: " + big + "\nspec:\n  ports: [{port: 80}]\n",
		"value": "apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata:\n  name: a\nspec:\n  ports: [{port: 80, protocol: " + big + "}]\n",
		"kind":  "apiVersion: trellis.dev/v1alpha1\nkind: " + big + "\nmetadata:\n  name: a\nspec: {}\n",
		"file":  "",
	} {
		file := "f.yaml"
		if name == "file" {
			file, doc = big+".yaml", "apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata:\n  name: a\nspec: {}\n"
		}
		objs, err := Decode(file, []byte(doc))
		if err == nil {
			for _, o := range objs {
				if err = o.Validate(); err != nil {
					break
				}
			}
		}
		if err == nil {
			t.Fatalf("%s: no error", name)
		}
		var total int
		for _, e := range Errors(err) {
			e.File = file
			msg := e.Error()
			total += len(msg)
			if strings.Contains(msg, big[:2*1024]) {
				t.Errorf("%s: error echoes the value unclipped (%d bytes)", name, len(msg))
			}
		}
		if total == 0 || total > 16<<10 {
			t.Errorf("%s: errors total %d bytes", name, total)
		}
	}
}
