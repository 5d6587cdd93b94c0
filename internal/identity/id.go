// Package identity holds what a workload needs to prove who it is and to check
// who its peers are: SPIFFE IDs of the form
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>, the workload's
// private key and CSR, a hot-swappable holder of its current certificate and
// trust bundle (Source), and the mTLS configurations proxies use between them.
package identity

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"trellis.dev/trellis/internal/meshname"
)

// ErrNotWorkloadID: an ID or its parts do not form a Trellis workload ID.
var ErrNotWorkloadID = errors.New("identity: not a workload ID")

// WorkloadID builds spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>.
// The trust domain must be a bare name (trellis.local, not spiffe://...), the
// namespace an RFC 1123 label and the service account an RFC 1123 subdomain
// (meshname), as in Kubernetes, so that every ID maps back to names users can
// type. SPIFFE itself allows more in a path segment (upper case, '_'); a
// Trellis workload ID deliberately does not.
func WorkloadID(trustDomain, namespace, serviceAccount string) (spiffeid.ID, error) {
	td, err := ParseTrustDomain(trustDomain)
	if err != nil {
		return spiffeid.ID{}, err
	}
	if err := meshname.CheckLabel(namespace); err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: namespace: %v", ErrNotWorkloadID, err)
	}
	if err := meshname.CheckSubdomain(serviceAccount); err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: service account: %v", ErrNotWorkloadID, err)
	}
	id, err := spiffeid.FromSegments(td, "ns", namespace, "sa", serviceAccount)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: %v", ErrNotWorkloadID, err)
	}
	return id, nil
}

// ParseWorkloadID returns the namespace and service account of a workload ID.
// It refuses IDs of any other shape (extra segments, invalid names).
func ParseWorkloadID(id spiffeid.ID) (namespace, serviceAccount string, err error) {
	if id.IsZero() {
		return "", "", fmt.Errorf("%w: empty ID", ErrNotWorkloadID)
	}
	parts := strings.Split(id.Path(), "/")
	// A valid path "/ns/<ns>/sa/<sa>" splits into ["", "ns", <ns>, "sa", <sa>].
	if len(parts) != 5 || parts[0] != "" || parts[1] != "ns" || parts[3] != "sa" {
		return "", "", fmt.Errorf("%w: %s: path must be /ns/<namespace>/sa/<service-account>", ErrNotWorkloadID, id)
	}
	if err := meshname.CheckLabel(parts[2]); err != nil {
		return "", "", fmt.Errorf("%w: %s: namespace: %v", ErrNotWorkloadID, id, err)
	}
	if err := meshname.CheckSubdomain(parts[4]); err != nil {
		return "", "", fmt.Errorf("%w: %s: service account: %v", ErrNotWorkloadID, id, err)
	}
	return parts[2], parts[4], nil
}

// ParseTrustDomain validates a bare trust domain name such as trellis.local.
func ParseTrustDomain(name string) (spiffeid.TrustDomain, error) {
	if name == "" {
		return spiffeid.TrustDomain{}, errors.New("identity: trust domain is empty")
	}
	// spiffeid.TrustDomainFromString also accepts "spiffe://td"; configuration
	// takes the bare name only, so that there is one way to write it.
	if strings.Contains(name, ":") || strings.Contains(name, "/") {
		return spiffeid.TrustDomain{}, fmt.Errorf("identity: trust domain %q: want a bare name such as trellis.local", name)
	}
	td, err := spiffeid.TrustDomainFromString(name)
	if err != nil {
		return spiffeid.TrustDomain{}, fmt.Errorf("identity: trust domain %q: %v", name, err)
	}
	return td, nil
}
