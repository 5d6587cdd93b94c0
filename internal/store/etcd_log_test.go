package store

import (
	"context"
	"log/slog"
	"sync"
	"testing"

	"go.uber.org/zap"
)

type recorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec)
	return nil
}
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recorder) WithGroup(string) slog.Handler      { return r }

// TestZapSlog: the etcd client's zap lines reach slog, its info chatter as
// debug, warnings as warnings, with their fields.
func TestZapSlog(t *testing.T) {
	rec := &recorder{}
	z := newZapSlog(slog.New(rec)).With(zap.String("endpoint", "http://e:2379"))
	z.Info("balancer update")
	z.Warn("retrying of unary invoker failed", zap.Int("attempt", 3))
	if len(rec.recs) != 2 {
		t.Fatalf("%d records, want 2", len(rec.recs))
	}
	want := []struct {
		level slog.Level
		msg   string
		attrs int
	}{{slog.LevelDebug, "etcd client: balancer update", 1}, {slog.LevelWarn, "etcd client: retrying of unary invoker failed", 2}}
	for i, w := range want {
		r := rec.recs[i]
		if r.Level != w.level || r.Message != w.msg || r.NumAttrs() != w.attrs {
			t.Errorf("record %d = %v %q (%d attrs), want %v %q (%d attrs)", i, r.Level, r.Message, r.NumAttrs(), w.level, w.msg, w.attrs)
		}
	}
	// A disabled level costs nothing: the core says so before formatting.
	quiet := newZapSlog(slog.New(slog.NewTextHandler(nil, &slog.HandlerOptions{Level: slog.LevelInfo})))
	if quiet.Core().Enabled(zap.InfoLevel) || !quiet.Core().Enabled(zap.WarnLevel) {
		t.Fatal("zap info should follow slog debug, zap warn slog warn")
	}
}
