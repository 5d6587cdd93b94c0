package meshname

import "strings"

// Name is a service's name and namespace, both labels.
type Name struct {
	Name, Namespace string
}

// String is the canonical form, "name.namespace": what subscriptions carry
// on the wire and what the proxy keys services by.
func (n Name) String() string { return n.Name + "." + n.Namespace }

// ParseQualified parses the canonical "name.namespace" form, nothing else:
// no default namespace, no ".svc" suffix, no trailing dot. The watch
// protocol carries subscriptions in this form.
func ParseQualified(s string) (Name, error) {
	name, ns, ok := strings.Cut(s, ".")
	if !ok {
		return Name{}, invalid(s, "%q is not name.namespace: it has no '.'", s)
	}
	if err := CheckLabel(name); err != nil {
		return Name{}, invalid(s, "%q is not name.namespace: name: %v", s, err)
	}
	if err := CheckLabel(ns); err != nil {
		return Name{}, invalid(s, "%q is not name.namespace: namespace: %v", s, err)
	}
	return Name{Name: name, Namespace: ns}, nil
}

// IsQualified reports whether s is "name.namespace" (see ParseQualified).
// It does not allocate.
func IsQualified(s string) bool {
	name, ns, ok := strings.Cut(s, ".")
	return ok && IsLabel(name) && IsLabel(ns)
}

// hostProblem is why splitHost refused a host; a code, not an error, so the
// hot path allocates nothing and ParseService can still say what is wrong.
type hostProblem uint8

const (
	hostOK hostProblem = iota
	hostBadName
	hostBadNamespace
	hostNotSvc       // the third part is not "svc"
	hostWrongDomain  // the part after "svc" is not the mesh's domain
	hostNoDomainHere // "name.ns.svc." with an empty domain after it
	hostEmptyPart    // "name.ns.." and the like
)

// splitHost is the one grammar of service hosts:
//
//	name                   → name in ownNS
//	name.ns                → name in ns
//	name.ns.svc            → name in ns
//	name.ns.svc.<domain>   → name in ns, domain as given (ParseDomain's form)
//
// with at most one trailing dot (an absolute DNS name) removed first.
func splitHost(host, ownNS, domain string) (name, ns string, p hostProblem) {
	host = strings.TrimSuffix(host, ".")
	name, rest, dotted := strings.Cut(host, ".")
	ns = ownNS
	if dotted {
		var tail string
		ns, tail, dotted = strings.Cut(rest, ".")
		if dotted {
			svc, dom, hasDomain := strings.Cut(tail, ".")
			switch {
			case svc == "":
				return "", "", hostEmptyPart
			case svc != "svc":
				return "", "", hostNotSvc
			case hasDomain && dom == "":
				return "", "", hostNoDomainHere
			case hasDomain && dom != domain:
				return "", "", hostWrongDomain
			}
		}
	}
	if !IsLabel(name) {
		return "", "", hostBadName
	}
	if !IsLabel(ns) {
		return "", "", hostBadNamespace
	}
	return name, ns, hostOK
}

// ParseHost reads a service's name and namespace out of a host an app
// called: "name" (in ownNS), "name.ns", "name.ns.svc" or
// "name.ns.svc.<domain>", optionally with a trailing dot. The host must
// already be lower case and without a port (the proxy's authority parsing
// does both); domain is in ParseDomain's form. ok is false for anything else,
// including an ownNS that is not a label. It does not allocate: the proxy
// calls it per request for hosts its snapshot does not know.
func ParseHost(host, ownNS, domain string) (name, ns string, ok bool) {
	name, ns, p := splitHost(host, ownNS, domain)
	return name, ns, p == hostOK
}

// ParseService parses a service reference as users and proxies write it
// (an --upstream key, a subscription before it is made canonical): the host
// forms of ParseHost, with defaultNS for a bare name. It returns an *Error
// that says what is wrong.
func ParseService(s, defaultNS, domain string) (Name, error) {
	name, ns, p := splitHost(s, defaultNS, domain)
	const forms = "want name, name.namespace, name.namespace.svc or name.namespace.svc.<domain>"
	switch p {
	case hostOK:
		return Name{Name: name, Namespace: ns}, nil
	case hostNotSvc:
		return Name{}, invalid(s, "%q is not a service name: the part after the namespace must be \"svc\"; %s", s, forms)
	case hostEmptyPart:
		return Name{}, invalid(s, "%q is not a service name: it has an empty part (\"..\")", s)
	case hostNoDomainHere:
		return Name{}, invalid(s, "%q is not a service name: empty domain after \"svc.\"; %s", s, forms)
	case hostWrongDomain:
		return Name{}, invalid(s, "%q is not a service name in this mesh: its domain is not %q", s, domain)
	case hostBadName:
		name, _, _ := strings.Cut(strings.TrimSuffix(s, "."), ".")
		return Name{}, invalid(s, "%q is not a service name: name: %v", s, CheckLabel(name))
	}
	// hostBadNamespace: the second part, or defaultNS for a bare name.
	ns = defaultNS
	if _, rest, dotted := strings.Cut(strings.TrimSuffix(s, "."), "."); dotted {
		ns, _, _ = strings.Cut(rest, ".")
	}
	return Name{}, invalid(s, "%q is not a service name: namespace: %v", s, CheckLabel(ns))
}
