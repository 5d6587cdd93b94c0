package config

import (
	"fmt"
	"strings"
)

// ResourcePrefix is the store prefix under which every resource lives.
const ResourcePrefix = "/resources/"

// StoreKey returns the store key of r: "/resources/<Kind>/<namespace>/<name>".
func StoreKey(r Ref) string {
	return ResourcePrefix + r.Kind + "/" + r.Namespace + "/" + r.Name
}

// KindPrefix returns the store prefix holding every resource of kind:
// "/resources/<Kind>/".
func KindPrefix(kind string) string {
	return ResourcePrefix + kind + "/"
}

// ParseStoreKey is the inverse of StoreKey.
func ParseStoreKey(key string) (Ref, error) {
	rest, ok := strings.CutPrefix(key, ResourcePrefix)
	if !ok {
		return Ref{}, fmt.Errorf("config: store key %q: does not start with %q", key, ResourcePrefix)
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 {
		return Ref{}, fmt.Errorf("config: store key %q: want %s<Kind>/<namespace>/<name>", key, ResourcePrefix)
	}
	for _, p := range parts {
		if p == "" {
			return Ref{}, fmt.Errorf("config: store key %q: empty segment", key)
		}
	}
	return Ref{Kind: parts[0], Namespace: parts[1], Name: parts[2]}, nil
}
