package config

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"trellis.dev/trellis/internal/accesslog"
)

// TestTelemetryDocumented: every field of Telemetry's spec has a row in
// docs/configuration.md's Telemetry table, and every access log field the
// proxy writes has a row in its "Access log lines" table.
func TestTelemetryDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(doc), "\n## Telemetry\n")
	if !ok {
		t.Fatal("docs/configuration.md has no Telemetry section")
	}
	sec, _, _ = strings.Cut(sec, "\n## ")
	var walk func(typ reflect.Type, path string)
	walk = func(typ reflect.Type, path string) {
		for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice {
			typ = typ.Elem()
		}
		if typ.Kind() != reflect.Struct || typ.PkgPath() != reflect.TypeFor[Telemetry]().PkgPath() {
			return
		}
		for f := range typ.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "" || name == "-" {
				continue
			}
			row := regexp.MustCompile("(?m)^\\| `[^`]*\\b" + regexp.QuoteMeta(name) + "` \\|")
			if !row.MatchString(sec) {
				t.Errorf("%s%s is not documented in docs/configuration.md's Telemetry table", path, name)
			}
			walk(f.Type, path+name+".")
		}
	}
	walk(reflect.TypeFor[TelemetrySpec](), "spec.")

	_, lines, ok := strings.Cut(sec, "\n### Access log lines\n")
	if !ok {
		t.Fatal("no Access log lines section")
	}
	e := accesslog.Entry{GRPCStatus: "0"}
	line := string(accesslog.AppendJSON(nil, &e))
	for _, m := range regexp.MustCompile(`"([a-z_]+)":`).FindAllStringSubmatch(line, -1) {
		if !strings.Contains(lines, "| `"+m[1]+"` |") {
			t.Errorf("access log field %s is not documented", m[1])
		}
	}
}
