package stats

import (
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// exactQuantile is the nearest-rank q-quantile of sorted values.
func exactQuantile(sorted []time.Duration, q float64) time.Duration {
	rank := int(math.Ceil(q * float64(len(sorted))))
	return sorted[max(rank, 1)-1]
}

func TestSketchQuantileErrorBound(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	dists := map[string]func() time.Duration{
		"lognormal 5ms": func() time.Duration {
			return time.Duration(math.Exp(r.NormFloat64()*0.8) * float64(5*time.Millisecond))
		},
		"uniform 0-2s": func() time.Duration { return time.Duration(r.Int64N(int64(2 * time.Second))) },
		"bimodal": func() time.Duration {
			return []time.Duration{800 * time.Microsecond, 150 * time.Millisecond}[r.IntN(2)] + time.Duration(r.IntN(1000))*time.Microsecond
		},
		"microseconds": func() time.Duration { return time.Duration(r.IntN(40_000)) },
	}
	for name, gen := range dists {
		t.Run(name, func(t *testing.T) {
			var s Sketch
			vals := make([]time.Duration, 20_000)
			for i := range vals {
				vals[i] = gen()
				s.Observe(vals[i])
			}
			slices.Sort(vals)
			for _, q := range []float64{0.01, 0.5, 0.9, 0.95, 0.99, 0.999, 1} {
				exact, got := exactQuantile(vals, q), s.Quantile(q)
				// The bound: 6.25% of the value, or 0.5 µs (+ the µs truncation) below 16 µs.
				tol := max(RelativeError*float64(exact), float64(time.Microsecond))
				if diff := math.Abs(float64(got - exact)); diff > tol {
					t.Errorf("q%.3f: sketch %v, exact %v: off by %v, bound %v", q, got, exact, time.Duration(diff), time.Duration(tol))
				}
			}
		})
	}
}

func TestBucketsCoverEveryValue(t *testing.T) {
	// Each bucket's bounds contain exactly the values bucketOf maps to it,
	// and buckets tile the range without gaps.
	var prevHi uint64
	for i := range NumBuckets {
		lo, hi := bucketBounds(i)
		if lo != prevHi {
			t.Fatalf("bucket %d starts at %d µs, previous ended at %d", i, lo, prevHi)
		}
		prevHi = hi
		for _, u := range []uint64{lo, hi - 1, (lo + hi) / 2} {
			if got := bucketOf(time.Duration(u) * time.Microsecond); got != i {
				t.Fatalf("bucketOf(%d µs) = %d, want %d [%d, %d)", u, got, i, lo, hi)
			}
		}
	}
	if got := bucketOf(10 * time.Hour); got != NumBuckets-1 {
		t.Errorf("10h: bucket %d, want the last (%d)", got, NumBuckets-1)
	}
	if got := bucketOf(-time.Second); got != 0 {
		t.Errorf("negative: bucket %d, want 0", got)
	}
}

func randomSketch(r *rand.Rand, n int) (Sketch, []time.Duration) {
	var s Sketch
	vals := make([]time.Duration, n)
	for i := range vals {
		vals[i] = time.Duration(r.ExpFloat64() * float64(20*time.Millisecond))
		s.Observe(vals[i])
	}
	return s, vals
}

func TestSketchMergeAssociativeAndExact(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	a, va := randomSketch(r, 1000)
	b, vb := randomSketch(r, 3000)
	c, vc := randomSketch(r, 500)

	left := a // (a+b)+c
	left.Merge(&b)
	left.Merge(&c)
	bc := b // a+(b+c)
	bc.Merge(&c)
	right := a
	right.Merge(&bc)
	if left != right {
		t.Fatal("(a+b)+c != a+(b+c)")
	}
	// Merging is the sketch of the union: no averaging of percentiles.
	var union Sketch
	for _, v := range slices.Concat(va, vb, vc) {
		union.Observe(v)
	}
	if left != union {
		t.Fatal("merged sketch differs from the sketch of all values")
	}
	if left.Total() != 4500 {
		t.Errorf("total %d, want 4500", left.Total())
	}
}

func TestSketchProtoRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	s, _ := randomSketch(r, 2000)
	var back Sketch
	if err := back.MergeProto(s.Proto()); err != nil {
		t.Fatal(err)
	}
	if back != s {
		t.Fatal("round trip changed the sketch")
	}
}

func TestSketchMergeProtoRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		pb   *meshv1.LatencySketch
		want string
	}{
		{"lengths", &meshv1.LatencySketch{Index: []uint32{1, 2}, Counts: []uint64{1}}, "2 and 1 values"},
		{"range", &meshv1.LatencySketch{Index: []uint32{NumBuckets}, Counts: []uint64{1}}, "is not a bucket"},
		{"order", &meshv1.LatencySketch{Index: []uint32{5, 5}, Counts: []uint64{1, 1}}, "does not ascend"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s Sketch
			err := s.MergeProto(tc.pb)
			if err == nil || !contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if s.Total() != 0 {
				t.Error("a refused sketch was partly merged")
			}
		})
	}
}

func TestQuantileEmptyAndSingle(t *testing.T) {
	var s Sketch
	if s.Quantile(0.99) != 0 {
		t.Error("empty sketch: want 0")
	}
	s.Observe(3 * time.Millisecond)
	for _, q := range []float64{0, 0.5, 1} {
		if got := s.Quantile(q); math.Abs(float64(got-3*time.Millisecond)) > RelativeError*float64(3*time.Millisecond) {
			t.Errorf("q%v = %v, want ~3ms", q, got)
		}
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
