// Package stats keeps windowed summaries of a proxy's requests — counts,
// 5xx failures and a mergeable latency sketch per series, and the busiest
// paths per service — cheaply on the request path, turns them into
// reports for the control plane, and on the control plane keeps each
// proxy's latest windows and merges them across replicas for `trellis stat`
// and `trellis top`.
package stats

import (
	"fmt"
	"math/bits"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// The latency sketch is log-linear over microseconds: values below
// linearBuckets µs each get their own bucket, then every power of two is
// split into subBuckets equal parts. A bucket's midpoint is then within
// 1/(2·subBuckets) = 6.25% of any value in it (0.5 µs below 16 µs), so a
// quantile read from the sketch is within that of the exact one, and two
// sketches merge exactly by adding counts (no averaging of percentiles).
const (
	subBits       = 3
	subBuckets    = 1 << subBits // 8 per power of two
	linearBuckets = 2 * subBuckets
	// maxExp is the highest power of two with buckets: 2^31 µs ≈ 36 min;
	// longer requests count in the last bucket.
	maxExp = 30
	// NumBuckets is the size of a sketch.
	NumBuckets = linearBuckets + (maxExp-subBits)*subBuckets
)

// RelativeError bounds |estimate − exact| / exact of a quantile read from a
// sketch, for values of at least linearBuckets µs (below, 0.5 µs).
const RelativeError = 1.0 / (2 * subBuckets)

// bucketOf is the bucket of a duration.
func bucketOf(d time.Duration) int {
	if d <= 0 {
		return 0
	}
	u := uint64(d / time.Microsecond)
	if u < linearBuckets {
		return int(u)
	}
	e := bits.Len64(u) - 1 // ≥ subBits+1
	if e > maxExp {
		return NumBuckets - 1
	}
	m := int(u>>(e-subBits)) & (subBuckets - 1)
	return linearBuckets + (e-subBits-1)*subBuckets + m
}

// bucketBounds is bucket i's range [lo, hi) in microseconds.
func bucketBounds(i int) (lo, hi uint64) {
	if i < linearBuckets {
		return uint64(i), uint64(i) + 1
	}
	j := i - linearBuckets
	e := j/subBuckets + subBits + 1
	m := uint64(j % subBuckets)
	w := uint64(1) << (e - subBits)
	lo = (subBuckets + m) * w
	return lo, lo + w
}

// bucketValue is the estimate a bucket stands for: its midpoint.
func bucketValue(i int) time.Duration {
	lo, hi := bucketBounds(i)
	return time.Duration(lo+hi) * time.Microsecond / 2
}

// Sketch is a dense latency sketch, for merging and reading quantiles off
// the request path (the recording side keeps atomic counters per window).
type Sketch struct {
	Counts [NumBuckets]uint64
}

// Observe adds one duration.
func (s *Sketch) Observe(d time.Duration) { s.Counts[bucketOf(d)]++ }

// Merge adds o's counts to s.
func (s *Sketch) Merge(o *Sketch) {
	for i, n := range o.Counts {
		s.Counts[i] += n
	}
}

// Total is the number of observations.
func (s *Sketch) Total() uint64 {
	var t uint64
	for _, n := range s.Counts {
		t += n
	}
	return t
}

// Quantile estimates the q-quantile (nearest rank: the smallest value with
// at least q of the observations at or below it); 0 when empty.
func (s *Sketch) Quantile(q float64) time.Duration {
	total := s.Total()
	if total == 0 {
		return 0
	}
	q = min(max(q, 0), 1)
	rank := uint64(q * float64(total))
	if float64(rank) < q*float64(total) || rank == 0 {
		rank++ // ceil, and at least the first observation
	}
	var cum uint64
	for i, n := range s.Counts {
		cum += n
		if cum >= rank {
			return bucketValue(i)
		}
	}
	return bucketValue(NumBuckets - 1)
}

// Proto is s, sparse.
func (s *Sketch) Proto() *meshv1.LatencySketch {
	pb := &meshv1.LatencySketch{}
	for i, n := range s.Counts {
		if n > 0 {
			pb.Index = append(pb.Index, uint32(i))
			pb.Counts = append(pb.Counts, n)
		}
	}
	return pb
}

// MergeProto adds a reported sketch to s after checking it: as many
// counts as indexes, indexes ascending and below NumBuckets.
func (s *Sketch) MergeProto(pb *meshv1.LatencySketch) error {
	idx, cnt := pb.GetIndex(), pb.GetCounts()
	if len(idx) != len(cnt) {
		return fmt.Errorf("index and counts: %d and %d values, want as many", len(idx), len(cnt))
	}
	for k, i := range idx {
		if i >= NumBuckets {
			return fmt.Errorf("index[%d]: %d is not a bucket (0..%d)", k, i, NumBuckets-1)
		}
		if k > 0 && i <= idx[k-1] {
			return fmt.Errorf("index[%d]: %d does not ascend", k, i)
		}
	}
	for k, i := range idx {
		s.Counts[i] += cnt[k]
	}
	return nil
}
