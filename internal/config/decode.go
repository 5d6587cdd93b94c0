package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// Decode reads every resource in one file: multi-document YAML (documents
// separated by "---" lines) or JSON (one object, or an array of objects).
// Decoding is strict (unknown and duplicate fields are errors, field names
// are case-sensitive), then defaults are applied and each object is
// validated. Metadata the control plane owns (uid, resourceVersion, ...) and
// status are refused.
//
// On any problem Decode returns no objects and every problem found, joined
// with errors.Join, each an *Error naming file, document, field and reason.
func Decode(file string, data []byte) ([]Object, error) {
	var (
		objs []Object
		errs []error
		doc  int
	)
	for _, raw := range splitDocuments(data) {
		js, err := yaml.YAMLToJSONStrict(raw.data)
		if err != nil {
			doc++
			errs = append(errs, &Error{File: file, Doc: doc, Reason: yamlReason(err, raw.line)})
			continue
		}
		items, err := documentItems(js)
		if err != nil {
			doc++
			errs = append(errs, &Error{File: file, Doc: doc, Reason: err.Error()})
			continue
		}
		for _, item := range items {
			doc++
			obj, err := decodeObject(item, "", true)
			if err != nil {
				for _, e := range Errors(err) {
					e.File, e.Doc = file, doc
					errs = append(errs, e)
				}
				continue
			}
			objs = append(objs, obj)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if len(objs) == 0 {
		return nil, &Error{File: file, Reason: "no resources found: expected YAML or JSON documents with apiVersion, kind, metadata and spec"}
	}
	return objs, nil
}

// DecodeStored decodes an object of kind from the bytes Encode produced,
// applies defaults and validates it.
func DecodeStored(kind string, data []byte) (Object, error) {
	if _, ok := lookupKind(kind); !ok {
		return nil, &Error{Ref: Ref{Kind: kind}, Reason: fmt.Sprintf("unknown kind %q: known kinds are %s", kind, knownKinds())}
	}
	return decodeObject(data, kind, false)
}

// Encode returns the canonical JSON of o for the store. It fills in
// apiVersion and kind when both are empty.
func Encode(o Object) ([]byte, error) {
	obj, ok := o.(object)
	if !ok {
		return nil, fmt.Errorf("config: encode: unsupported type %T", o)
	}
	ref := o.Ref()
	k, ok := lookupKind(ref.Kind)
	if !ok {
		return nil, fmt.Errorf("config: encode %s: unknown kind", ref)
	}
	tm := obj.typeMeta()
	if tm.APIVersion == "" && tm.Kind == "" {
		tm.APIVersion, tm.Kind = k.apiVersion, k.kind
	}
	if tm.APIVersion != k.apiVersion || tm.Kind != k.kind {
		return nil, fmt.Errorf("config: encode %s: apiVersion/kind %s/%s, want %s/%s", ref, tm.APIVersion, tm.Kind, k.apiVersion, k.kind)
	}
	// encoding/json sorts map keys and follows struct order, so equal
	// objects encode to equal bytes.
	b, err := json.Marshal(o)
	if err != nil {
		return nil, fmt.Errorf("config: encode %s: %w", ref, err)
	}
	return b, nil
}

type header struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   headerMeta `json:"metadata"`
}

type headerMeta struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
}

// decodeObject decodes one JSON object. want, if set, is the kind the
// caller expects (stored objects). applied marks user input, which may not
// carry control-plane-owned fields.
func decodeObject(js []byte, want string, applied bool) (Object, error) {
	js = bytes.TrimSpace(js)
	if len(js) == 0 || js[0] != '{' {
		return nil, &Error{Ref: Ref{Kind: want}, Reason: "must be an object with apiVersion, kind, metadata and spec"}
	}
	var h header
	if err := kjson.UnmarshalCaseSensitivePreserveInts(js, &h); err != nil {
		field, reason := jsonReason(err, &h)
		return nil, &Error{Ref: Ref{Kind: want}, Field: field, Reason: reason}
	}
	ref := Ref{Kind: h.Kind, Namespace: namespaceOr(h.Metadata.Namespace), Name: h.Metadata.Name}
	fail := func(field, reason string) error { return &Error{Ref: ref, Field: field, Reason: reason} }
	if h.Kind == "" {
		return nil, fail("kind", "required: one of "+knownKinds())
	}
	k, ok := lookupKind(h.Kind)
	if !ok {
		return nil, fail("kind", fmt.Sprintf("unknown kind %q: known kinds are %s", h.Kind, knownKinds()))
	}
	if want != "" && h.Kind != want {
		return nil, fail("kind", fmt.Sprintf("stored object is a %s, expected %s", h.Kind, want))
	}
	switch {
	case h.APIVersion == "":
		return nil, fail("apiVersion", fmt.Sprintf("required: %s is apiVersion %s", k.kind, k.apiVersion))
	case h.APIVersion != k.apiVersion:
		return nil, fail("apiVersion", fmt.Sprintf("%s is served as apiVersion %s, not %q", k.kind, k.apiVersion, h.APIVersion))
	}

	obj := k.newObject()
	strict, err := kjson.UnmarshalStrict(js, obj)
	if err != nil {
		field, reason := jsonReason(err, obj)
		return nil, fail(field, reason)
	}
	if len(strict) > 0 {
		errs := make([]error, 0, len(strict))
		for _, se := range strict {
			errs = append(errs, strictError(ref, se))
		}
		return nil, errors.Join(errs...)
	}
	if applied {
		fe := &fieldErrors{ref: ref}
		checkAppliedMeta(fe, obj.objectMeta())
		if s, ok := obj.(interface{ appliedStatus() bool }); ok && s.appliedStatus() {
			fe.add("status", "is reported by the control plane and cannot be applied; remove it")
		}
		if err := fe.err(); err != nil {
			return nil, err
		}
	}
	obj.setDefaults()
	if err := obj.Validate(); err != nil {
		return nil, err
	}
	return obj, nil
}

func strictError(ref Ref, err error) *Error {
	msg := err.Error()
	var fe kjson.FieldError
	if !errors.As(err, &fe) {
		return &Error{Ref: ref, Reason: msg}
	}
	reason := "unknown field: check its spelling, case and indentation"
	if strings.HasPrefix(msg, "duplicate field") {
		reason = "duplicate field"
	}
	return &Error{Ref: ref, Field: fe.FieldPath(), Reason: reason}
}

var typeErrorRE = regexp.MustCompile(`^json: cannot unmarshal (.+) into Go struct field (\S+) of type (.+)$`)

// jsonReason turns a decode error into a field path and a reason a user can
// act on. target is what was being decoded into.
func jsonReason(err error, target any) (field, reason string) {
	msg := err.Error()
	if m := typeErrorRE.FindStringSubmatch(msg); m != nil {
		path := jsonFieldPath(m[2])
		return path, fmt.Sprintf("must be %s, got %s", describeType(reflect.TypeOf(target), path, m[3]), m[1])
	}
	return "", strings.TrimPrefix(msg, "json: ")
}

// jsonFieldPath turns "HTTPRoute.HTTPRoute.spec.rules.backendRefs.BackendRef.weight"
// into "spec.rules.backendRefs.weight": the first segment is the decoded
// type, the other capitalised ones embedded structs; every JSON field name of
// these kinds starts lower-case.
func jsonFieldPath(p string) string {
	var keep []string
	_, p, _ = strings.Cut(p, ".")
	for _, seg := range strings.Split(p, ".") {
		if seg != "" && (seg[0] < 'A' || seg[0] > 'Z') {
			keep = append(keep, seg)
		}
	}
	return strings.Join(keep, ".")
}

// describeType finds the Go type at the JSON path under root and says what
// a user must write there. typeName is the type the decoder named, which
// may be an element of the field's type (a list's item).
func describeType(root reflect.Type, path, typeName string) string {
	t := root
	for _, seg := range strings.Split(path, ".") {
		t = elem(t, "")
		if t.Kind() != reflect.Struct {
			return "a value of type " + typeName
		}
		f, ok := jsonField(t, seg)
		if !ok {
			return "a value of type " + typeName
		}
		t = f
	}
	t = elem(t, typeName)
	switch t.Kind() {
	case reflect.String:
		return "a string (quote it)"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Bool:
		return "true or false"
	case reflect.Struct, reflect.Map:
		if t.Name() == "Time" {
			return "a timestamp string"
		}
		return "an object"
	case reflect.Slice, reflect.Array:
		return "a list"
	}
	return "a value of type " + typeName
}

// elem unwraps pointers, lists and maps until the type is named stop, or
// down to a non-container when stop is empty or never matches.
func elem(t reflect.Type, stop string) reflect.Type {
	for {
		if stop != "" && t.String() == stop {
			return t
		}
		switch t.Kind() {
		case reflect.Pointer, reflect.Slice, reflect.Array, reflect.Map:
			t = t.Elem()
			continue
		}
		return t
	}
}

// jsonField finds the field named name in struct t, looking through
// embedded (inline) structs.
func jsonField(t reflect.Type, name string) (reflect.Type, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if tag == "-" {
			continue
		}
		if tag == "" && f.Anonymous {
			inner := f.Type
			if inner.Kind() == reflect.Pointer {
				inner = inner.Elem()
			}
			if inner.Kind() == reflect.Struct {
				if ft, ok := jsonField(inner, name); ok {
					return ft, true
				}
			}
			continue
		}
		if tag == name || (tag == "" && f.Name == name) {
			return f.Type, true
		}
	}
	return nil, false
}

var yamlLineRE = regexp.MustCompile(`line (\d+)`)

// yamlReason reports a YAML error with line numbers counted from the start
// of the file rather than of the document.
func yamlReason(err error, firstLine int) string {
	msg := yamlLineRE.ReplaceAllStringFunc(err.Error(), func(s string) string {
		n, convErr := strconv.Atoi(strings.TrimPrefix(s, "line "))
		if convErr != nil {
			return s
		}
		return "line " + strconv.Itoa(n+firstLine-1)
	})
	msg = strings.TrimPrefix(msg, "error converting YAML to JSON: ")
	msg = strings.ReplaceAll(strings.ReplaceAll(msg, ":\n  ", ": "), "\n  ", "; ")
	return "invalid YAML: " + msg
}

// documentItems splits one document's JSON into objects: a JSON or YAML
// array holds several; null (an empty document) holds none.
func documentItems(js []byte) ([][]byte, error) {
	js = bytes.TrimSpace(js)
	switch {
	case bytes.Equal(js, []byte("null")):
		return nil, nil
	case len(js) > 0 && js[0] == '[':
		var items []json.RawMessage
		if err := json.Unmarshal(js, &items); err != nil {
			return nil, fmt.Errorf("invalid list: %v", err)
		}
		out := make([][]byte, len(items))
		for i, it := range items {
			out[i] = it
		}
		return out, nil
	}
	return [][]byte{js}, nil
}

type rawDocument struct {
	line int // 1-based line of the file where the document starts
	data []byte
}

// splitDocuments cuts YAML at "---" separator lines. A JSON file has none
// and comes back whole.
func splitDocuments(data []byte) []rawDocument {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	var docs []rawDocument
	start, startLine, line := 0, 1, 1
	for off := 0; off < len(data); line++ {
		end := bytes.IndexByte(data[off:], '\n')
		next := len(data)
		if end >= 0 {
			next = off + end + 1
		}
		l := bytes.TrimRight(data[off:next], "\r\n")
		if bytes.HasPrefix(l, []byte("---")) && (len(l) == 3 || l[3] == ' ' || l[3] == '\t') {
			docs = append(docs, rawDocument{line: startLine, data: data[start:off]})
			// Content after "--- " on the same line belongs to the next document.
			start, startLine = off+3, line
		}
		off = next
	}
	return append(docs, rawDocument{line: startLine, data: data[start:]})
}
