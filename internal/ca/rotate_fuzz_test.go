package ca

import (
	"encoding/json"
	"testing"
	"time"

	"trellis.dev/trellis/internal/store"
)

// FuzzRotationRecord: the rotation record read back from the store is
// refused cleanly (never a panic) unless it names a known phase and a
// root that parses; one that is accepted round-trips.
func FuzzRotationRecord(f *testing.F) {
	root := makeCert(f, "fuzz root", nil, true)
	good, _ := json.Marshal(Rotation{Phase: PhasePropagating, Started: time.Unix(1, 0).UTC(), By: "admin-token", OtherRoot: root.cert.Raw})
	f.Add(good)
	f.Add([]byte(`{"phase":"reissuing","otherRoot":"AAAA"}`))
	f.Add([]byte(`{"phase":"idle"}`))
	f.Add([]byte(`null`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, b []byte) {
		k := caKeys{RotationKey: store.KV{Key: RotationKey, Value: b}}
		r, err := k.rotation()
		if err != nil {
			return
		}
		if r == nil || (r.Phase != PhasePropagating && r.Phase != PhaseReissuing) {
			t.Fatalf("accepted %q as %+v", b, r)
		}
		again, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		k[RotationKey] = store.KV{Key: RotationKey, Value: again}
		if r2, err := k.rotation(); err != nil || r2.Phase != r.Phase || string(r2.OtherRoot) != string(r.OtherRoot) {
			t.Fatalf("round trip of %q: %+v, %v", b, r2, err)
		}
	})
}

// FuzzRecordCert: any stored value yields a certificate or an error.
func FuzzRecordCert(f *testing.F) {
	c := mustCA(f, Options{})
	f.Add(c.BundlePEM())
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if cert, err := recordCert(store.KV{Key: RootKey, Value: b}); err == nil && cert == nil {
			t.Fatal("nil certificate without an error")
		}
	})
}
