package config

import (
	"slices"
	"strings"
)

// kindInfo describes one registered kind.
type kindInfo struct {
	kind       string
	apiVersion string
	newObject  func() object
}

// kindTable lists the kinds Trellis accepts.
//
// Adding a kind touches this package only, plus nothing else when it
// implements the hooks below:
//
//  1. <kind>.go: the type (embedding metav1.TypeMeta and ObjectMeta, or an
//     upstream type such as Gateway API's), Ref, setDefaults, Validate
//     (guard clauses, errors naming the field), and a kindInfo func; add
//     that func to the list below. Decode, DecodeStored, Encode, the store
//     key and the admin API's /v1/resources/<kind> then work for it.
//  2. <kind>_hooks.go: the hooks it needs (hooks.go), found by interface,
//     never by a type switch:
//     - checkSet(*Set) []error: its cross-object checks; CheckSet runs them
//     on the objects of an apply and on the whole state after it (the
//     apply refuses only the problems it introduces). Report problems
//     against the object that holds the reference.
//     - Declarer: it declares a mesh service (ports, endpoint selector), as
//     Service does.
//     - Attacher: it attaches to services — Attachments() by parentRefs or
//     targetRefs — and Contribute()s to each one's compiled form (routes
//     today; a policy would set the service's backend or inbound policy).
//     The compiler indexes attachments from the mesh view and calls
//     Contribute for every service it compiles, so a new Attacher needs no
//     compiler change unless it fills a snapshot field nothing fills yet.
//  3. Tests in this package (decode, validate, checkset, hooks) and one in
//     internal/compiler that shows the compiled effect.
func kindTable() []kindInfo {
	return []kindInfo{
		authorizationPolicyKindInfo(),
		backendPolicyKind(),
		concurrencyPolicyKindInfo(),
		externalServiceKindInfo(),
		faultInjectionKindInfo(),
		grpcRouteKind(),
		httpRouteKind(),
		meshConfigKindInfo(),
		rateLimitPolicyKind(),
		serviceKind(),
		telemetryKindInfo(),
	}
}

// Kinds returns the registered kind names, sorted.
func Kinds() []string {
	var names []string
	for _, k := range kindTable() {
		names = append(names, k.kind)
	}
	slices.Sort(names)
	return names
}

func lookupKind(kind string) (kindInfo, bool) {
	for _, k := range kindTable() {
		if k.kind == kind {
			return k, true
		}
	}
	return kindInfo{}, false
}

// knownKinds renders "HTTPRoute (gateway.networking.k8s.io/v1), Service (trellis.dev/v1alpha1)".
func knownKinds() string {
	table := kindTable()
	slices.SortFunc(table, func(a, b kindInfo) int { return strings.Compare(a.kind, b.kind) })
	parts := make([]string, len(table))
	for i, k := range table {
		parts[i] = k.kind + " (" + k.apiVersion + ")"
	}
	return strings.Join(parts, ", ")
}
