package lb

import (
	"cmp"
	"slices"
)

// Ring sizing: pointsPer points per endpoint, as Ketama (memcached's
// consistent hashing) has, whatever the number of endpoints: a count that
// changed with the set would move keys between endpoints that stayed.
// Shares are then within ~10% of each other. Past maxRing points in all
// (6,553 endpoints) each endpoint gets fewer.
const (
	pointsPer = 160
	maxRing   = 1 << 20
)

type ringPoint struct {
	hash uint64
	idx  uint32 // into the endpoint slice the ring was built from
}

// RingHashPicker is consistent hashing on a ring (Karger et al., Envoy's
// RING_HASH): each endpoint owns points on a 64-bit ring placed by the hash
// of its address, and a key goes to the owner of the first point at or after
// its hash. Removing one of n endpoints moves only its own keys (~1/n); the
// others stay. An endpoint it may not choose (tried, ejected) hands the key
// to the next distinct owner along the ring. Built once per endpoint set.
type RingHashPicker struct {
	hashed
	ring []ringPoint
}

func newRingHash(cfg Config, eps []*Endpoint) *RingHashPicker {
	p := &RingHashPicker{hashed: hashed{key: newKeyer(cfg.Hash), n: len(eps), s: newSampler(cfg.SlowStart)}}
	if len(eps) == 0 {
		return p
	}
	per := min(pointsPer, max(maxRing/len(eps), 1))
	p.ring = make([]ringPoint, 0, per*len(eps))
	for i, e := range eps {
		h := hashString(e.addr)
		for v := range per {
			p.ring = append(p.ring, ringPoint{hash: mix(h + uint64(v)*hashSeed), idx: uint32(i)})
		}
	}
	// Ties (vanishingly rare) go by address, so every proxy builds the
	// same ring whatever order its endpoints came in.
	slices.SortFunc(p.ring, func(a, b ringPoint) int {
		if c := cmp.Compare(a.hash, b.hash); c != 0 {
			return c
		}
		return cmp.Compare(eps[a.idx].addr, eps[b.idx].addr)
	})
	return p
}

// Pick implements Picker.
func (p *RingHashPicker) Pick(r *Request, eps, tried []*Endpoint) (Call, bool) {
	return p.pick(p, r, eps, tried)
}

func (p *RingHashPicker) size() int { return len(p.ring) }

func (p *RingHashPicker) at(pos int) int { return int(p.ring[pos].idx) }

// position returns the index of the first point at or after h, wrapping.
func (p *RingHashPicker) position(h uint64) int {
	lo, hi := 0, len(p.ring)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if p.ring[m].hash < h {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == len(p.ring) {
		return 0
	}
	return lo
}
