package store

import (
	"context"
	"log/slog"
	"sync"
	"testing"

	"go.uber.org/zap"

	"trellis.dev/trellis/internal/store/etcdtest"
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

// TestEtcdWatchStartQuiet: starting watches, at the next revision or at a
// future one as the view does after a List, logs no client warning.
func TestEtcdWatchStartQuiet(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	srv := etcdtest.Start(t, etcdtest.Options{})
	rec := &recorder{}
	s, err := NewEtcd(EtcdOptions{Endpoints: []string{srv.Endpoint}, Logger: slog.New(rec)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rev, err := s.Txn(t.Context(), Put("/q/a", nil, Absent))
	if err != nil {
		t.Fatal(err)
	}
	for _, from := range []int64{0, rev, rev + 1, rev + 5} {
		if _, err := s.Watch(t.Context(), "/q/", from); err != nil {
			t.Fatalf("Watch from %d: %v", from, err)
		}
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, r := range rec.recs {
		if r.Level >= slog.LevelWarn {
			t.Errorf("logged %v %q starting watches", r.Level, r.Message)
		}
	}
}
