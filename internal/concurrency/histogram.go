package concurrency

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// The controller needs a percentile of each window's latencies, recorded
// from every request's goroutine without a lock. histogram is cumulative
// counts in log-linear buckets (16 per power of two: a value is known to
// within 1/16, 6%); the controller copies it at each window's end and
// subtracts the previous copy, so nothing is ever reset under a writer.

const (
	subBits    = 4
	subBuckets = 1 << subBits
	// maxExp bounds the range at 2^maxExp ns (~18 min); longer is clamped.
	maxExp     = 40
	numBuckets = (maxExp-subBits+1)*subBuckets + subBuckets
)

type histogram struct {
	b [numBuckets]atomic.Uint64
}

type counts struct {
	b     [numBuckets]uint64
	total uint64
}

// bucket maps ns to its bucket: exact below 16 ns, then 16 sub-buckets per
// power of two.
func bucket(ns uint64) int {
	if ns < subBuckets {
		return int(ns)
	}
	exp := bits.Len64(ns) - 1
	if exp > maxExp {
		return numBuckets - 1
	}
	sub := (ns >> (exp - subBits)) & (subBuckets - 1)
	return (exp-subBits+1)*subBuckets + int(sub)
}

// lowerBound is the smallest value of bucket i.
func lowerBound(i int) uint64 {
	if i < subBuckets {
		return uint64(i)
	}
	exp := i/subBuckets + subBits - 1
	sub := uint64(i % subBuckets)
	return (subBuckets + sub) << (exp - subBits)
}

// value is the middle of bucket i: what a sample in it stands for.
func value(i int) time.Duration {
	lo := lowerBound(i)
	if i+1 >= numBuckets {
		return time.Duration(lo)
	}
	return time.Duration(lo + (lowerBound(i+1)-lo)/2)
}

func (h *histogram) record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.b[bucket(uint64(d))].Add(1)
}

func (h *histogram) load(c *counts) {
	c.total = 0
	for i := range h.b {
		c.b[i] = h.b[i].Load()
		c.total += c.b[i]
	}
}

// minus returns c − prev, bucket by bucket.
func (c *counts) minus(prev *counts) *counts {
	var w counts
	for i := range c.b {
		w.b[i] = c.b[i] - prev.b[i]
		w.total += w.b[i]
	}
	return &w
}

// percentile returns the value below which a fraction p of the samples lie
// (nearest rank); 0 for no samples.
func (c *counts) percentile(p float64) time.Duration {
	if c.total == 0 {
		return 0
	}
	rank := uint64(p*float64(c.total) + 0.999999)
	rank = min(max(rank, 1), c.total)
	var seen uint64
	for i, n := range c.b {
		seen += n
		if seen >= rank {
			return value(i)
		}
	}
	return value(numBuckets - 1)
}
