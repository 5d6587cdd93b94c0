package http1

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"strings"
	"testing"
)

// FuzzDifferential: whatever ParseRequest (and ChunkedReader, for a
// chunked body) accepts, net/http's parser accepts too, with the same
// method, target, version, header fields, Host and body framing, and for a
// chunked body the same bytes and trailers. The reverse is not asked:
// ParseRequest refuses shapes net/http repairs.
func FuzzDifferential(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /a/b?c=d HTTP/1.1\r\nHost: orders.default\r\nUser-Agent: x\r\nAccept: */*\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
		"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: h\r\nTrailer: X-T\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
		"GET http://h:1/x?y HTTP/1.1\r\nHost: h:1\r\n\r\n",
		"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: [::1]:8080\r\nPragma: no-cache\r\nX_A: b\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var h RequestHead
		n, err := ParseRequest(data, Limits{}, &h)
		if err != nil {
			return
		}
		var body string
		var trailer []Field
		if h.Chunked {
			c := NewChunkedReader(bufio.NewReader(bytes.NewReader(data[n:])), 0)
			b, err := io.ReadAll(c)
			if err != nil {
				return
			}
			body, trailer = string(b), c.Trailer
		}
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(data)))
		if err != nil {
			t.Fatalf("accepted here, net/http refuses (%v):\n%q", err, data[:n])
		}
		compareHead(t, &h, req, data[:n])
		if h.Chunked {
			got, err := io.ReadAll(req.Body)
			if err != nil {
				t.Fatalf("chunked body accepted here, net/http refuses (%v):\n%q", err, data)
			}
			if string(got) != body {
				t.Fatalf("chunked body: %q here, %q by net/http:\n%q", body, got, data)
			}
			compareFields(t, "trailer", trailer, req.Trailer, data)
		}
	})
}

func compareHead(t *testing.T, h *RequestHead, req *http.Request, head []byte) {
	t.Helper()
	if string(h.Method) != req.Method || string(h.Target) != req.RequestURI || req.ProtoMajor != 1 || h.Minor != min(req.ProtoMinor, 1) {
		t.Fatalf("request line: %q %q 1.%d here, %q %q %d.%d by net/http:\n%q",
			h.Method, h.Target, h.Minor, req.Method, req.RequestURI, req.ProtoMajor, req.ProtoMinor, head)
	}
	if h.Host != nil && string(h.Host) != req.Host {
		t.Fatalf("Host %q here, %q by net/http:\n%q", h.Host, req.Host, head)
	}
	wantCL := h.ContentLength
	if wantCL < 0 && !h.Chunked {
		wantCL = 0 // net/http: a request with no framing has no body
	}
	if wantCL != req.ContentLength || h.Chunked != slices.Equal(req.TransferEncoding, []string{"chunked"}) {
		t.Fatalf("framing: length %d chunked %v here, %d %q by net/http:\n%q",
			h.ContentLength, h.Chunked, req.ContentLength, req.TransferEncoding, head)
	}
	if h.Close != req.Close {
		t.Fatalf("close %v here, %v by net/http:\n%q", h.Close, req.Close, head)
	}
	// net/http moves Host, Transfer-Encoding and (chunked) Trailer out of
	// the header map, and
	// adds Cache-Control: no-cache for a lone Pragma: no-cache.
	hdr := req.Header.Clone()
	if _, ok := hdr["Pragma"]; ok && !hasField(h.Fields, "cache-control") {
		delete(hdr, "Cache-Control")
	}
	var fields []Field
	for _, f := range h.Fields {
		if !equalFold(f.Name, "host") && !equalFold(f.Name, "transfer-encoding") && !(h.Chunked && equalFold(f.Name, "trailer")) {
			fields = append(fields, f)
		}
	}
	compareFields(t, "header", fields, hdr, head)
}

func hasField(fs []Field, lower string) bool {
	for _, f := range fs {
		if equalFold(f.Name, lower) {
			return true
		}
	}
	return false
}

func compareFields(t *testing.T, what string, fs []Field, hdr http.Header, input []byte) {
	t.Helper()
	want := http.Header{}
	for _, f := range fs {
		k := textproto.CanonicalMIMEHeaderKey(string(f.Name))
		want[k] = append(want[k], string(f.Value))
	}
	if len(want) == 0 && len(hdr) == 0 {
		return
	}
	for k, v := range want {
		if !slices.Equal(v, hdr[k]) {
			t.Fatalf("%s %s: %q here, %q by net/http:\n%q", what, k, v, hdr[k], input)
		}
	}
	for k, v := range hdr {
		if _, ok := want[k]; !ok && v != nil { // nil: a declared trailer that did not come
			t.Fatalf("%s %s: absent here, %q by net/http:\n%q", what, k, hdr[k], strings.TrimSpace(string(input)))
		}
	}
}

// FuzzResponseDifferential: whatever ParseResponse (and ChunkedReader, for
// a chunked body) accepts, http.ReadResponse accepts too, with the same
// status, version, header fields and body framing, and the same body
// bytes and trailers. head says the request was HEAD.
func FuzzResponseDifferential(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\nX-Sum: 7\r\n\r\n",
		"HTTP/1.1 200 OK\r\n\r\nuntil close",
		"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 204\r\n\r\n",
		"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
		"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
		"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
		"HTTP/1.1 200 OK\r\nPragma: no-cache\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
	} {
		f.Add([]byte(s), false)
	}
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n"), true)
	f.Fuzz(func(t *testing.T, data []byte, head bool) {
		h := ResponseHead{ForHEAD: head}
		n, err := ParseResponse(data, Limits{}, &h)
		if err != nil {
			return
		}
		body, trailer, ok := respBody(&h, data[n:])
		if !ok {
			return
		}
		method := http.MethodGet
		if head {
			method = http.MethodHead
		}
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(data)), &http.Request{Method: method})
		if err != nil {
			t.Fatalf("accepted here, net/http refuses (%v):\n%q", err, data[:n])
		}
		compareResponse(t, &h, resp, data[:n])
		got, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("body accepted here, net/http refuses (%v):\n%q", err, data)
		}
		if string(got) != body {
			t.Fatalf("body: %q here, %q by net/http:\n%q", body, got, data)
		}
		if h.Chunked && !h.NoBody {
			compareFields(t, "trailer", trailer, resp.Trailer, data)
		}
	})
}

// respBody reads the body h frames from rest as the Transport would; ok
// is false when the body is refused.
func respBody(h *ResponseHead, rest []byte) (string, []Field, bool) {
	switch {
	case h.NoBody:
		return "", nil, true
	case h.Chunked:
		c := NewChunkedReader(bufio.NewReader(bytes.NewReader(rest)), 0)
		b, err := io.ReadAll(c)
		return string(b), c.Trailer, err == nil
	case h.ContentLength >= 0:
		if int64(len(rest)) < h.ContentLength {
			return "", nil, false
		}
		return string(rest[:h.ContentLength]), nil, true
	}
	return string(rest), nil, true
}

func compareResponse(t *testing.T, h *ResponseHead, resp *http.Response, head []byte) {
	t.Helper()
	if h.Status != resp.StatusCode || resp.ProtoMajor != 1 || h.Minor != resp.ProtoMinor {
		t.Fatalf("status line: %d 1.%d here, %d %d.%d by net/http:\n%q", h.Status, h.Minor, resp.StatusCode, resp.ProtoMajor, resp.ProtoMinor, head)
	}
	// net/http's ContentLength: the declared one for HEAD, 0 for a
	// status without a body, -1 for chunked and until-close bodies.
	wantCL := h.ContentLength
	switch {
	case h.NoBody && !h.ForHEAD:
		wantCL = 0
	case h.Chunked && !h.NoBody:
		wantCL = -1
	}
	chunked := slices.Equal(resp.TransferEncoding, []string{"chunked"})
	if wantCL != resp.ContentLength || h.Chunked != chunked || h.NoBody != (resp.Body == http.NoBody) && h.ContentLength != 0 {
		t.Fatalf("framing: length %d chunked %v nobody %v here, %d %q %v by net/http:\n%q",
			h.ContentLength, h.Chunked, h.NoBody, resp.ContentLength, resp.TransferEncoding, resp.Body == http.NoBody, head)
	}
	// net/http closes after a HEAD response without Content-Length, as
	// if it had a body to read to the close; this parser does not.
	if h.Close != resp.Close && !(h.ForHEAD && h.ContentLength < 0) {
		t.Fatalf("close %v here, %v by net/http:\n%q", h.Close, resp.Close, head)
	}
	hdr := resp.Header.Clone()
	if _, ok := hdr["Pragma"]; ok && !hasField(h.Fields, "cache-control") {
		delete(hdr, "Cache-Control")
	}
	// net/http also drops an HTTP/1.1 Connection field that says close.
	dropConn := h.Minor == 1 && resp.Close && len(resp.Header["Connection"]) == 0
	var fields []Field
	for _, f := range h.Fields {
		if !equalFold(f.Name, "transfer-encoding") && !(h.Chunked && equalFold(f.Name, "trailer")) &&
			!(dropConn && equalFold(f.Name, "connection")) {
			fields = append(fields, f)
		}
	}
	compareFields(t, "header", fields, hdr, head)
}

// FuzzTransportResponse: a server answers a GET with the fuzzer's bytes,
// then closes. What the Transport delivers agrees with ParseResponse and
// the body framing it gives: the same status and body when both accept,
// and never a body the parser would refuse.
func FuzzTransportResponse(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 7\r\n\r\n",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.0 200 OK\r\n\r\nuntil close",
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX: " + strings.Repeat("v", 5000) + "\r\nContent-Length: 1\r\n\r\nx",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		tr := &Transport{Dial: func(context.Context, string) (net.Conn, error) {
			client, server := net.Pipe()
			go func() {
				defer server.Close()
				br := bufio.NewReader(server)
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				_, _ = server.Write(data)
			}()
			return client, nil
		}}
		defer tr.CloseIdleConnections()
		req, _ := http.NewRequest(http.MethodGet, "http://fuzz:80/", nil)
		resp, err := tr.RoundTrip(req)
		var body []byte
		if err == nil {
			body, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		want, status, fields, ok := modelResponse(data)
		if ok && status == 0 {
			return
		}
		if err != nil {
			if ok {
				t.Fatalf("refused (%v) what the parser accepts:\n%q", err, data)
			}
			return
		}
		if !ok {
			t.Fatalf("delivered %d %q; the parser refuses:\n%q", resp.StatusCode, body, data)
		}
		if resp.StatusCode != status || string(body) != want {
			t.Fatalf("delivered %d %q, the parser says %d %q:\n%q", resp.StatusCode, body, status, want, data)
		}
		compareFields(t, "header", fields, resp.Header, data)
	})
}

// modelResponse is what a GET's answer data should deliver: the final
// status, header fields (less those net/http moves out of Header) and
// body, with interim 1xx skipped; ok false when refused. status 0 with ok:
// a shape the model does not judge (too many 1xx, 101).
func modelResponse(data []byte) (string, int, []Field, bool) {
	for i := 0; ; i++ {
		h := new(ResponseHead)
		n, err := ParseResponse(data, Limits{}, h)
		if err != nil {
			return "", 0, nil, false
		}
		if h.Status == http.StatusSwitchingProtocols || i == max1xx && h.Status < 200 {
			return "", 0, nil, true
		}
		if h.Status >= 200 {
			body, _, ok := respBody(h, data[n:])
			var fields []Field
			for _, f := range h.Fields {
				if !equalFold(f.Name, "transfer-encoding") && !(h.Chunked && equalFold(f.Name, "trailer")) {
					fields = append(fields, f)
				}
			}
			return body, h.Status, fields, ok
		}
		data = data[n:]
	}
}

// FuzzPlainTarget: every target plainTarget takes, url.ParseRequestURI
// parses to the same URL (Path, RawPath, RawQuery, and nothing else set).
func FuzzPlainTarget(f *testing.F) {
	for _, s := range []string{"/", "/a/b?c=d", "/a?", "/a%2Fb", "/a b", "/a!b", "/~u/x;y=z?q", "//x/y", "/a?b?c", "/a#f", "*", "http://h/p", "/é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, target string) {
		path, query, ok := plainTarget(target)
		if !ok {
			return
		}
		want, err := url.ParseRequestURI(target)
		if err != nil {
			t.Fatalf("plainTarget took %q, ParseRequestURI refuses it: %v", target, err)
		}
		got := url.URL{Path: path, RawQuery: query}
		if *want != got {
			t.Fatalf("%q: plainTarget %#v, ParseRequestURI %#v", target, got, *want)
		}
	})
}
