package http1

import (
	"errors"
	"strings"
	"testing"
)

func parseResp(s string, head bool) (*ResponseHead, int, error) {
	h := &ResponseHead{ForHEAD: head}
	n, err := ParseResponse([]byte(s), Limits{}, h)
	return h, n, err
}

func TestParseResponseAccepts(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		head     bool
		check    func(*ResponseHead) bool
	}{
		{"content length", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\n", false, func(h *ResponseHead) bool {
			return h.Status == 200 && string(h.Reason) == "OK" && h.Minor == 1 && h.ContentLength == 2 &&
				!h.Chunked && !h.NoBody && !h.Close && len(h.Fields) == 2
		}},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n", false, func(h *ResponseHead) bool {
			return h.Chunked && h.ContentLength == -1 && !h.Close && !h.NoBody
		}},
		{"until close", "HTTP/1.1 200 OK\r\n\r\n", false, func(h *ResponseHead) bool { return h.Close && !h.NoBody && h.ContentLength == -1 }},
		{"no reason", "HTTP/1.1 204\r\n\r\n", false, func(h *ResponseHead) bool { return h.Status == 204 && len(h.Reason) == 0 && h.NoBody && !h.Close }},
		{"empty reason", "HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", false, func(h *ResponseHead) bool { return len(h.Reason) == 0 }},
		{"reason with spaces", "HTTP/1.1 404 Not  Found \r\nContent-Length: 0\r\n\r\n", false, func(h *ResponseHead) bool { return string(h.Reason) == "Not  Found " }},
		{"304 with length", "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", false, func(h *ResponseHead) bool {
			return h.NoBody && h.ContentLength == 10 && !h.Close
		}},
		{"head without length", "HTTP/1.1 200 OK\r\n\r\n", true, func(h *ResponseHead) bool { return h.NoBody && !h.Close }},
		{"head with length", "HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", true, func(h *ResponseHead) bool { return h.NoBody && h.ContentLength == 7 }},
		{"100 continue", "HTTP/1.1 100 Continue\r\n\r\n", false, func(h *ResponseHead) bool { return h.Status == 100 && h.NoBody && !h.Close }},
		{"101 upgrade", "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", false, func(h *ResponseHead) bool {
			return h.Status == 101 && h.Upgrade && h.NoBody
		}},
		{"connection close", "HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n", false, func(h *ResponseHead) bool { return h.Close }},
		{"http/1.0 closes", "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false, func(h *ResponseHead) bool { return h.Close && h.Minor == 0 }},
		{"http/1.0 keep-alive", "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n", false, func(h *ResponseHead) bool { return !h.Close }},
		{"status 999", "HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n", false, func(h *ResponseHead) bool { return h.Status == 999 }},
		{"trailer declared", "HTTP/1.1 200 OK\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n", false, nil},
		{"obs-text value", "HTTP/1.1 200 OK\r\nX: caf\xc3\xa9\r\nContent-Length: 0\r\n\r\n", false, nil},
		{"many fields", "HTTP/1.1 200 OK\r\n" + strings.Repeat("X-F: v\r\n", 100) + "\r\n", false, func(h *ResponseHead) bool { return len(h.Fields) == 100 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, n, err := parseResp(tc.in+"BODY", tc.head)
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

func TestParseResponseRefuses(t *testing.T) {
	for _, tc := range []struct{ name, in string }{
		{"cl with te", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"},
		{"te with cl", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"},
		{"two cl equal", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"},
		{"two cl differ", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"},
		{"cl list", "HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n"},
		{"cl negative", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"},
		{"cl huge", "HTTP/1.1 200 OK\r\nContent-Length: 9999999999999999999\r\n\r\n"},
		{"te gzip chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"},
		{"te chunked gzip", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"},
		{"te twice", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"},
		{"te identity", "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n"},
		{"te on 1.0", "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"},
		{"trailer names length", "HTTP/1.1 200 OK\r\nTrailer: Content-Length\r\nTransfer-Encoding: chunked\r\n\r\n"},
		{"obs-fold", "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n"},
		{"bare lf status", "HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n"},
		{"bare lf field", "HTTP/1.1 200 OK\r\nContent-Length: 0\n\r\n"},
		{"bare lf end", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\n"},
		{"space before colon", "HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n"},
		{"nul in value", "HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n"},
		{"cr in reason", "HTTP/1.1 200 O\rK\r\n\r\n"},
		{"two-digit status", "HTTP/1.1 20 OK\r\n\r\n"},
		{"four-digit status", "HTTP/1.1 2000 OK\r\n\r\n"},
		{"status 099", "HTTP/1.1 099 Low\r\n\r\n"},
		{"signed status", "HTTP/1.1 +20 OK\r\n\r\n"},
		{"two spaces", "HTTP/1.1  200 OK\r\n\r\n"},
		{"no status", "HTTP/1.1\r\n\r\n"},
		{"http/2.0", "HTTP/2.0 200 OK\r\n\r\n"},
		{"http/1.2", "HTTP/1.2 200 OK\r\n\r\n"},
		{"lower-case version", "http/1.1 200 OK\r\n\r\n"},
		{"leading empty line", "\r\nHTTP/1.1 200 OK\r\n\r\n"},
		{"status line too long", "HTTP/1.1 200 " + strings.Repeat("a", DefaultMaxRequestLine) + "\r\n\r\n"},
		{"head too large", "HTTP/1.1 200 OK\r\nX: " + strings.Repeat("v", DefaultMaxHeadBytes) + "\r\n\r\n"},
		{"head too large, incomplete", "HTTP/1.1 200 OK\r\nX: " + strings.Repeat("v", DefaultMaxHeadBytes)},
		{"too many fields", "HTTP/1.1 200 OK\r\n" + strings.Repeat("X: v\r\n", DefaultMaxHeaders+1) + "\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := parseResp(tc.in, false)
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("err %v, want an *Error", err)
			}
			if e.Status != 502 {
				t.Fatalf("status %d (%s), want 502", e.Status, e.Reason)
			}
		})
	}
}

func TestParseResponseIncomplete(t *testing.T) {
	full := "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
	for i := range len(full) {
		if _, _, err := parseResp(full[:i], false); err != ErrIncomplete {
			t.Fatalf("prefix %q: %v, want ErrIncomplete", full[:i], err)
		}
	}
}

func TestParseResponseAllocates(t *testing.T) {
	in := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nDate: Tue, 01 Dec 2026 17:00:00 GMT\r\nContent-Length: 2\r\n\r\nok")
	h := new(ResponseHead)
	if a := testing.AllocsPerRun(100, func() {
		if _, err := ParseResponse(in, Limits{}, h); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Fatalf("%v allocations per parse, want 0", a)
	}
}

func BenchmarkParseResponse(b *testing.B) {
	in := []byte("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nDate: Tue, 01 Dec 2026 17:00:00 GMT\r\n" +
		"X-Request-Id: 0f3c5e2a-6d0b-4d8e-9b1e-3c2f5a7d9e01\r\nContent-Length: 2\r\n\r\n")
	h := new(ResponseHead)
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseResponse(in, Limits{}, h); err != nil {
			b.Fatal(err)
		}
	}
}
