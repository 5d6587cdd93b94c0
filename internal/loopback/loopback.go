// Package loopback hands out loopback TCP ports for children a process is
// about to start: the demo's apps and sidecars, the bench's pairs, etcd in
// tests.
//
// A port found free by listening on ":0" and closing is taken from the
// kernel's ephemeral range, where every outgoing connection and every other
// ":0" listener on the host also lands; in the moments before the child binds
// it, something else can take it. The ports here come from below that range,
// where only an explicit bind lands, and are never handed out twice by one
// process.
package loopback

import (
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// lowest is the bottom of the range ports are drawn from: above the
// well-known and most registered service ports.
const lowest = 10000

// handedOut holds every port this process handed out.
var handedOut sync.Map

// Port returns a loopback TCP port nothing listens on now, below the
// ephemeral range and not handed out before by this process.
func Port() (int, error) {
	top := ephemeralLow(readRange())
	n := top - lowest
	// From a random start, so that processes drawing at once rarely try
	// the same ports, through the whole range.
	start := rand.IntN(n)
	for i := range n {
		port := lowest + (start+i)%n
		if _, taken := handedOut.LoadOrStore(port, struct{}{}); taken {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		l.Close()
		return port, nil
	}
	return 0, errors.New("loopback: no free port below the ephemeral range")
}

// Addrs returns n addresses "127.0.0.1:port", each from Port.
func Addrs(n int) ([]string, error) {
	out := make([]string, 0, n)
	for range n {
		p, err := Port()
		if err != nil {
			return nil, err
		}
		out = append(out, net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	}
	return out, nil
}

func readRange() string {
	raw, _ := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	return string(raw)
}

// ephemeralLow is the first port of the kernel's ephemeral range, as
// /proc/sys/net/ipv4/ip_local_port_range gives it ("32768\t60999"), or
// 32768 (Linux's default) when that is unreadable or leaves under 2,000
// ports below it.
func ephemeralLow(raw string) int {
	f := strings.Fields(raw)
	if len(f) == 0 {
		return 32768
	}
	lo, err := strconv.Atoi(f[0])
	if err != nil || lo < lowest+2000 || lo > 65535 {
		return 32768
	}
	return lo
}
