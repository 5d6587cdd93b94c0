package accesslog

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"
)

func sampleEntry() *Entry {
	return &Entry{
		Start: time.Date(2026, 12, 1, 12, 0, 0, 123456789, time.UTC), Direction: "outbound", Method: "GET",
		Path: "/a\"b\\c\n<x>", Authority: "orders", Protocol: "HTTP/1.1", Status: 200, GRPCStatus: "0", Flags: "-",
		BytesIn: 3, BytesOut: 17, Duration: 1500 * time.Microsecond, Upstream: "127.0.0.1:1",
		SourceIdentity: "spiffe://trellis.local/ns/default/sa/frontend", DestinationService: "orders.default",
		Route: "r", TraceID: "4bf92f3577b34da6a3ce929d0e0e4736",
	}
}

func TestAppendJSONFields(t *testing.T) {
	b := AppendJSON(nil, sampleEntry())
	if !bytes.HasSuffix(b, []byte("}\n")) || bytes.Count(b, []byte("\n")) != 1 {
		t.Fatalf("not one line: %q", b)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%q: %v", b, err)
	}
	want := map[string]any{
		"start_time": "2026-12-01T12:00:00.123456789Z", "direction": "outbound", "method": "GET", "path": "/a\"b\\c\n<x>",
		"authority": "orders", "protocol": "HTTP/1.1", "status": 200.0, "grpc_status": "0", "response_flags": "-",
		"bytes_received": 3.0, "bytes_sent": 17.0, "duration_ms": 1.5, "upstream": "127.0.0.1:1",
		"source_identity": "spiffe://trellis.local/ns/default/sa/frontend", "destination_service": "orders.default",
		"route": "r", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
	}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %#v, want %#v", k, m[k], v)
		}
	}
	if len(m) != len(want) {
		t.Errorf("%d fields, want %d: %v", len(m), len(want), m)
	}
	e := sampleEntry()
	e.GRPCStatus = ""
	if bytes.Contains(AppendJSON(nil, e), []byte("grpc_status")) {
		t.Error("grpc_status written for a request that is not gRPC")
	}
}

func TestAppendJSONAllocatesNothing(t *testing.T) {
	e := sampleEntry()
	buf := make([]byte, 0, 1024)
	if n := testing.AllocsPerRun(100, func() { buf = AppendJSON(buf[:0], e) }); n != 0 {
		t.Errorf("%v allocations per line", n)
	}
}

func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "plain", "q\"b\\", "\x00\x1f\x7f", "\xff\xfe", "é漢\u2028\u2029", "<&>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b := appendString(nil, s)
		var got string
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("%q → %q: %v", s, b, err)
		}
		if utf8.ValidString(s) && got != s {
			t.Fatalf("%q → %q → %q", s, b, got)
		}
		if bytes.ContainsAny(b, "\n\r<>&") {
			t.Fatalf("%q → %q: raw newline or HTML character", s, b)
		}
	})
}

// blockingSink blocks every write until released, telling entered when
// the first write starts.
type blockingSink struct {
	release, entered chan struct{}
	once             sync.Once
	mu               sync.Mutex
	buf              bytes.Buffer
}

func (s *blockingSink) Write(p []byte) (int, error) {
	s.once.Do(func() { close(s.entered) })
	<-s.release
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *blockingSink) Close() error { return nil }

type countMetrics struct{ logged, dropped atomic.Int64 }

func (m *countMetrics) Logged()  { m.logged.Add(1) }
func (m *countMetrics) Dropped() { m.dropped.Add(1) }

// TestFullQueueDropsAndCounts: a sink that does not take lines never
// blocks Log; lines beyond the queue are dropped and counted, the rest
// written once the sink moves.
func TestFullQueueDropsAndCounts(t *testing.T) {
	sink := &blockingSink{release: make(chan struct{}), entered: make(chan struct{})}
	m := &countMetrics{}
	l := New(sink, Options{Queue: 4, Metrics: m})
	l.Log(sampleEntry())
	<-sink.entered // the writer holds that line, stuck in the sink
	done := make(chan struct{})
	go func() {
		for range 100 {
			l.Log(sampleEntry())
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Log blocked on a stuck sink")
	}
	close(sink.release)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	lines := strings.Count(sink.buf.String(), "\n")
	if d := m.dropped.Load(); d != 96 || lines != 5 || m.logged.Load() != 5 {
		t.Errorf("written %d, logged %d, dropped %d; want 5 written (the one in the sink and a queue of 4), 96 dropped", lines, m.logged.Load(), d)
	}
}

func TestCloseWritesQueuedLines(t *testing.T) {
	var buf syncBuffer
	l := New(&buf, Options{})
	for range 50 {
		l.Log(sampleEntry())
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l.Log(sampleEntry()) // after Close: dropped quietly, no panic
	if n := strings.Count(buf.String(), "\n"); n != 50 {
		t.Errorf("%d lines after Close, want 50", n)
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}
func (b *syncBuffer) Close() error { return nil }
func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestRotation: the file never grows past its bound, whole lines move to
// .1, .2, and only MaxFiles old files are kept.
func TestRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.log")
	line := AppendJSON(nil, sampleEntry())
	f, err := OpenFile(path, int64(3*len(line)), 2)
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if _, err := f.Write(line); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, name := range []string{path, path + ".1", path + ".2"} {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > 3*len(line) || len(b)%len(line) != 0 {
			t.Errorf("%s: %d bytes, want whole lines within %d", name, len(b), 3*len(line))
		}
		total += len(b) / len(line)
	}
	if total != 3+3+1 { // 10 lines: 3 each in .2 (.3 was removed) and .1, 1 in the live file
		t.Errorf("%d lines kept, want 7", total)
	}
	if _, err := os.Stat(path + ".3"); !os.IsNotExist(err) {
		t.Errorf("%s.3 exists; MaxFiles is 2", path)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
	if _, err := f.Write(line); err != ErrClosed {
		t.Errorf("write after close: %v", err)
	}
}
