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
)

// ErrNotWorkloadID: an ID or its parts do not form a Trellis workload ID.
var ErrNotWorkloadID = errors.New("identity: not a workload ID")

// WorkloadID builds spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>.
// The trust domain must be a bare name (trellis.local, not spiffe://...), the
// namespace a DNS label and the service account a DNS subdomain, as in
// Kubernetes, so that every ID maps back to names users can type.
func WorkloadID(trustDomain, namespace, serviceAccount string) (spiffeid.ID, error) {
	td, err := ParseTrustDomain(trustDomain)
	if err != nil {
		return spiffeid.ID{}, err
	}
	if err := validNamespace(namespace); err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: namespace %q: %v", ErrNotWorkloadID, namespace, err)
	}
	if err := validServiceAccount(serviceAccount); err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: service account %q: %v", ErrNotWorkloadID, serviceAccount, err)
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
	if err := validNamespace(parts[2]); err != nil {
		return "", "", fmt.Errorf("%w: %s: namespace: %v", ErrNotWorkloadID, id, err)
	}
	if err := validServiceAccount(parts[4]); err != nil {
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

// validNamespace: an RFC 1123 label (lowercase letters, digits, '-', at most 63).
func validNamespace(s string) error {
	return validLabel(s)
}

// validServiceAccount: an RFC 1123 subdomain (dot-separated labels, at most 253).
func validServiceAccount(s string) error {
	if len(s) > 253 {
		return errors.New("longer than 253 characters")
	}
	for label := range strings.SplitSeq(s, ".") {
		if err := validLabel(label); err != nil {
			return err
		}
	}
	return nil
}

func validLabel(s string) error {
	switch {
	case s == "":
		return errors.New("must not be empty")
	case len(s) > 63:
		return errors.New("longer than 63 characters")
	case s[0] == '-' || s[len(s)-1] == '-':
		return errors.New("must start and end with a lowercase letter or digit")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return fmt.Errorf("invalid character %q: use lowercase letters, digits and '-'", c)
		}
	}
	return nil
}
