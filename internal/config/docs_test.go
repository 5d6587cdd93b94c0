package config

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// TestRouteFieldsDocumented: every field a user can write in an HTTPRoute,
// GRPCRoute or FaultInjection is named in its section of
// docs/configuration.md (documented, or listed as refused), so a field
// added to a kind, or arriving with a Gateway API upgrade, fails here until
// it is documented.
func TestRouteFieldsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Skip("no docs in this tree")
	}
	// Refused wholesale: the field's own name must be documented, its
	// insides need not be.
	opaque := map[reflect.Type]bool{
		reflect.TypeFor[gwapiv1.HTTPCORSFilter]():         true,
		reflect.TypeFor[gwapiv1.HTTPExternalAuthFilter](): true,
		reflect.TypeFor[gwapiv1.HTTPRouteRetry]():         true,
		reflect.TypeFor[gwapiv1.SessionPersistence]():     true,
	}
	for _, tc := range []struct {
		section string
		typ     reflect.Type
		also    string // a section this one refers to ("as for HTTPRoute")
	}{
		{"HTTPRoute", reflect.TypeFor[gwapiv1.HTTPRouteSpec](), ""},
		{"GRPCRoute", reflect.TypeFor[gwapiv1.GRPCRouteSpec](), "HTTPRoute"},
		{"FaultInjection", reflect.TypeFor[FaultInjectionSpec](), ""},
	} {
		text := section(string(doc), tc.section)
		if text == "" {
			t.Errorf("docs/configuration.md has no section %q", tc.section)
			continue
		}
		if tc.also != "" {
			text += section(string(doc), tc.also)
		}
		for _, f := range jsonFields(tc.typ, opaque, map[reflect.Type]bool{}) {
			re := regexp.MustCompile("`[^`\n]*\\b" + regexp.QuoteMeta(f) + "\\b[^`\n]*`")
			if !re.MatchString(text) {
				t.Errorf("%s field %q is not documented in its section of docs/configuration.md", tc.section, f)
			}
		}
	}
}

// section is the text of "## name" up to the next "## " heading.
func section(doc, name string) string {
	_, rest, ok := strings.Cut(doc, "\n## "+name+"\n")
	if !ok {
		return ""
	}
	if i := strings.Index(rest, "\n## "); i >= 0 {
		rest = rest[:i]
	}
	return rest
}

// jsonFields lists the JSON names of t's fields, recursively.
func jsonFields(t reflect.Type, opaque, seen map[reflect.Type]bool) []string {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Map {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || seen[t] || t == reflect.TypeFor[metav1.ObjectMeta]() {
		return nil
	}
	seen[t] = true
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" && f.Anonymous {
			out = append(out, jsonFields(f.Type, opaque, seen)...)
			continue
		}
		out = append(out, name)
		if !opaque[f.Type] && !opaque[deref(f.Type)] {
			out = append(out, jsonFields(f.Type, opaque, seen)...)
		}
	}
	return out
}

func deref(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}
