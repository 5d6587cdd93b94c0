package config

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
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
		}
		_ = CheckSet(objs)
	})
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
