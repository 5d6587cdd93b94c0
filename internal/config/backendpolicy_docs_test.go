package config

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// TestBackendPolicyFieldsDocumented: every field of BackendPolicy's spec,
// nested ones included, has a row in docs/configuration.md's BackendPolicy
// table, so a new field cannot ship undocumented.
func TestBackendPolicyFieldsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(doc), "\n## BackendPolicy\n")
	if !ok {
		t.Fatal("docs/configuration.md has no BackendPolicy section")
	}
	sec, _, _ = strings.Cut(sec, "\n## ")
	var walk func(typ reflect.Type, path string)
	walk = func(typ reflect.Type, path string) {
		for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice {
			typ = typ.Elem()
		}
		if typ.Kind() != reflect.Struct || typ.PkgPath() != reflect.TypeFor[BackendPolicy]().PkgPath() {
			return
		}
		for f := range typ.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "" || name == "-" {
				continue
			}
			// A row names the field as the end of a dotted path:
			// `retry.budget.ttl`, `targetRefs[].name`, `spec.retry`.
			row := regexp.MustCompile("(?m)^\\| `[^`]*\\b" + regexp.QuoteMeta(name) + "` \\|")
			if !row.MatchString(sec) {
				t.Errorf("%s%s is not documented in docs/configuration.md's BackendPolicy fields table", path, name)
			}
			walk(f.Type, path+name+".")
		}
	}
	walk(reflect.TypeFor[BackendPolicySpec](), "spec.")
}
