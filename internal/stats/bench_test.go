package stats

import (
	"testing"
	"time"
)

// The hot-path calls: go test -bench . -benchmem -benchtime 200000x ./internal/stats/
func BenchmarkCellRecord(b *testing.B) {
	rec := NewRecorder()
	c := rec.Cell(ordersIn)
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c.Record(now, 200, 3*time.Millisecond)
		}
	})
}

func BenchmarkPathsRecord(b *testing.B) {
	p := NewRecorder().Paths("orders.default")
	paths := []string{"/api/orders", "/api/cart", "/api/items/1234", "/healthz"}
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			p.Record(now, paths[i%len(paths)], 200, 3*time.Millisecond)
			i++
		}
	})
}
