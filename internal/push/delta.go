package push

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"slices"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// Incremental snapshots (the delta protocol).
//
// A proxy that sets WatchRequest.supports_incremental on its first message
// may get a Snapshot with incremental set: a delta onto the snapshot it last
// ACKed on this stream. A delta carries every top-level field in full (they
// are small and their own hooks own them) except services — only those
// added or changed, plus removed_services for those gone — and the trust
// bundle, left empty when unchanged (the largest field; a real bundle is
// never empty, and a change to an empty one goes out as a full snapshot). The server sends a delta
// only right after an ACK of the snapshot it is based on, so the base is
// always what the proxy runs; after a NACK, on a new stream, or to a proxy
// that did not ask, it sends full snapshots. The proxy merges the delta onto
// its base and validates and applies the result whole, as a full snapshot.
// A delta the proxy cannot merge (it lacks the base) is NACKed with an error
// starting with DeltaRefusal, and the server resends the snapshot whole at
// once. A delta whose merged result is invalid is NACKed like any snapshot:
// the whole one would be refused too, so the next snapshot is full, sent at
// the next change.

// DeltaRefusal starts the NACK text of a delta the proxy could not merge.
const DeltaRefusal = "push: delta: "

// ErrNoBase: an incremental snapshot arrived with no base snapshot to apply
// it to (the first snapshot of a stream, or after a refused one).
var ErrNoBase = errors.New(DeltaRefusal + "no base snapshot to apply an incremental snapshot to")

// ServiceKey is how deltas name a service: "name.namespace".
func ServiceKey(s *meshv1.Service) string { return s.GetName() + "." + s.GetNamespace() }

// serviceSet indexes a snapshot's services by ServiceKey. The values are
// shared with the snapshot and never modified.
func serviceSet(snap *meshv1.Snapshot) map[string]*meshv1.Service {
	m := make(map[string]*meshv1.Service, len(snap.GetServices()))
	for _, s := range snap.GetServices() {
		m[ServiceKey(s)] = s
	}
	return m
}

// deltaBase is what the server keeps of the snapshot a delta is based on.
type deltaBase struct {
	services map[string]*meshv1.Service
	bundle   [][]byte
}

func baseOf(snap *meshv1.Snapshot) *deltaBase {
	return &deltaBase{services: serviceSet(snap), bundle: snap.GetTrustBundle()}
}

// diffSnapshot returns the delta that turns the snapshot base was taken of
// into snap, or nil when a delta would not be smaller than snap (every
// service changed) or cannot say it (the bundle became empty). snap is not
// modified; the delta shares its messages.
func diffSnapshot(b *deltaBase, snap *meshv1.Snapshot) *meshv1.Snapshot {
	base := b.services
	sameBundle := slices.EqualFunc(b.bundle, snap.GetTrustBundle(), bytes.Equal)
	if !sameBundle && len(snap.GetTrustBundle()) == 0 {
		return nil
	}
	var changed []*meshv1.Service
	present := 0
	for _, s := range snap.GetServices() {
		old, ok := base[ServiceKey(s)]
		if ok {
			present++
		}
		// Equal is cheap next to a send: a proxy's few services, compared
		// only when its snapshot's version moved.
		if !ok || !proto.Equal(old, s) {
			changed = append(changed, s)
		}
	}
	var removed []string
	if present < len(base) {
		in := serviceSet(snap)
		for k := range base {
			if in[k] == nil {
				removed = append(removed, k)
			}
		}
		slices.Sort(removed)
	}
	if len(changed) == len(snap.GetServices()) && len(removed) == 0 && !sameBundle {
		return nil
	}
	d := shallowCopy(snap)
	if sameBundle {
		d.TrustBundle = nil
	}
	d.Services = changed
	d.Incremental = true
	d.RemovedServices = removed
	return d
}

// ApplyDelta merges the incremental snapshot delta onto base (the last
// snapshot the proxy ACKed on this stream) and returns the whole result,
// which the proxy then validates and applies like a full snapshot. Neither
// argument is modified. A full (non-incremental) delta is returned as is.
func ApplyDelta(base, delta *meshv1.Snapshot) (*meshv1.Snapshot, error) {
	if !delta.GetIncremental() {
		return delta, nil
	}
	if base == nil {
		return nil, ErrNoBase
	}
	inBase := serviceSet(base)
	removed := make(map[string]bool, len(delta.GetRemovedServices()))
	for _, k := range delta.GetRemovedServices() {
		if inBase[k] == nil {
			return nil, fmt.Errorf(DeltaRefusal+"snapshot %s: removed_services: %q is not in the base snapshot %s", delta.GetVersion(), k, base.GetVersion())
		}
		removed[k] = true
	}
	changed := make(map[string]*meshv1.Service, len(delta.GetServices()))
	var added []*meshv1.Service
	for i, s := range delta.GetServices() {
		k := ServiceKey(s)
		if removed[k] {
			return nil, fmt.Errorf(DeltaRefusal+"snapshot %s: services[%d]: %q is also in removed_services", delta.GetVersion(), i, k)
		}
		changed[k] = s
		if inBase[k] == nil {
			added = append(added, s)
		}
	}
	out := shallowCopy(delta)
	if len(out.TrustBundle) == 0 {
		out.TrustBundle = base.GetTrustBundle()
	}
	out.Incremental = false
	out.RemovedServices = nil
	// The base's order, changed services in place, added ones after; in
	// the compiler's order (namespace, then name) when the base was in it,
	// so a merged snapshot equals the full one.
	out.Services = make([]*meshv1.Service, 0, len(inBase)-len(removed)+len(added))
	for _, s := range base.GetServices() {
		k := ServiceKey(s)
		switch {
		case removed[k]:
		case changed[k] != nil:
			out.Services = append(out.Services, changed[k])
		default:
			out.Services = append(out.Services, s)
		}
	}
	sorted := slices.IsSortedFunc(base.GetServices(), compareServices)
	out.Services = append(out.Services, added...)
	if sorted {
		slices.SortStableFunc(out.Services, compareServices)
	}
	return out, nil
}

func compareServices(a, b *meshv1.Service) int {
	return cmp.Or(cmp.Compare(a.GetNamespace(), b.GetNamespace()), cmp.Compare(a.GetName(), b.GetName()))
}

// shallowCopy copies src's fields (sharing nested messages): the compiler
// may share one snapshot between proxies, so it is never written to.
// Reflection keeps fields added to Snapshot later.
func shallowCopy(src *meshv1.Snapshot) *meshv1.Snapshot {
	dst := &meshv1.Snapshot{}
	dr := dst.ProtoReflect()
	src.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		dr.Set(fd, v)
		return true
	})
	return dst
}
