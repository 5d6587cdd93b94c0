package proxy

import (
	"errors"
	"strings"
)

// errBadAuthority is returned for a Host or :authority the proxy cannot route.
var errBadAuthority = errors.New("proxy: malformed host")

// splitAuthority splits a Host header or request authority, "host",
// "host:port" or "[v6]:port", into a lower-cased host without a trailing dot
// and its port (0 when absent). It allocates only when the host has upper case.
func splitAuthority(s string) (host string, port uint32, err error) {
	if s == "" || len(s) > 300 {
		return "", 0, errBadAuthority
	}
	rest := ""
	if s[0] == '[' {
		end := strings.IndexByte(s, ']')
		if end < 2 {
			return "", 0, errBadAuthority
		}
		host, rest = s[1:end], s[end+1:]
		for i := 0; i < len(host); i++ {
			c := host[i]
			if !(c == ':' || c == '.' || isAlnum(c)) {
				return "", 0, errBadAuthority
			}
		}
		if rest != "" && rest[0] != ':' {
			return "", 0, errBadAuthority
		}
	} else {
		i := strings.IndexByte(s, ':')
		if i >= 0 {
			host, rest = s[:i], s[i:]
		} else {
			host = s
		}
		host = strings.TrimSuffix(host, ".")
		if host == "" || host[0] == '.' || host[len(host)-1] == '.' || strings.Contains(host, "..") {
			return "", 0, errBadAuthority
		}
		for i := 0; i < len(host); i++ {
			c := host[i]
			if !(c == '-' || c == '.' || c == '_' || isAlnum(c)) {
				return "", 0, errBadAuthority
			}
		}
	}
	if rest != "" {
		p, ok := parsePort(rest[1:])
		if !ok {
			return "", 0, errBadAuthority
		}
		port = p
	}
	return lower(host), port, nil
}

// parsePort parses a decimal port 1..65535 without sign or spaces.
func parsePort(s string) (uint32, bool) {
	if s == "" || len(s) > 5 {
		return 0, false
	}
	var n uint32
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint32(c-'0')
	}
	return n, n > 0 && n <= 65535
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func lower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			return strings.ToLower(s)
		}
	}
	return s
}
