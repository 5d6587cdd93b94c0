package proxy

import (
	"strings"
	"testing"
)

var framingCases = []struct {
	name string
	raw  string
	bad  bool
}{
	{"get", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", false},
	{"pipelined gets", "GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n", false},
	{"content-length body then get", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nHost: a\r\n\r\n", false},
	{"chunked with extension and trailer", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-T: v\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", false},
	{"chunked upper case", "POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: Chunked \r\n\r\n0\r\n\r\n", false},
	{"body that looks like CL+TE", "POST / HTTP/1.1\r\nContent-Length: 44\r\n\r\nContent-Length: 1\r\nTransfer-Encoding: chunked", false},
	{"connect then bytes", "CONNECT a:82 HTTP/1.1\r\nHost: a:82\r\n\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\n", false},
	{"upgrade then bytes", "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x00 x\r\n\r\n", false},
	{"h2c preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00", false},
	{"CL+TE", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", true},
	{"TE+CL", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n", true},
	{"CL+TE pipelined second", "GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", true},
	{"double CL same value", "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", true},
	{"double CL", "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy", true},
	{"CL not a number", "POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", true},
	{"CL negative", "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", true},
	{"obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n 2\r\n\r\n", true},
	{"obs-fold tab", "GET / HTTP/1.1\r\nX-A: 1\r\n\tTransfer-Encoding: chunked\r\n\r\n", true},
	{"TE not chunked", "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", true},
	{"TE on HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", true},
	{"chunk size not hex", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", true},
	{"chunk size with junk", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5z\r\nhello\r\n0\r\n\r\n", true},
	{"chunk size empty", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\r\n", true},
	{"chunk size too long", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n", true},
	{"chunk size negative", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\n", true},
	{"chunk size bare LF", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", true},
	{"chunk data too long", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n", true},
	{"smuggled after chunked", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", true},
}

func scanAll(raw string, step int) bool {
	f := newFraming()
	for i := 0; i < len(raw); i += step {
		f.scan([]byte(raw[i:min(i+step, len(raw))]))
	}
	return f.bad
}

func TestFraming(t *testing.T) {
	for _, tc := range framingCases {
		for _, step := range []int{len(tc.raw), 1, 3, 7} {
			if got := scanAll(tc.raw, max(step, 1)); got != tc.bad {
				t.Errorf("%s (reads of %d bytes): bad = %v, want %v", tc.name, step, got, tc.bad)
			}
		}
	}
}

// FuzzFraming: the scanner's verdict never depends on how reads split the
// stream, and it never panics.
func FuzzFraming(f *testing.F) {
	for _, tc := range framingCases {
		f.Add(tc.raw, uint8(3))
	}
	f.Fuzz(func(t *testing.T, raw string, step uint8) {
		whole := scanAll(raw, max(len(raw), 1))
		if split := scanAll(raw, int(step%16)+1); split != whole {
			t.Fatalf("%q: whole read bad=%v, reads of %d bad=%v", raw, whole, step%16+1, split)
		}
		if strings.HasPrefix(raw, "GET / HTTP/1.1\r\n\r\n") && scanAll("GET / HTTP/1.1\r\n\r\n", 1) {
			t.Fatal("plain GET is bad")
		}
	})
}

func BenchmarkFraming(b *testing.B) {
	req := []byte("POST /orders HTTP/1.1\r\nHost: orders\r\nUser-Agent: bench\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n{\"id\": 12345678}")
	f := newFraming()
	b.ReportAllocs()
	b.SetBytes(int64(len(req)))
	for b.Loop() {
		f.scan(req)
	}
	if f.bad {
		b.Fatal("bad")
	}
}
