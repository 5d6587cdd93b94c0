package lb

import (
	"net/http"
	"strings"
)

// The hash reads its input a 64-bit word at a time (a byte at a time where
// a cookie or query value is unescaped while it is hashed, without a copy:
// both give the same sum) and ends with murmur3's finalizer. It is fixed,
// not seeded per process: every proxy must send a key to the same endpoint.
type hasher struct {
	h    uint64
	w    uint64 // the bytes of the word being filled, little-endian
	k    uint   // how many
	size uint64
}

const hashSeed = 0x9e3779b97f4a7c15

func newHasher() hasher { return hasher{h: hashSeed} }

func (h *hasher) absorb(w uint64) {
	h.h = (h.h ^ w) * 0xbf58476d1ce4e5b9
	h.h ^= h.h >> 31
}

func (h *hasher) add(c byte) {
	h.w |= uint64(c) << (8 * h.k)
	h.size++
	if h.k++; h.k == 8 {
		h.absorb(h.w)
		h.w, h.k = 0, 0
	}
}

func (h *hasher) addString(s string) {
	for h.k != 0 && len(s) > 0 {
		h.add(s[0])
		s = s[1:]
	}
	for len(s) >= 8 {
		h.absorb(uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
			uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56)
		h.size += 8
		s = s[8:]
	}
	for i := 0; i < len(s); i++ {
		h.add(s[i])
	}
}

func (h hasher) sum() uint64 {
	if h.k > 0 {
		h.absorb(h.w)
	}
	return mix(h.h ^ h.size)
}

// mix is murmur3's fmix64: every input bit flips each output bit with
// probability 1/2.
func mix(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

func hashString(s string) uint64 {
	h := newHasher()
	h.addString(s)
	return h.sum()
}

// keyer extracts and hashes a request's key.
type keyer struct {
	kind HashKind
	name string // header: canonical; cookie, query: as given
}

func newKeyer(k HashKey) keyer {
	if k.Kind == HashHeader {
		return keyer{kind: k.Kind, name: http.CanonicalHeaderKey(k.Name)}
	}
	return keyer{kind: k.Kind, name: k.Name}
}

// hash returns the hash of r's key, or ok=false if r has none.
func (k *keyer) hash(r *Request) (uint64, bool) {
	if r == nil {
		return 0, false
	}
	switch k.kind {
	case HashHeader:
		if vv := r.Header[k.name]; len(vv) > 0 {
			return hashString(vv[0]), true
		}
	case HashCookie:
		if v, ok := cookieValue(r.Header["Cookie"], k.name); ok {
			return hashString(v), true
		}
	case HashQuery:
		return queryHash(r.RawQuery, k.name)
	case HashSource:
		if r.Source != "" {
			return hashString(r.Source), true
		}
	}
	return 0, false
}

// cookieValue finds cookie name in Cookie header lines (RFC 6265 §5.4:
// "a=1; b=2"), without allocating: every piece is a substring of a line.
// A quoted value loses its quotes, as net/http's parser does.
func cookieValue(lines []string, name string) (string, bool) {
	for _, line := range lines {
		for len(line) > 0 {
			var part string
			part, line, _ = strings.Cut(line, ";")
			// No "=" is a name with an empty value, as net/http reads it.
			k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
			if strings.TrimSpace(k) != name {
				continue
			}
			if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
				v = v[1 : len(v)-1]
			}
			return v, true
		}
	}
	return "", false
}

// queryHash hashes the first value of parameter name in raw (a URL's
// escaped query), unescaping names and values on the fly as url.ParseQuery
// would ("+" is a space, %XX a byte; a malformed escape stands for itself).
func queryHash(raw, name string) (uint64, bool) {
	for len(raw) > 0 {
		var part string
		part, raw, _ = strings.Cut(raw, "&")
		k, v, _ := strings.Cut(part, "=")
		if !unescapedEqual(k, name) {
			continue
		}
		h := newHasher()
		for i := 0; i < len(v); i++ {
			c, w := unescapeAt(v, i)
			h.add(c)
			i += w - 1
		}
		return h.sum(), true
	}
	return 0, false
}

// unescapedEqual reports whether raw, query-unescaped, equals want.
func unescapedEqual(raw, want string) bool {
	j := 0
	for i := 0; i < len(raw); i++ {
		c, w := unescapeAt(raw, i)
		if j >= len(want) || want[j] != c {
			return false
		}
		i += w - 1
		j++
	}
	return j == len(want)
}

// unescapeAt returns the byte that raw[i:] starts with once unescaped, and
// how many bytes of raw it took.
func unescapeAt(raw string, i int) (byte, int) {
	switch c := raw[i]; c {
	case '+':
		return ' ', 1
	case '%':
		if i+2 < len(raw) && isHex(raw[i+1]) && isHex(raw[i+2]) {
			return unhex(raw[i+1])<<4 | unhex(raw[i+2]), 3
		}
		return c, 1
	default:
		return c, 1
	}
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}

// maxWalk bounds how far a hashing picker walks its ring or table past
// endpoints it may not choose (tried, ejected, or declining a key under slow
// start) before it counts what is left.
const maxWalk = 64

// hashed is what the ring-hash and Maglev pickers share: the key, the
// endpoint count they were built for, random balancing for requests without
// a key, and the walk past endpoints they may not choose.
type hashed struct {
	key keyer
	n   int
	s   sampler
}

// order is a hashing picker's ring or table: positions, each naming an
// endpoint (an index into the slice it was built from).
type order interface {
	size() int
	position(h uint64) int // where key hash h lands
	at(pos int) int        // the endpoint at pos
}

// pick is Pick for a hashing picker over o.
func (p *hashed) pick(o order, r *Request, eps, tried []*Endpoint) (Call, bool) {
	g := newGate(r, eps, tried)
	var e *Endpoint
	if h, ok := p.key.hash(r); ok && len(eps) == p.n {
		e = p.choose(o, eps, &g, h)
	} else {
		// No key, or not the endpoints o was built from.
		e = p.s.first(eps, &g)
	}
	if e == nil {
		return Call{}, false
	}
	e.inflight.Add(1)
	return Call{ep: e}, true
}

// choose returns the endpoint for key hash h: the first along o from h's
// position that g lets through, entering panic mode when nothing else is
// left; nil if nothing is.
func (p *hashed) choose(o order, eps []*Endpoint, g *gate, h uint64) *Endpoint {
	if e := p.walk(o, eps, g, h); e != nil {
		return e
	}
	wasPanicked := g.panicked
	m := g.count(eps)
	if m == 0 {
		return nil
	}
	if g.panicked && !wasPanicked {
		// Every endpoint is ejected or tried: the walk may now take an
		// ejected one.
		if e := p.walk(o, eps, g, h); e != nil {
			return e
		}
	}
	// A long run of endpoints it may not choose: still one per key.
	return g.nth(eps, int(h%uint64(m)))
}

// walk returns the first endpoint along o from h's position that g lets
// through and that takes the key, looking at most maxWalk positions.
func (p *hashed) walk(o order, eps []*Endpoint, g *gate, h uint64) *Endpoint {
	n := o.size()
	if n == 0 {
		return nil
	}
	u := keyShare(h)
	pos := o.position(h)
	for range min(n, maxWalk) {
		if e := eps[o.at(pos)]; g.ok(e) && p.admitKey(e, g, u) {
			return e
		}
		if pos++; pos == n {
			pos = 0
		}
	}
	return nil
}

// keyShare maps a key's hash to [0, 1), independently of its position.
func keyShare(h uint64) float64 {
	return float64(mix(h^hashSeed)>>40) / (1 << 24)
}

// admitKey is slow start for hashing: a young endpoint takes the keys whose
// share is below its weight and passes the others on along the ring, so its
// keys move to it gradually and, once moved, stay.
func (p *hashed) admitKey(e *Endpoint, g *gate, u float64) bool {
	return p.s.window <= 0 || u < p.s.share(e, g)
}
