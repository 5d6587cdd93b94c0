package compiler

import (
	"slices"

	"google.golang.org/protobuf/proto"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/config"
)

// contributeProxy applies the proxy-scoped objects (Telemetry) that apply
// to the proxies of own, widest scope first so narrower ones override, and
// hashes what they set into the snapshot's version.
func (idx *index) contributeProxy(snap *meshv1.Snapshot, own svcKey, h hashWriter) {
	type scopedObj struct {
		obj   config.ProxyScoped
		scope config.Scope
	}
	k := config.ServiceKey{Namespace: own.ns, Name: own.name}
	var apply []scopedObj
	for _, o := range idx.scoped {
		if sc, ok := o.AppliesTo(k); ok {
			apply = append(apply, scopedObj{o, sc})
		}
	}
	// checkSet allows one object per scope, so the order is total.
	slices.SortStableFunc(apply, func(a, b scopedObj) int { return int(a.scope) - int(b.scope) })
	for _, a := range apply {
		a.obj.ContributeProxy(snap)
	}
	if snap.Telemetry != nil {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(snap.Telemetry)
		if err != nil {
			b = []byte(snap.Telemetry.String())
		}
		writeField(h, "telemetry")
		writeField(h, string(b))
	}
}
