package config

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func readFile(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func mustDecode(t *testing.T, file string, data []byte) []Object {
	t.Helper()
	objs, err := Decode(file, data)
	if err != nil {
		t.Fatalf("Decode(%s): %v", file, err)
	}
	return objs
}

// wantErrs checks that err mentions every substring, and that Decode-style
// errors are *Error values.
func wantErrs(t *testing.T, err error, subs ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %q", subs)
	}
	msg := err.Error()
	for _, s := range subs {
		if !strings.Contains(msg, s) {
			t.Errorf("error does not contain %q:\n%s", s, msg)
		}
	}
	if len(Errors(err)) == 0 {
		t.Errorf("error holds no *config.Error: %v", err)
	}
}

func TestDecodeInventoryDemo(t *testing.T) {
	objs := mustDecode(t, "inventory.yaml", readFile(t, "testdata/inventory.yaml"))
	var refs []string
	for _, o := range objs {
		refs = append(refs, o.Ref().String())
	}
	want := []string{"Service default/inventory", "Service default/inventory-v1", "Service default/inventory-v2", "HTTPRoute default/inventory-split"}
	if !reflect.DeepEqual(refs, want) {
		t.Fatalf("refs = %q, want %q", refs, want)
	}

	inv := objs[0].(*Service)
	if !reflect.DeepEqual(inv.Spec.Selector, map[string]string{"app": "inventory"}) {
		t.Errorf("default selector = %v, want app=inventory", inv.Spec.Selector)
	}
	if p := inv.Spec.Ports[0]; p.TargetPort != 80 || p.Protocol != ProtocolHTTP {
		t.Errorf("port defaults = %+v, want targetPort 80 protocol http", p)
	}
	v2 := objs[2].(*Service)
	if !reflect.DeepEqual(v2.Spec.Selector, map[string]string{"app": "inventory", "version": "v2"}) {
		t.Errorf("v2 selector = %v", v2.Spec.Selector)
	}

	r := objs[3].(*HTTPRoute)
	p := r.Spec.ParentRefs[0]
	if *p.Kind != "Service" || *p.Group != "" || *p.Namespace != "default" || p.Name != "inventory" || *p.Port != 80 {
		t.Errorf("parentRef = %+v", p)
	}
	rule := r.Spec.Rules[0]
	if len(rule.Matches) != 1 || *rule.Matches[0].Path.Type != "PathPrefix" || *rule.Matches[0].Path.Value != "/" {
		t.Errorf("default match = %+v, want PathPrefix /", rule.Matches)
	}
	var weights []int32
	for _, b := range rule.BackendRefs {
		weights = append(weights, *b.Weight)
		if *b.Kind != "Service" || *b.Group != "" || *b.Namespace != "default" {
			t.Errorf("backendRef defaults = %+v", b)
		}
	}
	if !reflect.DeepEqual(weights, []int32{90, 10}) {
		t.Errorf("weights = %v, want [90 10]", weights)
	}
	if r.APIVersion != HTTPRouteAPIVersion || r.Kind != "HTTPRoute" {
		t.Errorf("type meta = %+v", r.TypeMeta)
	}
}

func TestDecodeJSONArray(t *testing.T) {
	objs := mustDecode(t, "orders.json", readFile(t, "testdata/orders.json"))
	if len(objs) != 2 {
		t.Fatalf("got %d objects, want 2", len(objs))
	}
	svc := objs[0].(*Service)
	if svc.Ref().String() != "Service shop/orders" {
		t.Errorf("ref = %s", svc.Ref())
	}
	if got := svc.Spec.Ports[0].TargetPort; got != 9080 {
		t.Errorf("explicit targetPort = %d, want 9080", got)
	}
	if got := svc.Spec.Ports[2].Protocol; got != ProtocolTCP {
		t.Errorf("protocol = %q, want tcp", got)
	}
	r := objs[1].(*HTTPRoute)
	h := r.Spec.Rules[0].Matches[0].Headers[0]
	if *h.Type != "Exact" {
		t.Errorf("header match type default = %q, want Exact", *h.Type)
	}
	if got := *r.Spec.Rules[1].BackendRefs[0].Weight; got != 1 {
		t.Errorf("default weight = %d, want 1", got)
	}
	if got := *r.Spec.ParentRefs[0].Namespace; got != "shop" {
		t.Errorf("parentRef namespace default = %q, want the route's (shop)", got)
	}
	// A single JSON object (not an array) decodes too.
	objs = mustDecode(t, "one.json", []byte(`{"apiVersion":"trellis.dev/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":80}]}}`))
	if len(objs) != 1 || objs[0].Ref().Name != "a" {
		t.Fatalf("single JSON object: %v", objs)
	}
}

func TestDecodeInvalidFileReportsEverything(t *testing.T) {
	objs, err := Decode("invalid-route.yaml", readFile(t, "testdata/invalid-route.yaml"))
	if objs != nil {
		t.Errorf("partial result: %v", objs)
	}
	wantErrs(t, err,
		`invalid-route.yaml: document 1 (Service default/payments): spec.ports[0].protocol: unknown protocol "HTTP": must be one of http, http2, grpc, tcp`,
		`invalid-route.yaml: document 2 (HTTPRoute default/payments-split): spec.parentRefs[0].kind: required: when omitted it means Gateway, and Gateway parents are not supported`,
		`document 2 (HTTPRoute default/payments-split): spec.rules[0].matches[0].path.value: "api" must start with "/"`,
		`document 2 (HTTPRoute default/payments-split): spec.rules[0].backendRefs[1].weight: must be between 0 and 1000000, got 2000000`,
	)
	if n := len(Errors(err)); n != 4 {
		t.Errorf("got %d errors, want 4:\n%v", n, err)
	}
	for _, e := range Errors(err) {
		if e.File != "invalid-route.yaml" || e.Doc == 0 || e.Field == "" {
			t.Errorf("error lacks file, document or field: %#v", e)
		}
	}
}

const svcHead = "apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata:\n  name: web\n"

func TestDecodeStrict(t *testing.T) {
	cases := []struct {
		name string
		in   string
		want []string
	}{
		{"unknown top-level field", svcHead + "spec: {ports: [{port: 80}]}\nextra: 1\n",
			[]string{"t.yaml: document 1 (Service default/web): extra: unknown field"}},
		{"unknown spec field", svcHead + "spec: {ports: [{port: 80}], replicas: 3}\n",
			[]string{"spec.replicas: unknown field"}},
		{"unknown nested field", svcHead + "spec: {ports: [{port: 80, nodePort: 30000}]}\n",
			[]string{"spec.ports[0].nodePort: unknown field"}},
		{"field names are case-sensitive", svcHead + "spec: {Ports: [{port: 80}]}\n",
			[]string{"spec.Ports: unknown field"}},
		{"unknown route field", "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{kind: Service, name: a}]\n  rules: [{backendRefs: [{name: a, wieght: 5}]}]\n",
			[]string{"(HTTPRoute default/r): spec.rules[0].backendRefs[0].wieght: unknown field"}},
		{"duplicate YAML key", svcHead + "spec:\n  ports: [{port: 80}]\n  ports: [{port: 81}]\n",
			[]string{"document 1: invalid YAML", `line 7: key "ports" already set in map`}},
		{"duplicate JSON key", `{"apiVersion":"trellis.dev/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":80,"port":81}]}}`,
			[]string{"invalid YAML", `key "port" already set`}},
		{"wrong type", svcHead + "spec: {ports: [{port: http}]}\n",
			[]string{"spec.ports.port: must be an integer, got string"}},
		{"unquoted number in selector", svcHead + "spec: {selector: {version: 2}, ports: [{port: 80}]}\n",
			[]string{"spec.selector: must be a string (quote it), got number"}},
		{"metadata not an object", "apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata: web\n",
			[]string{"document 1: metadata: must be an object, got string"}},
		{"port entry not an object", svcHead + "spec: {ports: [80]}\n",
			[]string{"spec.ports: must be an object, got number"}},
		{"missing kind", "apiVersion: trellis.dev/v1alpha1\nmetadata: {name: a}\n",
			[]string{"document 1", "kind: required: one of AuthorizationPolicy (trellis.dev/v1alpha1), BackendPolicy (trellis.dev/v1alpha1), ConcurrencyPolicy (trellis.dev/v1alpha1), ExternalService (trellis.dev/v1alpha1), FaultInjection (trellis.dev/v1alpha1), GRPCRoute (gateway.networking.k8s.io/v1), HTTPRoute (gateway.networking.k8s.io/v1), MeshConfig (trellis.dev/v1alpha1), RateLimitPolicy (trellis.dev/v1alpha1), Service (trellis.dev/v1alpha1)"}},
		{"unknown kind lists known kinds", "apiVersion: v1\nkind: Deployment\nmetadata: {name: a}\n",
			[]string{`(Deployment default/a): kind: unknown kind "Deployment": known kinds are AuthorizationPolicy (trellis.dev/v1alpha1), BackendPolicy (trellis.dev/v1alpha1), ConcurrencyPolicy (trellis.dev/v1alpha1), ExternalService (trellis.dev/v1alpha1), FaultInjection (trellis.dev/v1alpha1), GRPCRoute (gateway.networking.k8s.io/v1), HTTPRoute (gateway.networking.k8s.io/v1), MeshConfig (trellis.dev/v1alpha1), RateLimitPolicy (trellis.dev/v1alpha1), Service (trellis.dev/v1alpha1)`}},
		{"wrong apiVersion", "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: HTTPRoute\nmetadata: {name: a}\n",
			[]string{`apiVersion: HTTPRoute is served as apiVersion gateway.networking.k8s.io/v1, not "gateway.networking.k8s.io/v1beta1"`}},
		{"missing apiVersion", "kind: Service\nmetadata: {name: a}\n",
			[]string{"apiVersion: required: Service is apiVersion trellis.dev/v1alpha1"}},
		{"not an object", "just a string\n", []string{"document 1: must be an object with apiVersion, kind, metadata and spec"}},
		{"server-owned metadata", svcHead + "  uid: \"1234\"\n  resourceVersion: \"7\"\n  creationTimestamp: \"2024-01-01T00:00:00Z\"\nspec: {ports: [{port: 80}]}\n",
			[]string{"metadata.uid: is set by the control plane", "metadata.resourceVersion: is set by the control plane"}},
		{"unsupported metadata", svcHead + "  finalizers: [x]\nspec: {ports: [{port: 80}]}\n",
			[]string{"metadata.finalizers: is not supported"}},
		{"route status", "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{kind: Service, name: a}]\n  rules: [{backendRefs: [{name: a}]}]\nstatus:\n  parents: [{parentRef: {name: a}, controllerName: x.io/y, conditions: []}]\n",
			[]string{"(HTTPRoute default/r): status: is reported by the control plane"}},
		{"empty file", "# nothing here\n", []string{"t.yaml: no resources found"}},
		{"syntax error", svcHead + "spec: {ports: [\n", []string{"document 1: invalid YAML"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := Decode("t.yaml", []byte(tc.in))
			if objs != nil {
				t.Errorf("partial result %v", objs)
			}
			wantErrs(t, err, tc.want...)
		})
	}
}

func TestDecodeMultiDocument(t *testing.T) {
	svc := func(name string) string {
		return "apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata: {name: " + name + "}\nspec: {ports: [{port: 80}]}\n"
	}
	t.Run("separators, comments and empty documents", func(t *testing.T) {
		in := "---\n# leading separator and comment-only document\n---\n" + svc("a") + "--- # comment after separator\n" + svc("b") + "---\n\n---\r\n" + svc("c") + "...\n"
		in = strings.Replace(in, "...\n", "", 1)
		objs := mustDecode(t, "m.yaml", []byte(in))
		var names []string
		for _, o := range objs {
			names = append(names, o.Ref().Name)
		}
		if !reflect.DeepEqual(names, []string{"a", "b", "c"}) {
			t.Fatalf("names = %v", names)
		}
	})
	t.Run("document numbers count resources, not separators", func(t *testing.T) {
		in := "---\n" + svc("a") + "---\n# empty\n---\n" + strings.Replace(svc("b"), "port: 80", "port: 0", 1)
		_, err := Decode("m.yaml", []byte(in))
		wantErrs(t, err, "m.yaml: document 2 (Service default/b): spec.ports[0].port: must be between 1 and 65535, got 0")
	})
	t.Run("yaml line numbers are file line numbers", func(t *testing.T) {
		in := svc("a") + "---\n" + svc("b") + "---\nkind: [\n"
		_, err := Decode("m.yaml", []byte(in))
		// The broken document starts on line 11; its error is on line 11 or 12.
		e := Errors(err)
		if len(e) != 1 || e[0].Doc != 3 || !(strings.Contains(e[0].Reason, "line 11") || strings.Contains(e[0].Reason, "line 12")) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("one bad document refuses the whole file", func(t *testing.T) {
		in := svc("a") + "---\n" + svc("Bad_Name") + "---\n" + svc("c") + "---\n" + svc("a")
		objs, err := Decode("m.yaml", []byte(in))
		if objs != nil {
			t.Fatalf("partial result %v", objs)
		}
		wantErrs(t, err, `document 2 (Service default/Bad_Name): metadata.name: "Bad_Name" is not a valid name`)
		if n := len(Errors(err)); n != 1 {
			t.Errorf("got %d errors, want 1: %v", n, err)
		}
	})
}

// The shipped examples are what users copy: they must stay valid, alone and
// together with the demo shop.
func TestExamplesDecode(t *testing.T) {
	files, err := filepath.Glob("../../examples/*/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Skip("no examples in this tree")
	}
	var shop []Object
	for _, f := range files {
		objs := mustDecode(t, f, readFile(t, f))
		if err := CheckSet(objs); err != nil {
			t.Errorf("%s: %v", f, err)
		}
		if filepath.Base(f) == "shop.yaml" {
			shop = objs
		}
	}
	if shop == nil {
		return
	}
	for _, f := range files {
		if filepath.Base(f) == "shop.yaml" {
			continue
		}
		// An example applied over the shop replaces resources of the same
		// name; the result must still be consistent.
		merged := map[Ref]Object{}
		var order []Ref
		for _, o := range append(append([]Object{}, shop...), mustDecode(t, f, readFile(t, f))...) {
			if _, ok := merged[o.Ref()]; !ok {
				order = append(order, o.Ref())
			}
			merged[o.Ref()] = o
		}
		var set []Object
		for _, r := range order {
			set = append(set, merged[r])
		}
		if err := CheckSet(set); err != nil {
			t.Errorf("shop + %s: %v", f, err)
		}
	}
}

func TestEncodeDecodeStoredRoundTrip(t *testing.T) {
	var objs []Object
	objs = append(objs, mustDecode(t, "inventory.yaml", readFile(t, "testdata/inventory.yaml"))...)
	objs = append(objs, mustDecode(t, "orders.json", readFile(t, "testdata/orders.json"))...)
	for _, o := range objs {
		t.Run(o.Ref().String(), func(t *testing.T) {
			b, err := Encode(o)
			if err != nil {
				t.Fatal(err)
			}
			back, err := DecodeStored(o.Ref().Kind, b)
			if err != nil {
				t.Fatalf("DecodeStored: %v\n%s", err, b)
			}
			if !reflect.DeepEqual(back, o) {
				t.Errorf("round trip changed the object:\n got %#v\nwant %#v", back, o)
			}
			b2, err := Encode(back)
			if err != nil || !bytes.Equal(b, b2) {
				t.Errorf("encoding is not canonical:\n%s\n%s", b, b2)
			}
		})
	}
}

func TestDecodeStoredErrors(t *testing.T) {
	svc := mustDecode(t, "s.yaml", []byte(svcHead+"spec: {ports: [{port: 80}]}\n"))[0]
	b, err := Encode(svc)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, kind string
		data       []byte
		want       string
	}{
		{"unknown kind", "Gateway", b, `unknown kind "Gateway": known kinds are AuthorizationPolicy (trellis.dev/v1alpha1), BackendPolicy (trellis.dev/v1alpha1), ConcurrencyPolicy (trellis.dev/v1alpha1), ExternalService (trellis.dev/v1alpha1), FaultInjection`},
		{"kind mismatch", "HTTPRoute", b, "stored object is a Service, expected HTTPRoute"},
		{"garbage", "Service", []byte("not json"), "must be an object"},
		{"unknown field", "Service", bytes.Replace(b, []byte(`"spec":{`), []byte(`"spec":{"x":1,`), 1), "spec.x: unknown field"},
		{"invalid stored object", "Service", bytes.Replace(b, []byte(`"port":80`), []byte(`"port":70000`), 1), "spec.ports[0].port: must be between 1 and 65535"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o, err := DecodeStored(tc.kind, tc.data)
			if o != nil {
				t.Errorf("got object %v", o)
			}
			wantErrs(t, err, tc.want)
		})
	}
	// Stored objects may carry control-plane-owned metadata.
	withUID := bytes.Replace(b, []byte(`"metadata":{`), []byte(`"metadata":{"uid":"abc","resourceVersion":"5",`), 1)
	if _, err := DecodeStored("Service", withUID); err != nil {
		t.Errorf("DecodeStored refused control-plane metadata: %v", err)
	}
}

func TestEncodeFillsTypeMetaAndRefusesMismatch(t *testing.T) {
	s := &Service{Spec: ServiceSpec{Ports: []ServicePort{{Port: 80}}}}
	s.Name = "web"
	Default(s)
	if err := s.Validate(); err != nil {
		t.Fatalf("defaulted Go-built service invalid: %v", err)
	}
	b, err := Encode(s)
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeStored("Service", b)
	if err != nil {
		t.Fatalf("DecodeStored: %v", err)
	}
	if !reflect.DeepEqual(back, s) {
		t.Errorf("got %#v, want %#v", back, s)
	}
	s.APIVersion = "v1"
	if _, err := Encode(s); err == nil || !strings.Contains(err.Error(), "config: encode Service default/web") {
		t.Errorf("Encode with wrong apiVersion: err = %v", err)
	}
}

func TestErrorFormat(t *testing.T) {
	ref := Ref{Kind: "HTTPRoute", Namespace: "default", Name: "x"}
	cases := []struct {
		e    Error
		want string
	}{
		{Error{File: "route.yaml", Doc: 2, Ref: ref, Field: "spec.rules[0].backendRefs[1].weight", Reason: "must be between 0 and 1000000"},
			"route.yaml: document 2 (HTTPRoute default/x): spec.rules[0].backendRefs[1].weight: must be between 0 and 1000000"},
		{Error{File: "a.yaml", Doc: 1, Reason: "invalid YAML"}, "a.yaml: document 1: invalid YAML"},
		{Error{File: "a.yaml", Doc: 3, Ref: Ref{Kind: "Foo"}, Field: "kind", Reason: "unknown"}, "a.yaml: document 3 (Foo): kind: unknown"},
		{Error{Ref: ref, Field: "spec", Reason: "bad"}, "HTTPRoute default/x: spec: bad"},
		{Error{File: "a.yaml", Reason: "no resources found"}, "a.yaml: no resources found"},
	}
	for _, tc := range cases {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("got  %q\nwant %q", got, tc.want)
		}
	}
}

func TestErrorsUnwrapsJoinedAndWrapped(t *testing.T) {
	a, b := &Error{Reason: "a"}, &Error{Reason: "b"}
	err := errors.Join(a, errors.New("other"), errors.Join(b))
	got := Errors(fmtWrap(err))
	if len(got) != 1 {
		// A %w wrap of a joined error exposes only what errors.As finds first.
		t.Fatalf("wrapped: got %d", len(got))
	}
	got = Errors(err)
	if len(got) != 2 || got[0] != a || got[1] != b {
		t.Fatalf("got %v", got)
	}
}

func fmtWrap(err error) error { return &wrapped{err} }

type wrapped struct{ err error }

func (w *wrapped) Error() string { return "wrapped: " + w.err.Error() }
func (w *wrapped) Unwrap() error { return w.err }

func TestStoreKey(t *testing.T) {
	ref := Ref{Kind: "HTTPRoute", Namespace: "default", Name: "inventory-split"}
	key := StoreKey(ref)
	if key != "/resources/HTTPRoute/default/inventory-split" {
		t.Fatalf("StoreKey = %q", key)
	}
	if !strings.HasPrefix(key, ResourcePrefix) || !strings.HasPrefix(key, KindPrefix("HTTPRoute")) {
		t.Errorf("key %q not under prefixes", key)
	}
	back, err := ParseStoreKey(key)
	if err != nil || back != ref {
		t.Fatalf("ParseStoreKey = %v, %v", back, err)
	}
	for _, bad := range []string{"", "/resources/", "/registry/Service/default/a", "/resources/Service/default", "/resources/Service/default/a/b", "/resources/Service//a", "resources/Service/default/a"} {
		if _, err := ParseStoreKey(bad); err == nil {
			t.Errorf("ParseStoreKey(%q) accepted", bad)
		}
	}
}

func TestKinds(t *testing.T) {
	if got := Kinds(); !reflect.DeepEqual(got, []string{"AuthorizationPolicy", "BackendPolicy", "ConcurrencyPolicy", "ExternalService", "FaultInjection", "GRPCRoute", "HTTPRoute", "MeshConfig", "RateLimitPolicy", "Service", "Telemetry"}) {
		t.Fatalf("Kinds() = %v", got)
	}
	for _, k := range kindTable() {
		o := k.newObject()
		Default(o)
		if o.Ref().Kind != k.kind || o.typeMeta().Kind != k.kind || o.typeMeta().APIVersion != k.apiVersion {
			t.Errorf("kind %s: Ref().Kind = %q, typeMeta = %+v", k.kind, o.Ref().Kind, *o.typeMeta())
		}
	}
}
