package http1

import (
	"reflect"
	"testing"
)

// TestResetClearsEverything: Reset zeroes every field but the backing
// array (and a ResponseHead's ForHEAD, the caller's input), so a field
// added to a head and forgotten in Reset fails here, not in production.
func TestResetClearsEverything(t *testing.T) {
	for _, tc := range []struct {
		head any
		keep map[string]bool
	}{
		{&RequestHead{}, map[string]bool{"fields": true, "Fields": true}},
		{&ResponseHead{}, map[string]bool{"fields": true, "Fields": true, "ForHEAD": true}},
	} {
		v := reflect.ValueOf(tc.head).Elem()
		for i := range v.NumField() {
			f := v.Field(i)
			if !f.CanSet() {
				continue
			}
			switch f.Kind() {
			case reflect.Bool:
				f.SetBool(true)
			case reflect.Int, reflect.Int64:
				f.SetInt(7)
			case reflect.Slice:
				f.Set(reflect.MakeSlice(f.Type(), 1, 1))
			}
		}
		tc.head.(interface{ Reset() }).Reset()
		for i := range v.NumField() {
			name := v.Type().Field(i).Name
			if !v.Field(i).CanSet() || tc.keep[name] {
				continue
			}
			if !v.Field(i).IsZero() {
				t.Errorf("%T.Reset left %s = %v", tc.head, name, v.Field(i))
			}
		}
		if n := v.FieldByName("Fields").Len(); n != 0 {
			t.Errorf("%T.Reset left %d fields", tc.head, n)
		}
	}
}
