package config

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// TestPolicyFieldsDocumented: every field of each policy kind's spec,
// nested ones included, has a row in its section of
// docs/configuration.md, so a new field cannot ship undocumented.
func TestPolicyFieldsDocumented(t *testing.T) {
	for kind, spec := range map[string]reflect.Type{
		"Service":             reflect.TypeFor[ServiceSpec](),
		"BackendPolicy":       reflect.TypeFor[BackendPolicySpec](),
		"AuthorizationPolicy": reflect.TypeFor[AuthorizationPolicySpec](),
		"RateLimitPolicy":     reflect.TypeFor[RateLimitPolicySpec](),
		"ConcurrencyPolicy":   reflect.TypeFor[ConcurrencyPolicySpec](),
		"Telemetry":           reflect.TypeFor[TelemetrySpec](),
	} {
		t.Run(kind, func(t *testing.T) { assertFieldsDocumented(t, docSection(t, kind), kind, spec) })
	}
}

// docSection is the text of docs/configuration.md's "## <title>" section.
func docSection(t *testing.T, title string) string {
	t.Helper()
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(doc), "\n## "+title+"\n")
	if !ok {
		t.Fatalf("docs/configuration.md has no %s section", title)
	}
	sec, _, _ = strings.Cut(sec, "\n## ")
	return sec
}

// assertFieldsDocumented walks spec's fields (this package's structs,
// through pointers and slices) and wants a table row for each in sec.
func assertFieldsDocumented(t *testing.T, sec, kind string, spec reflect.Type) {
	t.Helper()
	pkg := reflect.TypeFor[BackendPolicy]().PkgPath()
	var walk func(typ reflect.Type, path string)
	walk = func(typ reflect.Type, path string) {
		for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice {
			typ = typ.Elem()
		}
		if typ.Kind() != reflect.Struct || typ.PkgPath() != pkg {
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
				t.Errorf("%s%s is not documented in docs/configuration.md's %s fields table", path, name, kind)
			}
			walk(f.Type, path+name+".")
		}
	}
	walk(spec, "spec.")
}
