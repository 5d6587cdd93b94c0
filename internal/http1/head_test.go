package http1

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"
)

func parse(t *testing.T, s string) (*RequestHead, int, error) {
	t.Helper()
	h := new(RequestHead)
	n, err := ParseRequest([]byte(s), Limits{}, h)
	return h, n, err
}

func TestParseRequestAccepts(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		check    func(*RequestHead) bool
	}{
		{"origin form", "GET /a/b?c=d&e[]=f HTTP/1.1\r\nHost: orders\r\nUser-Agent: x\r\n\r\n", func(h *RequestHead) bool {
			return string(h.Method) == "GET" && string(h.Target) == "/a/b?c=d&e[]=f" && string(h.Host) == "orders" &&
				h.Minor == 1 && len(h.Fields) == 2 && h.ContentLength == -1 && !h.Chunked && !h.Close
		}},
		{"absolute form", "GET http://orders.default:8080/x HTTP/1.1\r\nHost: orders.default:8080\r\n\r\n", func(h *RequestHead) bool {
			return string(h.Target) == "http://orders.default:8080/x"
		}},
		{"connect", "CONNECT db.default:5432 HTTP/1.1\r\nHost: db.default:5432\r\n\r\n", func(h *RequestHead) bool {
			return string(h.Method) == "CONNECT" && string(h.Target) == "db.default:5432"
		}},
		{"options star", "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", nil},
		// RFC 9112 §3.2.2: the target's authority wins, Host is ignored.
		{"absolute form, other Host", "GET http://a/x HTTP/1.1\r\nHost: b\r\n\r\n", func(h *RequestHead) bool { return string(h.Host) == "a" }},
		// RFC 9110 §2.5: a later 1.x is served as 1.1.
		{"http/1.2 as 1.1", "GET / HTTP/1.2\r\nHost: h\r\n\r\n", func(h *RequestHead) bool { return h.Minor == 1 }},
		{"content length", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n\r\n", func(h *RequestHead) bool { return h.ContentLength == 12 }},
		{"chunked", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n", func(h *RequestHead) bool { return h.Chunked && h.ContentLength == -1 }},
		{"ows trimmed", "GET / HTTP/1.1\r\nHost:\th \r\nX-A:   v  w\t\r\n\r\n", func(h *RequestHead) bool {
			return string(h.Host) == "h" && string(h.Fields[1].Value) == "v  w"
		}},
		{"http/1.0 closes", "GET / HTTP/1.0\r\n\r\n", func(h *RequestHead) bool { return h.Close && h.Minor == 0 && h.Host == nil }},
		{"http/1.0 keep-alive", "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", func(h *RequestHead) bool { return !h.Close }},
		{"close", "GET / HTTP/1.1\r\nHost: h\r\nConnection: foo, close\r\n\r\n", func(h *RequestHead) bool { return h.Close }},
		{"upgrade", "GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", func(h *RequestHead) bool { return h.Upgrade }},
		{"expect", "PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n", func(h *RequestHead) bool { return h.Expect100 }},
		{"ipv6 host", "GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", nil},
		{"obs-text value", "GET / HTTP/1.1\r\nHost: h\r\nX: caf\xc3\xa9\r\n\r\n", nil},
		{"many fields", "GET / HTTP/1.1\r\nHost: h\r\n" + strings.Repeat("X-F: v\r\n", 100) + "\r\n", func(h *RequestHead) bool { return len(h.Fields) == 101 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, n, err := parse(t, tc.in+"BODY")
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if n != len(tc.in) {
				t.Fatalf("head length %d, want %d", n, len(tc.in))
			}
			if tc.check != nil && !tc.check(h) {
				t.Fatalf("parsed %+v", h)
			}
		})
	}
}

func TestParseRequestRefuses(t *testing.T) {
	long := strings.Repeat("a", DefaultMaxRequestLine)
	for _, tc := range []struct {
		name, in string
		status   int
	}{
		{"cl with te", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
		{"te with cl", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400},
		{"two cl equal", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", 400},
		{"two cl differ", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400},
		{"cl list", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\n", 400},
		{"cl sign", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\n", 400},
		{"cl huge", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9999999999999999999\r\n\r\n", 400},
		{"te gzip chunked", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501},
		{"te chunked twice", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
		{"te identity", "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n", 501},
		{"te on 1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n", 400},
		{"bare lf head", "GET / HTTP/1.1\nHost: h\n\n", 400},
		{"bare lf field", "GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n", 400},
		{"space before colon", "GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400},
		{"nul in value", "GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n", 400},
		{"cr in value", "GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n", 400},
		{"empty name", "GET / HTTP/1.1\r\nHost: h\r\n: v\r\n\r\n", 400},
		{"no host", "GET / HTTP/1.1\r\n\r\n", 400},
		{"two hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
		{"bad host", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400},
		{"host with userinfo", "GET / HTTP/1.1\r\nHost: u@h\r\n\r\n", 400},
		{"two spaces", "GET  / HTTP/1.1\r\nHost: h\r\n\r\n", 400},
		{"trailing space", "GET / HTTP/1.1 \r\nHost: h\r\n\r\n", 400},
		{"space in target", "GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", 400},
		{"fragment", "GET /a#b HTTP/1.1\r\nHost: h\r\n\r\n", 400},
		{"bad escape", "GET /%zz HTTP/1.1\r\nHost: h\r\n\r\n", 400},
		{"non-ascii target", "GET /caf\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n", 400},
		{"star not options", "GET * HTTP/1.1\r\nHost: h\r\n\r\n", 400},
		// CONNECT without a port parses: the proxy answers it (400, DPE; flags_test.go).
		{"authority form not connect", "GET db:1 HTTP/1.1\r\nHost: db\r\n\r\n", 400},
		{"bad method", "G(ET / HTTP/1.1\r\nHost: h\r\n\r\n", 400},
		{"http/2.0", "GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505},
		{"lower-case version", "GET / http/1.1\r\nHost: h\r\n\r\n", 400},
		{"leading empty line", "\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", 400},
		{"request line too long", "GET /" + long + " HTTP/1.1\r\nHost: h\r\n\r\n", 414},
		{"request line too long, incomplete", "GET /" + long, 414},
		{"head too large", "GET / HTTP/1.1\r\nHost: h\r\nX: " + strings.Repeat("v", DefaultMaxHeadBytes) + "\r\n\r\n", 431},
		{"head too large, incomplete", "GET / HTTP/1.1\r\nHost: h\r\nX: " + strings.Repeat("v", DefaultMaxHeadBytes), 431},
		{"too many fields", "GET / HTTP/1.1\r\nHost: h\r\n" + strings.Repeat("X: v\r\n", DefaultMaxHeaders) + "\r\n", 431},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := parse(t, tc.in)
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("err %v, want an *Error with status %d", err, tc.status)
			}
			if e.Status != tc.status {
				t.Fatalf("status %d (%s), want %d", e.Status, e.Reason, tc.status)
			}
		})
	}
}

func TestParseRequestIncomplete(t *testing.T) {
	full := "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n"
	for i := range len(full) {
		if _, _, err := parse(t, full[:i]); err != ErrIncomplete {
			// A prefix ending in CR is incomplete too, never a bare-LF error.
			t.Fatalf("prefix %q: %v, want ErrIncomplete", full[:i], err)
		}
	}
}

func TestParseRequestAllocates(t *testing.T) {
	in := []byte("GET /a?b HTTP/1.1\r\nHost: orders\r\nUser-Agent: x\r\nAccept: */*\r\nContent-Length: 0\r\n\r\n")
	h := new(RequestHead)
	if a := testing.AllocsPerRun(100, func() {
		if _, err := ParseRequest(in, Limits{}, h); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Fatalf("%v allocations per parse, want 0", a)
	}
}

func BenchmarkParseRequest(b *testing.B) {
	in := []byte("GET /api/orders/123?expand=items HTTP/1.1\r\nHost: orders.default\r\nUser-Agent: fortio.org/fortio-1.66.5\r\n" +
		"Accept: */*\r\nX-Request-Id: 0f3c5e2a-6d0b-4d8e-9b1e-3c2f5a7d9e01\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n")
	h := new(RequestHead)
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseRequest(in, Limits{}, h); err != nil {
			b.Fatal(err)
		}
	}
}

func chunked(t *testing.T, body string) (string, []Field, error) {
	t.Helper()
	c := NewChunkedReader(bufio.NewReader(strings.NewReader(body)), 0)
	b, err := io.ReadAll(c)
	return string(b), c.Trailer, err
}

func TestChunkedReader(t *testing.T) {
	got, tr, err := chunked(t, "5\r\nhello\r\n6;name=val\r\n world\r\nA\r\n0123456789\r\n0\r\nX-Sum: 7\r\nX-B: b\r\n\r\nNEXT")
	if err != nil || got != "hello world0123456789" {
		t.Fatalf("%q, %v", got, err)
	}
	if len(tr) != 2 || string(tr[0].Name) != "X-Sum" || string(tr[0].Value) != "7" || string(tr[1].Value) != "b" {
		t.Fatalf("trailers %q", tr)
	}
	for _, tc := range []struct{ name, in string }{
		{"size with space", "5 \r\nhello\r\n0\r\n\r\n"},
		{"size with leading space", " 5\r\nhello\r\n0\r\n\r\n"},
		{"negative size", "-5\r\nhello\r\n0\r\n\r\n"},
		{"0x prefix", "0x5\r\nhello\r\n0\r\n\r\n"},
		{"size too long", strings.Repeat("0", 16) + "1\r\nh\r\n0\r\n\r\n"},
		{"empty size", "\r\nhello\r\n0\r\n\r\n"},
		{"bare lf size", "5\nhello\r\n0\r\n\r\n"},
		{"quoted extension", "5;a=\"b\"\r\nhello\r\n0\r\n\r\n"},
		{"extension with space", "5; a\r\nhello\r\n0\r\n\r\n"},
		{"data longer than size", "5\r\nhello!\r\n0\r\n\r\n"},
		{"data without crlf", "5\r\nhello0\r\n\r\n"},
		{"data with bare lf", "5\r\nhello\n0\r\n\r\n"},
		{"truncated data", "5\r\nhel"},
		{"no last chunk", "5\r\nhello\r\n"},
		{"trailer obs-fold", "0\r\nX: a\r\n b\r\n\r\n"},
		{"trailer bare lf", "0\r\nX: a\n\r\n"},
		{"no end of trailers", "0\r\nX: a\r\n"},
		{"chunk line too long", "5;" + strings.Repeat("a", maxChunkLine) + "\r\nhello\r\n0\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, _, err := chunked(t, tc.in); err == nil {
				t.Fatalf("accepted, read %q", got)
			}
		})
	}
}
