package ratelimit

import (
	"strconv"
	"testing"
	"time"
)

// The clock advances 1 µs per decision against a 500/s limit, so most
// decisions are refusals and some admissions: both paths run.

func BenchmarkTokenBucket(b *testing.B) {
	tb := NewTokenBucket(perSecond(500, 100))
	b.ReportAllocs()
	var now int64
	for b.Loop() {
		now += 1000
		tb.Decide(now)
	}
}

func BenchmarkLeakyBucket(b *testing.B) {
	lb := NewLeakyBucket(perSecond(500, 100))
	b.ReportAllocs()
	var now int64
	for b.Loop() {
		now += 1000
		lb.Decide(now)
	}
}

func BenchmarkTokenBucketParallel(b *testing.B) {
	tb := NewTokenBucket(perSecond(500, 100))
	epoch := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			tb.Decide(int64(time.Since(epoch)))
		}
	})
}

func BenchmarkLeakyBucketParallel(b *testing.B) {
	lb := NewLeakyBucket(perSecond(500, 100))
	epoch := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			lb.Decide(int64(time.Since(epoch)))
		}
	})
}

// BenchmarkKeyedTokenBucket: a per-identity policy over 100 known callers.
func BenchmarkKeyedTokenBucket(b *testing.B) {
	p := NewPolicy(Spec{Limit: perSecond(500, 100), Scope: ScopeIdentity})
	ids := make([]string, 100)
	for i := range ids {
		ids[i] = "spiffe://trellis.local/ns/default/sa/caller-" + strconv.Itoa(i)
		p.Decide(ids[i], "", 0)
	}
	b.ReportAllocs()
	var now int64
	i := 0
	for b.Loop() {
		now += 1000
		i++
		p.Decide(ids[i%len(ids)], "", now)
	}
}
