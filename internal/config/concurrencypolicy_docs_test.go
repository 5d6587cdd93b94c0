package config

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// TestConcurrencyPolicyFieldsDocumented: every field of ConcurrencyPolicy's
// spec has a row in docs/configuration.md's ConcurrencyPolicy table.
func TestConcurrencyPolicyFieldsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	sec := section(string(doc), "ConcurrencyPolicy")
	if sec == "" {
		t.Fatal("docs/configuration.md has no ConcurrencyPolicy section")
	}
	var walk func(typ reflect.Type, path string)
	walk = func(typ reflect.Type, path string) {
		for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice {
			typ = typ.Elem()
		}
		if typ.Kind() != reflect.Struct || typ.PkgPath() != reflect.TypeFor[ConcurrencyPolicy]().PkgPath() {
			return
		}
		for f := range typ.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "" || name == "-" {
				continue
			}
			row := regexp.MustCompile("(?m)^\\| `[^`]*\\b" + regexp.QuoteMeta(name) + "` \\|")
			if !row.MatchString(sec) {
				t.Errorf("%s%s is not documented in docs/configuration.md's ConcurrencyPolicy fields table", path, name)
			}
			walk(f.Type, path+name+".")
		}
	}
	walk(reflect.TypeFor[ConcurrencyPolicySpec](), "spec.")
}
