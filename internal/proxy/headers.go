package proxy

import (
	"net"
	"net/http"
	"strings"
	"sync"
)

// Headers the proxy owns between hops.
const (
	// HeaderClientID carries the caller's verified SPIFFE ID to the app.
	HeaderClientID = "X-Trellis-Client-Id"
	// headerPort names the destination service port between proxies.
	headerPort = "X-Trellis-Port"
	// headerSource names the calling proxy's service (its name; the
	// namespace is the verified identity's) for the destination side's
	// source_service label. Asserted, not verified: see docs/metrics.md.
	headerSource = "X-Trellis-Source-Service"
	// headerError marks a response the proxy generated itself; its value
	// is the response flag (exchange.go).
	headerError = "X-Trellis-Error"
)

// meshPrefix is the prefix of every header the mesh owns. A header whose
// name normalises to it (any case, "_" for "-") is the mesh's, whoever
// added it: the proxies strip such headers and trailers from what an app
// sends and from what reaches an app, and set their own afterwards. Apps
// behind CGI/WSGI read X_Trellis_Client_Id as X-Trellis-Client-Id, so the
// underscore twin is the same header to them.
const meshPrefix = "x-trellis-"

// meshHeader reports whether name normalises to the mesh's prefix.
func meshHeader(name string) bool {
	if len(name) < len(meshPrefix) {
		return false
	}
	for i := 0; i < len(meshPrefix); i++ {
		c := name[i]
		switch {
		case c == '_':
			c = '-'
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		}
		if c != meshPrefix[i] {
			return false
		}
	}
	return true
}

// stripMeshHeaders deletes every mesh-owned header of h except keep (a
// canonical name, or "") and returns how many it deleted.
func stripMeshHeaders(h http.Header, keep string) int {
	n := 0
	for k := range h {
		if meshHeader(k) && k != keep {
			delete(h, k)
			n++
		}
	}
	return n
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func getBuf() *[]byte  { return bufPool.Get().(*[]byte) }
func putBuf(b *[]byte) { bufPool.Put(b) }

// hopHeader reports whether the canonical name is hop-by-hop: RFC 9110
// §7.6.1's, TE included, plus the de-facto Keep-Alive and Proxy-Connection,
// and HTTP2-Settings (connection-specific by RFC 7540 §3.2.1: it only ever
// rides an h2c upgrade, which the proxy does not take, upgradeType).
func hopHeader(name string) bool {
	switch name {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Trailer", "Transfer-Encoding", "Upgrade",
		"Http2-Settings", "Te":
		return true
	}
	return false
}

// upgradeType returns the protocol a request or response asks to switch
// to ("websocket"), or "" when it is not an upgrade. h2c is never one:
// after a 101 every h2 stream on the connection would pass the chain
// unseen, so, as net/http's server does, the h2c token is ignored and the
// request served as HTTP/1.1 (outHeader then drops Upgrade, and
// HTTP2-Settings is hop-by-hop).
func upgradeType(h http.Header) string {
	up := h["Upgrade"]
	if len(up) == 0 {
		return ""
	}
	for _, v := range h["Connection"] {
		for tok := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "upgrade") {
				return withoutH2C(up[0])
			}
		}
	}
	return ""
}

// withoutH2C is an Upgrade value with its h2c tokens removed ("" when
// nothing is left). A value without "h2c" in it is returned as is, so a
// websocket upgrade does not allocate.
func withoutH2C(v string) string {
	if !containsH2C(v) {
		return v
	}
	var keep []string
	for tok := range strings.SplitSeq(v, ",") {
		if tok = strings.TrimSpace(tok); tok != "" && !strings.EqualFold(tok, "h2c") {
			keep = append(keep, tok)
		}
	}
	return strings.Join(keep, ", ")
}

// containsH2C reports whether s has "h2c" in it, in any case: a byte scan,
// as this runs for every upgrade request.
func containsH2C(s string) bool {
	for i := 0; i+3 <= len(s); i++ {
		if s[i]|0x20 == 'h' && s[i+1] == '2' && s[i+2]|0x20 == 'c' {
			return true
		}
	}
	return false
}

// removeHopHeaders strips hop-by-hop headers in place, including those the
// Connection header names; TE survives only as "trailers".
func removeHopHeaders(h http.Header) {
	// One pass over the header (a handful of fields) rather than a
	// lookup per hop-by-hop name: this runs twice per request per proxy.
	var conn []string
	for k, vv := range h {
		if k != "Te" && hopHeader(k) {
			if k == "Connection" {
				conn = vv
			}
			delete(h, k)
		}
	}
	for _, v := range conn {
		for tok := range strings.SplitSeq(v, ",") {
			if tok = strings.TrimSpace(tok); tok != "" {
				delete(h, http.CanonicalHeaderKey(tok))
			}
		}
	}
	te, ok := h["Te"] // unless Connection named it
	if !ok {
		return
	}
	for _, v := range te {
		for tok := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "trailers") {
				h["Te"] = teTrailers
				return
			}
		}
	}
	delete(h, "Te")
}

var teTrailers = []string{"trailers"}

func appendForwardedFor(h http.Header, remoteAddr string) {
	ip, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		return
	}
	switch prior := h["X-Forwarded-For"]; len(prior) {
	case 0:
	case 1: // the usual case (one earlier hop): one concatenation
		h["X-Forwarded-For"] = []string{prior[0] + ", " + ip}
		return
	default:
		h["X-Forwarded-For"] = []string{strings.Join(prior, ", ") + ", " + ip}
		return
	}
	h["X-Forwarded-For"] = []string{ip}
}
