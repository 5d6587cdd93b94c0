package http1

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"
)

// countingServer is a net/http server on loopback that counts the
// connections it accepts.
func countingServer(t testing.TB, h http.Handler) (addr string, conns *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	conns = new(atomic.Int32)
	srv := &http.Server{Handler: h, ConnState: func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String(), conns
}

// rawServer accepts connections on loopback and runs serve on each; serve
// gets the connection's index (0 for the first).
func rawServer(t *testing.T, serve func(i int, c net.Conn, br *bufio.Reader)) (addr string, accepted *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted = new(atomic.Int32)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			open = append(open, c)
			mu.Unlock()
			i := int(accepted.Add(1)) - 1
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				serve(i, c, bufio.NewReader(c))
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range open {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String(), accepted
}

func get(t *testing.T, tr http.RoundTripper, url string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return do(t, tr, req)
}

// do sends req and reads the whole body, failing (not hanging) after 10s.
func do(t *testing.T, tr http.RoundTripper, req *http.Request) (*http.Response, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(req.Context(), 10*time.Second)
	defer cancel()
	resp, err := tr.RoundTrip(req.WithContext(ctx))
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: body: %v", req.Method, req.URL, err)
	}
	_ = resp.Body.Close()
	return resp, string(b)
}

func TestTransportKeepAlive(t *testing.T) {
	addr, conns := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header()["X-Path"] = []string{r.URL.RequestURI()}
		w.Header().Add("X-Multi", "a")
		w.Header().Add("X-Multi", "b")
		_, _ = io.WriteString(w, "hello "+r.Host)
	}))
	tr := &Transport{}
	defer tr.CloseIdleConnections()
	for i := range 20 {
		resp, body := get(t, tr, fmt.Sprintf("http://%s/p/%d?q=%d", addr, i, i))
		if resp.StatusCode != 200 || resp.Status != "200 OK" || resp.Proto != "HTTP/1.1" || body != "hello "+addr {
			t.Fatalf("got %s %q", resp.Status, body)
		}
		if got := resp.Header.Get("X-Path"); got != fmt.Sprintf("/p/%d?q=%d", i, i) {
			t.Fatalf("path %q", got)
		}
		if got := resp.Header["X-Multi"]; len(got) != 2 || got[0] != "a" || got[1] != "b" {
			t.Fatalf("X-Multi %q", got)
		}
		if resp.ContentLength != int64(len(body)) || resp.Header.Get("Content-Length") == "" {
			t.Fatalf("content length %d for %q", resp.ContentLength, body)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections for 20 sequential requests, want 1", n)
	}
}

// respond reads one request and writes the raw response.
func respond(br *bufio.Reader, c net.Conn, raw string) error {
	req, err := http.ReadRequest(br)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, req.Body)
	_, err = io.WriteString(c, raw)
	return err
}

const okResp = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

func TestTransportRetriesDeadIdleConn(t *testing.T) {
	addr, accepted := rawServer(t, func(i int, c net.Conn, br *bufio.Reader) {
		_ = respond(br, c, okResp)
		if i == 0 {
			return // closes the connection the client pooled
		}
		for respond(br, c, okResp) == nil {
		}
	})
	tr := &Transport{}
	defer tr.CloseIdleConnections()
	get(t, tr, "http://"+addr+"/")
	waitIdleDead(t, tr, addr)
	if _, body := get(t, tr, "http://"+addr+"/"); body != "ok" {
		t.Fatalf("body %q", body)
	}
	if n := accepted.Load(); n != 2 {
		t.Fatalf("%d connections, want 2 (the retry's)", n)
	}
}

// waitIdleDead waits until the pooled connection to addr has been closed
// by its server (a read on it sees EOF), without taking it from the pool.
func waitIdleDead(t *testing.T, tr *Transport, addr string) {
	t.Helper()
	tr.mu.Lock()
	list := tr.idle[addr]
	tr.mu.Unlock()
	if len(list) != 1 {
		t.Fatalf("%d idle connections, want 1", len(list))
	}
	// Peeking is what the next request's read does first; EOF here
	// means the server's close has arrived.
	if _, err := list[0].br.Peek(1); !errors.Is(err, io.EOF) {
		t.Fatalf("idle connection: %v, want EOF", err)
	}
}

func TestTransportRetryRules(t *testing.T) {
	post := func(addr string, body io.Reader, hdr string) *http.Request {
		r, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", body)
		if hdr != "" {
			r.Header.Set(hdr, "k1")
		}
		return r
	}
	for _, tc := range []struct {
		name    string
		request func(addr string) *http.Request
		retried bool
	}{
		{"post without GetBody", func(a string) *http.Request { return post(a, io.NopCloser(strings.NewReader("x")), "") }, false},
		{"post with GetBody", func(a string) *http.Request { return post(a, strings.NewReader("x"), "") }, false},
		{"post with Idempotency-Key, no GetBody", func(a string) *http.Request {
			return post(a, io.NopCloser(strings.NewReader("x")), "Idempotency-Key")
		}, false},
		{"post with Idempotency-Key", func(a string) *http.Request { return post(a, strings.NewReader("x"), "Idempotency-Key") }, true},
		{"post with X-Idempotency-Key", func(a string) *http.Request { return post(a, strings.NewReader("x"), "X-Idempotency-Key") }, true},
		{"put without body", func(a string) *http.Request { r, _ := http.NewRequest(http.MethodPut, "http://"+a+"/", nil); return r }, false},
		{"head", func(a string) *http.Request { r, _ := http.NewRequest(http.MethodHead, "http://"+a+"/", nil); return r }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, accepted := rawServer(t, func(i int, c net.Conn, br *bufio.Reader) {
				_ = respond(br, c, okResp)
				for i > 0 && respond(br, c, okResp) == nil {
				}
			})
			tr := &Transport{}
			defer tr.CloseIdleConnections()
			get(t, tr, "http://"+addr+"/")
			waitIdleDead(t, tr, addr)
			resp, err := tr.RoundTrip(tc.request(addr))
			if err == nil {
				resp.Body.Close()
			}
			if tc.retried != (err == nil) || tc.retried != (accepted.Load() == 2) {
				t.Fatalf("err %v after %d connections; want retried %v", err, accepted.Load(), tc.retried)
			}
		})
	}
}

// signalConn calls onRead with what each Read returned.
type signalConn struct {
	net.Conn
	onRead func([]byte)
}

func (c signalConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.onRead(p[:n])
	return n, err
}

// TestTransportNoRetryAfterResponseByte: a reused connection reset after
// part of a head arrived is not retried (the server may have acted).
func TestTransportNoRetryAfterResponseByte(t *testing.T) {
	const partial = "HTTP/1.1 2"
	gotPartial := make(chan struct{})
	var once sync.Once
	addr, accepted := rawServer(t, func(i int, c net.Conn, br *bufio.Reader) {
		_ = respond(br, c, okResp)
		if respond(br, c, partial) != nil {
			return
		}
		<-gotPartial
		_ = c.(*net.TCPConn).SetLinger(0) // close with a reset
	})
	tr := &Transport{Dial: func(ctx context.Context, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		return signalConn{c, func(b []byte) {
			if string(b) == partial {
				once.Do(func() { close(gotPartial) })
			}
		}}, err
	}}
	defer tr.CloseIdleConnections()
	get(t, tr, "http://"+addr+"/")
	resp, err := tr.RoundTrip(httptestGet(addr))
	if err == nil {
		resp.Body.Close()
		t.Fatalf("got %s, want an error", resp.Status)
	}
	if n := accepted.Load(); n != 1 {
		t.Fatalf("%d connections: retried after a response byte (%v)", n, err)
	}
}

func httptestGet(addr string) *http.Request {
	r, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
	return r
}

func idleCount(tr *Transport, addr string) int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return len(tr.idle[addr])
}

// TestTransportConnectionClose: either side's Connection: close keeps the
// connection out of the pool, even when the server does not close it.
func TestTransportConnectionClose(t *testing.T) {
	heads := make(chan http.Header, 8)
	addr, accepted := rawServer(t, func(_ int, c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			heads <- req.Header
			resp := okResp
			if req.URL.Path == "/server-closes" {
				resp = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
			}
			if _, err := io.WriteString(c, resp); err != nil {
				return
			}
		}
	})
	tr := &Transport{}
	defer tr.CloseIdleConnections()
	for range 2 {
		resp, body := get(t, tr, "http://"+addr+"/server-closes")
		<-heads
		if !resp.Close || body != "ok" || idleCount(tr, addr) != 0 {
			t.Fatalf("close %v body %q idle %d", resp.Close, body, idleCount(tr, addr))
		}
	}
	req := httptestGet(addr)
	req.Close = true
	if resp, _ := do(t, tr, req); resp.Close {
		t.Fatal("the server did not say close; resp.Close is the server's word")
	}
	if h := <-heads; h.Get("Connection") != "close" {
		t.Fatalf("request Connection %q, want close", h.Get("Connection"))
	}
	if n := idleCount(tr, addr); n != 0 {
		t.Fatalf("%d idle connections after the request said close", n)
	}
	if n := accepted.Load(); n != 3 {
		t.Fatalf("%d connections, want 3", n)
	}
}
func TestTransportChunkedRequest(t *testing.T) {
	addr, _ := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		fmt.Fprintf(w, "%s %q %d %q %q", r.Method, b, r.ContentLength, r.TransferEncoding, r.Trailer.Get("X-Sum"))
	}))
	tr := &Transport{}
	defer tr.CloseIdleConnections()
	pr, pw := io.Pipe()
	go func() {
		for _, s := range []string{"hello ", "streamed ", "world"} {
			_, _ = io.WriteString(pw, s)
		}
		_ = pw.Close()
	}()
	req, _ := http.NewRequest(http.MethodPut, "http://"+addr+"/up", pr)
	req.ContentLength = -1
	req.Trailer = http.Header{"X-Sum": {"42"}}
	_, body := do(t, tr, req)
	if want := `PUT "hello streamed world" -1 ["chunked"] "42"`; body != want {
		t.Fatalf("server saw %s, want %s", body, want)
	}
	// A known length: Content-Length and those bytes.
	req, _ = http.NewRequest(http.MethodPost, "http://"+addr+"/up", strings.NewReader("fixed"))
	if _, body = do(t, tr, req); body != `POST "fixed" 5 [] ""` {
		t.Fatalf("server saw %s", body)
	}
}

func TestTransportRequestBodyLength(t *testing.T) {
	addr, _ := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	tr := &Transport{}
	defer tr.CloseIdleConnections()
	for _, tc := range []struct {
		body string
		cl   int64
		want error
	}{{"abc", 5, errBodyTooShort}, {"abcdefg", 5, errBodyTooLong}} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/", io.NopCloser(strings.NewReader(tc.body)))
		req.ContentLength = tc.cl
		resp, err := tr.RoundTrip(req)
		if !errors.Is(err, tc.want) {
			if err == nil {
				resp.Body.Close()
			}
			t.Fatalf("%q with ContentLength %d: %v, want %v", tc.body, tc.cl, err, tc.want)
		}
	}
}

func TestTransportChunkedResponseTrailer(t *testing.T) {
	addr, conns := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Sum")
		_, _ = io.WriteString(w, "part1 ")
		w.(http.Flusher).Flush()
		_, _ = io.WriteString(w, "part2")
		w.Header().Set("X-Sum", "7")
	}))
	tr := &Transport{}
	defer tr.CloseIdleConnections()
	for range 2 {
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.ContentLength != -1 || len(resp.TransferEncoding) != 1 || resp.Header.Get("Trailer") != "" {
			t.Fatalf("framing: %d %q, Trailer field %q", resp.ContentLength, resp.TransferEncoding, resp.Header.Get("Trailer"))
		}
		if _, ok := resp.Trailer["X-Sum"]; !ok {
			t.Fatalf("declared trailer missing before the body: %v", resp.Trailer)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil || string(b) != "part1 part2" {
			t.Fatalf("body %q, %v", b, err)
		}
		if got := resp.Trailer.Get("X-Sum"); got != "7" {
			t.Fatalf("trailer %q after EOF", got)
		}
		resp.Body.Close()
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections, want 1", n)
	}
}

func TestTransportNoBodyResponses(t *testing.T) {
	addr, conns := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/204":
			w.WriteHeader(204)
		case "/304":
			w.Header().Set("Etag", `"x"`)
			w.WriteHeader(304)
		default:
			w.Header().Set("Content-Length", "11")
			_, _ = io.WriteString(w, "hello world")
		}
	}))
	tr := &Transport{}
	defer tr.CloseIdleConnections()
	for _, tc := range []struct {
		method, path string
		status       int
		cl           int64
	}{
		{http.MethodHead, "/", 200, 11},
		{http.MethodGet, "/204", 204, 0},
		{http.MethodGet, "/304", 304, 0},
		{http.MethodGet, "/", 200, 11},
		{http.MethodHead, "/", 200, 11},
	} {
		req, _ := http.NewRequest(tc.method, "http://"+addr+tc.path, nil)
		resp, body := do(t, tr, req)
		want := ""
		if tc.method == http.MethodGet && tc.status == 200 {
			want = "hello world"
		}
		if resp.StatusCode != tc.status || resp.ContentLength != tc.cl || body != want {
			t.Fatalf("%s %s: %d length %d body %q", tc.method, tc.path, resp.StatusCode, resp.ContentLength, body)
		}
		if want == "" && resp.Body != http.NoBody {
			t.Fatalf("%s %s: body %T, want http.NoBody", tc.method, tc.path, resp.Body)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections, want 1 (no body must not cost the connection)", n)
	}
}

func TestTransportCloseDelimitedBody(t *testing.T) {
	addr, accepted := rawServer(t, func(_ int, c net.Conn, br *bufio.Reader) {
		_ = respond(br, c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
	})
	tr := &Transport{}
	defer tr.CloseIdleConnections()
	for range 2 {
		resp, body := get(t, tr, "http://"+addr+"/")
		if body != "until the end" || !resp.Close || resp.ContentLength != -1 {
			t.Fatalf("body %q close %v length %d", body, resp.Close, resp.ContentLength)
		}
		tr.mu.Lock()
		n := len(tr.idle[addr])
		tr.mu.Unlock()
		if n != 0 {
			t.Fatal("a connection that ended its body by closing was pooled")
		}
	}
	if n := accepted.Load(); n != 2 {
		t.Fatalf("%d connections, want 2", n)
	}
}

func TestTransportSkips1xx(t *testing.T) {
	addr, _ := rawServer(t, func(_ int, c net.Conn, br *bufio.Reader) {
		_ = respond(br, c, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n"+
			"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"+okResp)
	})
	tr := &Transport{}
	defer tr.CloseIdleConnections()
	resp, body := get(t, tr, "http://"+addr+"/")
	if resp.StatusCode != 200 || body != "ok" || resp.Header.Get("Link") != "" {
		t.Fatalf("%d %q %v", resp.StatusCode, body, resp.Header)
	}
}

func TestTransportUpgrade(t *testing.T) {
	addr, _ := rawServer(t, func(_ int, c net.Conn, br *bufio.Reader) {
		req, err := http.ReadRequest(br)
		if err != nil || req.Header.Get("Upgrade") != "echo" || !strings.EqualFold(req.Header.Get("Connection"), "upgrade") {
			_, _ = io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
			return
		}
		// The first echoed bytes ride with the 101's head.
		_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nearly")
		_, _ = io.Copy(c, br)
	})
	tr := &Transport{}
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/ws", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "echo")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	rw, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		t.Fatalf("101 body %T is not an io.ReadWriteCloser", resp.Body)
	}
	defer rw.Close()
	// A stream that stalls fails the test instead of hanging it.
	stop := time.AfterFunc(10*time.Second, func() { _ = rw.Close() })
	defer stop.Stop()
	buf := make([]byte, 5)
	if _, err := io.ReadFull(rw, buf); err != nil || string(buf) != "early" {
		t.Fatalf("buffered bytes %q, %v", buf, err)
	}
	if _, err := io.WriteString(rw, "ping"); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(rw, buf[:4]); err != nil || string(buf[:4]) != "ping" {
		t.Fatalf("echo %q, %v", buf[:4], err)
	}
}

func TestTransportContextCancel(t *testing.T) {
	stalled := make(chan struct{}, 2)
	release := make(chan struct{})
	addr, accepted := rawServer(t, func(i int, c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		if i == 0 {
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
		}
		stalled <- struct{}{}
		<-release
	})
	defer close(release)
	tr := &Transport{}
	defer tr.CloseIdleConnections()

	// Mid-body.
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		t.Fatal(err)
	}
	<-stalled
	go cancel()
	start := time.Now()
	_, err = resp.Body.Read(make([]byte, 8))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("read after cancel: %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("cancel took %v", d)
	}
	resp.Body.Close()

	// Mid-head, on a new connection (the first was not pooled).
	ctx, cancel = context.WithCancel(context.Background())
	req, _ = http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
	go func() { <-stalled; cancel() }()
	if _, err := tr.RoundTrip(req); !errors.Is(err, context.Canceled) {
		t.Fatalf("round trip after cancel: %v, want context.Canceled", err)
	}
	if n := accepted.Load(); n != 2 {
		t.Fatalf("%d connections, want 2: a cancelled exchange's connection was reused", n)
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if n := len(tr.idle[addr]); n != 0 {
		t.Fatalf("%d idle connections after cancels", n)
	}
}

func TestTransportDeadlineExceeded(t *testing.T) {
	release := make(chan struct{})
	addr, _ := rawServer(t, func(_ int, c net.Conn, br *bufio.Reader) {
		_, _ = http.ReadRequest(br)
		<-release
	})
	defer close(release)
	tr := &Transport{}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
	if _, err := tr.RoundTrip(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("%v, want context.DeadlineExceeded", err)
	}
}

func TestTransportMalformedResponses(t *testing.T) {
	big := "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("b", 2048) + "\r\nContent-Length: 2\r\n\r\nok"
	for _, tc := range []struct{ name, resp string }{
		{"cl with te", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"},
		{"te with cl", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc"},
		{"two cl", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde"},
		{"two equal cl", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"},
		{"te gzip", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"},
		{"bad chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3x\r\nabc\r\n0\r\n\r\n"},
		{"chunk data too long", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n"},
		{"chunked without end", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"},
		{"bare lf", "HTTP/1.1 200 OK\nContent-Length: 3\n\nabc"},
		{"obs-fold", "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 3\r\n\r\nabc"},
		{"space before colon", "HTTP/1.1 200 OK\r\nContent-Length : 3\r\n\r\nabc"},
		{"short body", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"},
		{"http/2", "HTTP/2.0 200 OK\r\nContent-Length: 3\r\n\r\nabc"},
		{"bad status", "HTTP/1.1 2xx OK\r\nContent-Length: 3\r\n\r\nabc"},
		{"oversize head", big},
		{"too many 1xx", strings.Repeat("HTTP/1.1 100 Continue\r\n\r\n", max1xx+1) + okResp},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The server keeps the connection open (but for a message
			// cut short): the bytes themselves must fail the exchange.
			cut := tc.name == "short body" || tc.name == "chunked without end"
			addr, _ := rawServer(t, func(_ int, c net.Conn, br *bufio.Reader) {
				if respond(br, c, tc.resp) == nil && !cut {
					_, _ = io.Copy(io.Discard, br)
				}
			})
			tr := &Transport{MaxResponseHeaderBytes: 1024}
			defer tr.CloseIdleConnections()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
			resp, err := tr.RoundTrip(req)
			if err == nil {
				defer resp.Body.Close()
				var b []byte
				if b, err = io.ReadAll(resp.Body); err == nil {
					t.Fatalf("accepted: %d, body %q", resp.StatusCode, b)
				}
			}
			if ctx.Err() != nil {
				t.Fatalf("waited for more instead of refusing: %v", err)
			}
		})
	}
}

func TestTransportLargeHead(t *testing.T) {
	big := strings.Repeat("v", 10<<10)
	addr, conns := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Big", big)
		_, _ = io.WriteString(w, "body after a big head")
	}))
	tr := &Transport{}
	defer tr.CloseIdleConnections()
	for range 3 {
		resp, body := get(t, tr, "http://"+addr+"/")
		if resp.Header.Get("X-Big") != big || body != "body after a big head" {
			t.Fatalf("header %d bytes, body %q", len(resp.Header.Get("X-Big")), body)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections, want 1", n)
	}
}

// TestTransportEarlyCloseDropsConn: a body closed before its end takes
// its connection with it, even when none of the rest is buffered yet.
func TestTransportEarlyCloseDropsConn(t *testing.T) {
	addr, accepted := rawServer(t, func(i int, c net.Conn, br *bufio.Reader) {
		if i == 0 {
			_ = respond(br, c, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
		}
		for respond(br, c, okResp) == nil {
		}
	})
	tr := &Transport{}
	defer tr.CloseIdleConnections()
	resp, err := tr.RoundTrip(httptestGet(addr))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 2)); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if _, err := resp.Body.Read(make([]byte, 10)); err == nil {
		t.Fatal("read after Close succeeded")
	}
	if _, body := get(t, tr, "http://"+addr+"/"); body != "ok" {
		t.Fatalf("next body %q", body)
	}
	if n := accepted.Load(); n != 2 {
		t.Fatalf("%d connections, want 2: a half-read body's connection was reused", n)
	}
}

// TestTransportCloseDuringRead: Close from another goroutine ends a Read
// blocked on the connection (how a proxy abandons an upstream whose
// client went away).
func TestTransportCloseDuringRead(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	addr, _ := rawServer(t, func(_ int, c net.Conn, br *bufio.Reader) {
		if respond(br, c, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab") == nil {
			<-release
		}
	})
	var armed atomic.Bool
	blocked := make(chan struct{}, 1)
	tr := &Transport{Dial: func(ctx context.Context, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		return enterConn{c, func() {
			if armed.Load() {
				blocked <- struct{}{}
			}
		}}, err
	}}
	defer tr.CloseIdleConnections()
	resp, err := tr.RoundTrip(httptestGet(addr))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 2)); err != nil {
		t.Fatal(err)
	}
	armed.Store(true)
	done := make(chan error, 1)
	go func() {
		_, err := resp.Body.Read(make([]byte, 8))
		done <- err
	}()
	<-blocked // the Read is on its way into the connection's Read
	resp.Body.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Read after a concurrent Close succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not end the blocked Read")
	}
	if n := idleCount(tr, addr); n != 0 {
		t.Fatalf("%d idle connections", n)
	}
}

// enterConn calls onRead as each Read starts.
type enterConn struct {
	net.Conn
	onRead func()
}

func (c enterConn) Read(p []byte) (int, error) {
	c.onRead()
	return c.Conn.Read(p)
}

type testDialError struct{ addr string }

func (e *testDialError) Error() string { return "dial " + e.addr + ": refused" }

func TestTransportDialError(t *testing.T) {
	tr := &Transport{Dial: func(_ context.Context, addr string) (net.Conn, error) {
		return nil, &testDialError{addr}
	}}
	req, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1:40001/", nil)
	_, err := tr.RoundTrip(req)
	var de *testDialError
	if !errors.As(err, &de) || de.addr != "127.0.0.1:40001" {
		t.Fatalf("%v: errors.As does not find the dial error", err)
	}
}

// TestTransportDialCancel: the request's context reaches Dial, and the
// error says both what ended it and what Dial returned.
func TestTransportDialCancel(t *testing.T) {
	tr := &Transport{Dial: func(ctx context.Context, addr string) (net.Conn, error) {
		<-ctx.Done()
		return nil, &testDialError{addr}
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:40002/", nil)
	_, err := tr.RoundTrip(req)
	var de *testDialError
	if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &de) {
		t.Fatalf("%v: want the context's error and the dial error", err)
	}
}

// countingConn counts Write calls: syscalls, for a TCP connection.
type countingConn struct {
	net.Conn
	writes *atomic.Int32
}

func (c countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

func TestTransportWritesRequest(t *testing.T) {
	heads := make(chan string, 4)
	addr, _ := rawServer(t, func(_ int, c net.Conn, br *bufio.Reader) {
		for {
			var head strings.Builder
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					return
				}
				head.WriteString(line)
				if line == "\r\n" {
					break
				}
			}
			if strings.Contains(head.String(), "Content-Length: 4") {
				_, _ = io.CopyN(io.Discard, br, 4)
			}
			heads <- head.String()
			if _, err := io.WriteString(c, okResp); err != nil {
				return
			}
		}
	})
	var writes atomic.Int32
	tr := &Transport{Dial: func(ctx context.Context, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		return countingConn{c, &writes}, err
	}}
	defer tr.CloseIdleConnections()

	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/a%20b/c?x=1&y", nil)
	req.Host = "orders.default"
	req.Header = http.Header{
		"Accept":            {"*/*"},
		"Connection":        {"keep-alive"},
		"Transfer-Encoding": {"chunked"},
		"Content-Length":    {"99"},
		"X-Bad":             {"a\r\nInjected: 1"},
	}
	do(t, tr, req)
	head := <-heads
	for _, want := range []string{"GET /a%20b/c?x=1&y HTTP/1.1\r\nHost: orders.default\r\n", "Accept: */*\r\n", "X-Bad: a  Injected: 1\r\n"} {
		if !strings.Contains(head, want) {
			t.Fatalf("head %q lacks %q", head, want)
		}
	}
	for _, bad := range []string{"Connection", "Transfer-Encoding", "Content-Length", "User-Agent", "\r\nInjected"} {
		if strings.Contains(head, bad) {
			t.Fatalf("head %q has %q", head, bad)
		}
	}
	if n := writes.Load(); n != 1 {
		t.Fatalf("%d writes for a bodiless request, want 1", n)
	}

	writes.Store(0)
	req, _ = http.NewRequest(http.MethodPost, "http://"+addr+"", strings.NewReader("body"))
	do(t, tr, req)
	if head = <-heads; !strings.HasPrefix(head, "POST / HTTP/1.1\r\n") || !strings.Contains(head, "Content-Length: 4\r\n") {
		t.Fatalf("head %q", head)
	}
	if n := writes.Load(); n != 1 {
		t.Fatalf("%d writes for a small body, want 1", n)
	}

	req, _ = http.NewRequest(http.MethodPut, "http://"+addr+"/", nil)
	do(t, tr, req)
	if head = <-heads; !strings.Contains(head, "Content-Length: 0\r\n") {
		t.Fatalf("bodiless PUT head %q lacks Content-Length: 0", head)
	}

	for _, bad := range []*http.Request{
		{Method: http.MethodConnect, URL: req.URL, Header: http.Header{}},
		{Method: "G T", URL: req.URL, Header: http.Header{}},
		{Method: http.MethodGet, URL: req.URL, Host: "a\r\nb", Header: http.Header{}},
	} {
		if _, err := tr.RoundTrip(bad); err == nil {
			t.Fatalf("%q %q: sent", bad.Method, bad.Host)
		}
	}
}

func TestTransportIdlePool(t *testing.T) {
	addr, conns := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}))
	tr := &Transport{MaxIdlePerHost: 1}
	// Two exchanges in flight at once: two connections, one kept.
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
	r1, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []*http.Response{r1, r2} {
		_, _ = io.ReadAll(r.Body)
		r.Body.Close()
	}
	tr.mu.Lock()
	n := len(tr.idle[addr])
	tr.mu.Unlock()
	if n != 1 || conns.Load() != 2 {
		t.Fatalf("%d idle of %d connections, want 1 of 2", n, conns.Load())
	}
	tr.CloseIdleConnections()
	get(t, tr, "http://"+addr+"/")
	if n := conns.Load(); n != 3 {
		t.Fatalf("%d connections after CloseIdleConnections, want 3", n)
	}
	tr.CloseIdleConnections()

	// Below zero: nothing is kept.
	none := &Transport{MaxIdlePerHost: -1}
	get(t, none, "http://"+addr+"/")
	if n := idleCount(none, addr); n != 0 {
		t.Fatalf("MaxIdlePerHost -1 kept %d connections", n)
	}
}

// pipeOK is the client end of a net.Pipe whose server answers every
// request with okResp (synctest-friendly: no sockets).
func pipeOK() net.Conn {
	client, server := net.Pipe()
	go func() {
		defer server.Close()
		br := bufio.NewReader(server)
		for respond(br, server, okResp) == nil {
		}
	}()
	return client
}

// TestTransportIdleTimeout runs in a synctest bubble over net.Pipe
// connections, so the idle timer's time is the bubble's.
func TestTransportIdleTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var dials atomic.Int32
		tr := &Transport{IdleTimeout: time.Minute, Dial: func(context.Context, string) (net.Conn, error) {
			dials.Add(1)
			return pipeOK(), nil
		}}
		defer tr.CloseIdleConnections()
		get(t, tr, "http://pipe:80/")
		time.Sleep(59 * time.Second)
		get(t, tr, "http://pipe:80/")
		if n := dials.Load(); n != 1 {
			t.Fatalf("%d dials within the idle timeout, want 1", n)
		}
		expired := func() {
			t.Helper()
			time.Sleep(61 * time.Second)
			synctest.Wait()
			if n := idleCount(tr, "pipe:80"); n != 0 {
				t.Fatalf("%d idle connections after the idle timeout", n)
			}
		}
		expired() // a connection's second idle period
		get(t, tr, "http://pipe:80/")
		if n := dials.Load(); n != 2 {
			t.Fatalf("%d dials after the idle timeout, want 2", n)
		}
		expired() // and a new connection's first
	})
}

func TestTransportParallel(t *testing.T) {
	addr, _ := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.URL.Path)
	}))
	tr := &Transport{MaxIdlePerHost: 4}
	defer tr.CloseIdleConnections()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 25 {
				p := fmt.Sprintf("/%d/%d", g, i)
				req, _ := http.NewRequest(http.MethodGet, "http://"+addr+p, nil)
				resp, err := tr.RoundTrip(req)
				if err != nil {
					t.Error(err)
					return
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || string(b) != p {
					t.Errorf("%s: %q, %v", p, b, err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// BenchmarkTransport: GETs through this Transport and net/http's, parallel
// 8, against one local net/http server. Allocations and CPU count the
// whole process, the server's included (the same server for both).
func BenchmarkTransport(b *testing.B) {
	addr, _ := countingServer(b, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header()["Content-Type"] = []string{"text/plain"}
		_, _ = w.Write([]byte("ok"))
	}))
	for _, tc := range []struct {
		name string
		tr   interface {
			http.RoundTripper
			CloseIdleConnections()
		}
		ctx bool // a cancellable context per request, as the proxy's
	}{
		{"http1", &Transport{MaxIdlePerHost: 64}, false},
		{"nethttp", &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}, false},
		{"http1,ctx", &Transport{MaxIdlePerHost: 64}, true},
		{"nethttp,ctx", &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			defer tc.tr.CloseIdleConnections()
			b.ReportAllocs()
			b.SetParallelism(8)
			cpu0 := processCPU(b)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/bench", nil)
				buf := make([]byte, 64)
				for pb.Next() {
					if err := benchGET(tc.tr, req, buf, tc.ctx); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N)/1e3, "cpu-µs/op")
		})
	}
}

// benchGET does one GET and reads its body, under a cancellable context
// when ctxOn.
func benchGET(tr http.RoundTripper, req *http.Request, buf []byte, ctxOn bool) error {
	if ctxOn {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		req = req.WithContext(ctx)
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	for {
		if _, err := resp.Body.Read(buf); err != nil {
			break
		}
	}
	if resp.StatusCode != 200 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// processCPU is the process's user+system CPU time so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

type dialNotes []time.Duration

func (d *dialNotes) NoteDial(took time.Duration) { *d = append(*d, took) }

// TestTransportNotesDials: RoundTripNoting tells its noter how long a
// connection it had to make took, and nothing when it reused one, so a
// balancer can leave the handshake out of an endpoint's latency.
func TestTransportNotesDials(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const handshake = 30 * time.Millisecond
		tr := &Transport{Dial: func(context.Context, string) (net.Conn, error) {
			time.Sleep(handshake)
			return pipeOK(), nil
		}}
		defer tr.CloseIdleConnections()
		send := func() dialNotes {
			t.Helper()
			var notes dialNotes
			req, _ := http.NewRequest("GET", "http://pipe:80/", nil)
			resp, err := tr.RoundTripNoting(req, &notes)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return notes
		}
		if got := send(); len(got) != 1 || got[0] != handshake {
			t.Errorf("first request's dials noted %v, want [%v]", got, handshake)
		}
		if got := send(); len(got) != 0 {
			t.Errorf("a reused connection noted %v", got)
		}
	})
}
