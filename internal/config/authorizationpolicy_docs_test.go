package config

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// TestAuthorizationPolicyFieldsDocumented: every field of an
// AuthorizationPolicy's spec, nested ones included, has a row in
// docs/configuration.md's AuthorizationPolicy table.
func TestAuthorizationPolicyFieldsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(doc), "\n## AuthorizationPolicy\n")
	if !ok {
		t.Fatal("docs/configuration.md has no AuthorizationPolicy section")
	}
	sec, _, _ = strings.Cut(sec, "\n## ")
	var walk func(typ reflect.Type, path string)
	walk = func(typ reflect.Type, path string) {
		for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice {
			typ = typ.Elem()
		}
		if typ.Kind() != reflect.Struct || typ.PkgPath() != reflect.TypeFor[AuthorizationPolicy]().PkgPath() {
			return
		}
		for f := range typ.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "" || name == "-" {
				continue
			}
			row := regexp.MustCompile("(?m)^\\| `[^`]*\\b" + regexp.QuoteMeta(name) + "` \\|")
			if !row.MatchString(sec) {
				t.Errorf("%s%s is not documented in docs/configuration.md's AuthorizationPolicy fields table", path, name)
			}
			walk(f.Type, path+name+".")
		}
	}
	walk(reflect.TypeFor[AuthorizationPolicySpec](), "spec.")
}
