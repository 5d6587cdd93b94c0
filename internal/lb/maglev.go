package lb

import (
	"cmp"
	"slices"
)

// maglevSize is Envoy's default table size, a prime; larger sets get the
// next prime past 100 per endpoint, so that shares stay within ~1% and a
// removal disrupts little beyond the removed endpoint's own keys.
const maglevSize = 65537

// MaglevPicker is Maglev consistent hashing (Eisenbud et al., NSDI 2016;
// Envoy's MAGLEV): a lookup table of a prime size M where every endpoint
// fills slots along its own permutation of 0..M-1 in turn, so each owns
// M/n slots, nearly exactly, and a key goes to the owner of slot hash mod
// M: one step, no search. Removing an endpoint moves its keys and a small
// fraction of others. An endpoint it may not choose hands the key to the
// owner of the next slot. Built once per endpoint set.
type MaglevPicker struct {
	hashed
	table []uint32 // slot → index into the endpoint slice
}

func newMaglev(cfg Config, eps []*Endpoint) *MaglevPicker {
	p := &MaglevPicker{hashed: hashed{key: newKeyer(cfg.Hash), n: len(eps), s: newSampler(cfg.SlowStart)}}
	n := len(eps)
	if n == 0 {
		return p
	}
	m := uint64(maglevSize)
	if 100*n > maglevSize {
		m = nextPrime(uint64(100 * n))
	}
	// The fill order is by address, so every proxy builds the same table
	// whatever order its endpoints came in.
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return cmp.Compare(eps[a].addr, eps[b].addr) })
	offset, skip, next := make([]uint64, n), make([]uint64, n), make([]uint64, n)
	for i, e := range eps {
		h := hashString(e.addr)
		offset[i] = h % m
		skip[i] = mix(h^0xc2b2ae3d27d4eb4f)%(m-1) + 1
	}
	const empty = ^uint32(0)
	p.table = make([]uint32, m)
	for i := range p.table {
		p.table[i] = empty
	}
	for filled := uint64(0); ; {
		for _, i := range order {
			c := (offset[i] + next[i]*skip[i]) % m
			for p.table[c] != empty {
				next[i]++
				c = (offset[i] + next[i]*skip[i]) % m
			}
			p.table[c] = uint32(i)
			next[i]++
			if filled++; filled == m {
				return p
			}
		}
	}
}

// nextPrime returns the smallest prime >= n (n >= 2).
func nextPrime(n uint64) uint64 {
	for ; ; n++ {
		prime := n%2 != 0 || n == 2
		for d := uint64(3); prime && d*d <= n; d += 2 {
			prime = n%d != 0
		}
		if prime {
			return n
		}
	}
}

// Pick implements Picker.
func (p *MaglevPicker) Pick(r *Request, eps, tried []*Endpoint) (Call, bool) {
	return p.pick(p, r, eps, tried)
}

func (p *MaglevPicker) size() int { return len(p.table) }

func (p *MaglevPicker) at(pos int) int { return int(p.table[pos]) }

func (p *MaglevPicker) position(h uint64) int { return int(h % uint64(len(p.table))) }
