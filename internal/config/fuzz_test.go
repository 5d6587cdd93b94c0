package config

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// FuzzDecode: Decode never panics; whatever it accepts encodes, decodes back
// from the store unchanged, and validates.
func FuzzDecode(f *testing.F) {
	files, _ := filepath.Glob("testdata/*")
	for _, name := range files {
		if data, err := os.ReadFile(name); err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte(route(rules("  - matches: [{path: {type: RegularExpression, value: '/a.*'}, headers: [{name: x, value: v}], method: GET}]\n    backendRefs: [{name: a, weight: 0}]\n"))))
	f.Add([]byte(service(", namespace: shop", "{selector: {app: x}, ports: [{name: a, port: 1, protocol: tcp}]}")))
	f.Add([]byte(service("", "{ports: [{name: a, port: 1}], healthCheck: {type: http, path: /h, port: a, interval: 1s, timeout: 1s, healthyThreshold: 1, unhealthyThreshold: 2}}")))
	for _, name := range []string{"retries", "circuit-breaker", "outlier-detection", "load-balancing",
		"ratelimit-service", "ratelimit-route", "ratelimit-identity", "ratelimit-header", "ratelimit-global", "concurrency-limit"} {
		if data, err := os.ReadFile("../../examples/traffic/" + name + ".yaml"); err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte(policy("p", "{targetRefs: [{name: a}], retry: {}, circuitBreaker: {}, outlierDetection: {}, loadBalancer: {type: ring-hash, hash: {sourceIdentity: true}}}")))
	f.Add([]byte(rlPolicy("p", "{targetRefs: [{name: a}, {kind: GRPCRoute, name: g}], algorithm: LeakyBucket, queue: 0, rate: {requests: 3, per: 1m}, scope: Header, header: X-A, maxKeys: 2, mode: Global, overrides: [{identities: ['spiffe://td/ns/a/sa/b'], rate: {requests: 1}}]}")))
	f.Add([]byte("---\n---\n"))
	f.Add([]byte(`[{"kind":"Service"}]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, err := Decode("fuzz.yaml", data)
		if err != nil {
			if objs != nil {
				t.Fatal("objects returned with an error")
			}
			if len(Errors(err)) == 0 {
				t.Fatalf("error without *Error: %v", err)
			}
			return
		}
		for _, o := range objs {
			if err := o.Validate(); err != nil {
				t.Fatalf("accepted object fails Validate: %v", err)
			}
			b, err := Encode(o)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			back, err := DecodeStored(o.Ref().Kind, b)
			if err != nil {
				t.Fatalf("DecodeStored(%s): %v", b, err)
			}
			if back.Ref() != o.Ref() {
				t.Fatalf("ref changed: %v -> %v", o.Ref(), back.Ref())
			}
			b2, err := Encode(back)
			if err != nil || !bytes.Equal(b, b2) {
				t.Fatalf("not a fixed point:\n%s\n%s", b, b2)
			}
			exerciseHooks(t, back)
		}
		_ = CheckSet(objs)
	})
}

// exerciseHooks runs the compiler hooks on an accepted object: they rely on
// defaults and Validate (they dereference what defaults fill in), so they
// must never panic, and what they produce must be well formed.
func exerciseHooks(t *testing.T, o Object) {
	t.Helper()
	if d, ok := o.(Declarer); ok {
		svc := &meshv1.Service{}
		d.DeclarePorts(svc)
		for _, p := range svc.Ports {
			if p.Port == 0 || p.TargetPort == 0 || p.Protocol == meshv1.Protocol_PROTOCOL_UNSPECIFIED {
				t.Fatalf("%s declares port %v", o.Ref(), p)
			}
		}
	}
	a, ok := o.(Attacher)
	if !ok {
		return
	}
	for _, at := range a.Attachments() {
		if at.Service.Name == "" || at.Service.Namespace == "" {
			t.Fatalf("%s attaches to %+v", o.Ref(), at)
		}
		b := NewServiceBuild(&meshv1.Service{Name: at.Service.Name, Namespace: at.Service.Namespace})
		a.Contribute(b, at, 1)
		b.Finish()
		for _, r := range b.Service.Routes {
			if len(r.Matches) != 1 || r.Matches[0].Path == nil || len(r.Backends) == 0 {
				t.Fatalf("%s contributes route %v", o.Ref(), r)
			}
		}
	}
}

// FuzzParseStoreKey: ParseStoreKey never panics, and what it accepts maps
// back to the same key.
func FuzzParseStoreKey(f *testing.F) {
	f.Add("/resources/HTTPRoute/default/inventory-split")
	f.Add("/resources//a/b")
	f.Fuzz(func(t *testing.T, key string) {
		ref, err := ParseStoreKey(key)
		if err == nil && StoreKey(ref) != key {
			t.Fatalf("ParseStoreKey(%q) = %v, StoreKey = %q", key, ref, StoreKey(ref))
		}
	})
}
