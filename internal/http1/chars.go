package http1

import "bytes"

// Character classes of RFC 9110 and RFC 3986, as the parser uses them.

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func isHex(c byte) bool {
	return isDigit(c) || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func isAlpha(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }

// tchar (RFC 9110 §5.6.2).
func isTchar(c byte) bool {
	if isAlpha(c) || isDigit(c) {
		return true
	}
	switch c {
	case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
		return true
	}
	return false
}

func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !isTchar(c) {
			return false
		}
	}
	return true
}

// fieldValueByte: field-vchar, obs-text, SP and HTAB (RFC 9110 §5.5); no
// control byte, so no CR, LF or NUL.
func fieldValueByte(c byte) bool {
	return c == '\t' || c >= 0x20 && c != 0x7f
}

// validTarget checks a request-target's form against its method: "*" for
// OPTIONS, authority form for CONNECT (and only for it), else origin or
// absolute form (RFC 9112 §3.2). A CONNECT without a port passes, as with
// net/http: what it may tunnel to is its server's to decide and answer.
func validTarget(method, target []byte) bool {
	switch {
	case string(method) == "CONNECT":
		return validAuthority(target, false)
	case string(target) == "*":
		return string(method) == "OPTIONS"
	case len(target) > 0 && target[0] == '/':
		return validPathQuery(target)
	case isAbsoluteForm(target):
		auth := authorityOf(target)
		rest := target[len(schemeOf(target))+3+len(auth):]
		if len(rest) > 0 && rest[0] != '/' && rest[0] != '?' {
			return false
		}
		return validAuthority(auth, false) && (len(rest) == 0 || validPathQuery(rest))
	}
	return false
}

// validPathQuery: a path of visible ASCII with well-formed percent
// escapes, then an optional query of visible ASCII; no fragment.
func validPathQuery(b []byte) bool {
	inQuery := false
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch {
		case c <= 0x20 || c >= 0x7f || c == '#':
			return false
		case c == '?':
			inQuery = true
		case c == '%' && !inQuery:
			if i+2 >= len(b) || !isHex(b[i+1]) || !isHex(b[i+2]) {
				return false
			}
			i += 2
		}
	}
	return true
}

func schemeOf(target []byte) []byte {
	if i := bytes.Index(target, []byte("://")); i > 0 {
		return target[:i]
	}
	return nil
}

// isAbsoluteForm: "http://…" or "https://…", scheme in lower case.
func isAbsoluteForm(target []byte) bool {
	s := schemeOf(target)
	return string(s) == "http" || string(s) == "https"
}

// authorityOf is an absolute-form target's authority.
func authorityOf(target []byte) []byte {
	a := target[len(schemeOf(target))+3:]
	if i := bytes.IndexAny(a, "/?"); i >= 0 {
		a = a[:i]
	}
	return a
}

// validHost checks a Host field's value: an authority, port optional.
func validHost(v []byte) bool { return validAuthority(v, false) }

// validAuthority: a host — a registered name of letters, digits and
// "-._~", or a bracketed IPv6 literal — then ":port" of 1 to 5 digits,
// required when needPort. No userinfo, no percent escapes.
func validAuthority(a []byte, needPort bool) bool {
	host, port, hasPort := a, []byte(nil), false
	if len(a) > 0 && a[0] == '[' {
		end := bytes.IndexByte(a, ']')
		if end < 0 {
			return false
		}
		host = a[1:end]
		rest := a[end+1:]
		if len(rest) > 0 {
			if rest[0] != ':' {
				return false
			}
			port, hasPort = rest[1:], true
		}
		if !validIPv6(host) {
			return false
		}
	} else {
		if i := bytes.IndexByte(a, ':'); i >= 0 {
			host, port, hasPort = a[:i], a[i+1:], true
		}
		if !validRegName(host) {
			return false
		}
	}
	if !hasPort {
		return !needPort
	}
	if len(port) == 0 || len(port) > 5 {
		return false
	}
	for _, c := range port {
		if !isDigit(c) {
			return false
		}
	}
	return true
}

func validRegName(h []byte) bool {
	if len(h) == 0 {
		return false
	}
	for _, c := range h {
		if !isAlpha(c) && !isDigit(c) && c != '-' && c != '.' && c != '_' && c != '~' {
			return false
		}
	}
	return true
}

// validIPv6: hex digits, colons and dots (an embedded IPv4), at least two
// colons; no zone.
func validIPv6(h []byte) bool {
	colons := 0
	for _, c := range h {
		switch {
		case c == ':':
			colons++
		case isHex(c), c == '.':
		default:
			return false
		}
	}
	return colons >= 2
}
