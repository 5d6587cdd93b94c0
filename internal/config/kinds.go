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

// kindTable lists the kinds Trellis accepts. Adding a kind: write its file
// (type, setDefaults, Validate, and a kindInfo func) and add one line here.
func kindTable() []kindInfo {
	return []kindInfo{
		httpRouteKind(),
		serviceKind(),
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
