package push

import (
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
)

// resolverScheme names the static resolver a Client's connection uses.
const resolverScheme = "trellis-control"

// failoverServiceConfig: pick_first keeps one connection to one replica
// (a proxy's Watch, lease and quota all go to the replica it is attached
// to) and, when that connection breaks, tries the other addresses in turn
// on the next call. The list is shuffled per connection so that proxies
// given the same addresses spread over the replicas.
const failoverServiceConfig = `{"loadBalancingConfig":[{"pick_first":{"shuffleAddressList":true}}]}`

// orderedServiceConfig is pick_first over the list as given: a connection
// that avoids one replica shuffles the others itself and puts that one last.
const orderedServiceConfig = `{"loadBalancingConfig":[{"pick_first":{}}]}`

// avoiding is addrs shuffled, with avoid (if present) moved to the end.
func avoiding(addrs []string, avoid string) []string {
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		if a != avoid {
			out = append(out, a)
		}
	}
	rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	if len(out) < len(addrs) {
		out = append(out, avoid)
	}
	return out
}

// maxAddrs bounds the list a proxy accepts: a few replicas, not a mesh.
const maxAddrs = 16

// ParseAddrs splits a --control value, host:port[,host:port...], into its
// addresses: each must have a host and a numeric port, no address may be
// repeated, and there may be at most 16.
func ParseAddrs(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, fmt.Errorf("control address: required")
	}
	parts := strings.Split(s, ",")
	if len(parts) > maxAddrs {
		return nil, fmt.Errorf("control address: %d addresses; at most %d", len(parts), maxAddrs)
	}
	out := make([]string, 0, len(parts))
	for i, p := range parts {
		a := strings.TrimSpace(p)
		host, port, err := net.SplitHostPort(a)
		if err != nil {
			return nil, fmt.Errorf("control address %d %q: want host:port: %v", i+1, a, err)
		}
		if host == "" {
			return nil, fmt.Errorf("control address %d %q: host required", i+1, a)
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return nil, fmt.Errorf("control address %d %q: port must be 1-65535", i+1, a)
		}
		for _, seen := range out {
			if seen == a {
				return nil, fmt.Errorf("control address %d %q: listed twice", i+1, a)
			}
		}
		out = append(out, a)
	}
	return out, nil
}
