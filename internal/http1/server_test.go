package http1

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// startServer serves h on a loopback listener with s's settings.
func startServer(t testing.TB, s *Server, h http.Handler) string {
	t.Helper()
	s.Handler = h
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(func() { ln.Close(); s.Close() })
	return ln.Addr().String()
}

// rawExchange writes req on a fresh connection and returns all the
// server wrote until it closed or went quiet.
func rawExchange(t *testing.T, addr, req string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	b, _ := io.ReadAll(c)
	return string(b)
}

func TestServerKeepAliveAndBodies(t *testing.T) {
	var conns atomic.Int32
	s := &Server{ConnState: func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}}
	addr := startServer(t, s, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Trailer-Seen", r.Trailer.Get("X-Sum"))
		fmt.Fprintf(w, "%s %s %q len=%d host=%s", r.Method, r.URL.RequestURI(), b, r.ContentLength, r.Host)
	}))
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	for i := range 3 {
		resp, err := c.Post("http://"+addr+"/p/a%2Fb?q=1", "text/plain", strings.NewReader(fmt.Sprint("body", i)))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := fmt.Sprintf(`POST /p/a%%2Fb?q=1 "body%d" len=5 host=%s`, i, addr)
		if string(b) != want || resp.ContentLength != int64(len(want)) {
			t.Fatalf("got %q (length %d), want %q with its Content-Length", b, resp.ContentLength, want)
		}
	}
	// A chunked request with a trailer.
	req, _ := http.NewRequest("PUT", "http://"+addr+"/c", io.MultiReader(strings.NewReader("ab"), strings.NewReader("cd")))
	req.ContentLength = -1
	req.Trailer = http.Header{"X-Sum": {"42"}}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.HasPrefix(string(b), `PUT /c "abcd" len=-1`) || resp.Header.Get("X-Trailer-Seen") != "42" {
		t.Errorf("chunked request: %q, trailer seen %q", b, resp.Header.Get("X-Trailer-Seen"))
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections for 4 sequential requests, want 1 (keep-alive)", n)
	}
}

func TestServerStreamsWithTrailers(t *testing.T) {
	addr := startServer(t, &Server{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "Grpc-Status")
		io.WriteString(w, "first")
		w.(http.Flusher).Flush()
		io.WriteString(w, strings.Repeat("x", 10000))
		w.Header().Set("Grpc-Status", "0")
		w.Header().Set(http.TrailerPrefix+"X-Late", "yes")
	}))
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if len(b) != 10005 || resp.ContentLength != -1 || resp.TransferEncoding[0] != "chunked" {
		t.Fatalf("body %d bytes, length %d, TE %v", len(b), resp.ContentLength, resp.TransferEncoding)
	}
	if resp.Trailer.Get("Grpc-Status") != "0" || resp.Trailer.Get("X-Late") != "yes" {
		t.Errorf("trailers %v", resp.Trailer)
	}
}

func TestServerHeadAndNoContent(t *testing.T) {
	addr := startServer(t, &Server{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/204" {
			w.WriteHeader(204)
			return
		}
		w.Header().Set("Content-Length", "5")
		io.WriteString(w, "hello")
	}))
	got := rawExchange(t, addr, "HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET /204 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
	if !strings.HasPrefix(got, "HTTP/1.1 200 OK\r\n") || strings.Contains(got, "hello") || !strings.Contains(got, "Content-Length: 5\r\n") {
		t.Errorf("HEAD: %q", got)
	}
	if !strings.Contains(got, "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n") {
		t.Errorf("pipelined 204 after HEAD: %q", got)
	}
}

func TestServerRefusesMalformedHeads(t *testing.T) {
	var refused []int
	var mu sync.Mutex
	var served atomic.Int32
	s := &Server{Limits: Limits{MaxHeadBytes: 1024}, Refused: func(e *Error) {
		mu.Lock()
		refused = append(refused, e.Status)
		mu.Unlock()
	}}
	addr := startServer(t, s, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	for _, tc := range []struct {
		name, req string
		status    int
	}{
		{"bare LF", "GET / HTTP/1.1\nHost: a\n\n", 400},
		{"CL with TE", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"oversize head", "GET / HTTP/1.1\r\nHost: a\r\nX: " + strings.Repeat("a", 2000) + "\r\n\r\n", 431},
		{"HTTP/2.0 on h1", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505},
		{"preface without h2c", h2Preface, 505},
	} {
		got := rawExchange(t, addr, tc.req)
		if want := fmt.Sprintf("HTTP/1.1 %d ", tc.status); !strings.HasPrefix(got, want) || !strings.Contains(got, "Connection: close\r\n") {
			t.Errorf("%s: got %q, want %q and Connection: close", tc.name, got, want)
		}
	}
	// A malformed chunk sent with its head is refused before the handler.
	got := rawExchange(t, addr, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n")
	if !strings.HasPrefix(got, "HTTP/1.1 400") {
		t.Errorf("malformed chunk with the head: %q", got)
	}
	// Sent after the handler began, it fails the handler's body read,
	// counted all the same.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
	for served.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	io.WriteString(c, "0x3\r\nabc\r\n0\r\n\r\n")
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	io.ReadAll(c)
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(refused) != "[400 400 431 505 505 400 400]" || served.Load() != 1 {
		t.Errorf("refused %v, handler ran %d times; want [400 400 431 505 505 400 400] and 1", refused, served.Load())
	}
}

func TestServerBigHeadAndPipelinedRest(t *testing.T) {
	addr := startServer(t, &Server{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s:%d:%s", r.URL.Path, len(r.Header.Get("X-Big")), b)
	}))
	big := strings.Repeat("b", 9000) // over the 4 KiB read buffer
	got := rawExchange(t, addr, "POST /one HTTP/1.1\r\nHost: a\r\nX-Big: "+big+"\r\nContent-Length: 3\r\n\r\nxyzGET /two HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
	if !strings.Contains(got, "/one:9000:xyz") || !strings.Contains(got, "/two:0:") {
		t.Errorf("big head then pipelined request: %q", got)
	}
}

func TestServerExpectContinue(t *testing.T) {
	addr := startServer(t, &Server{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	}))
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
	br := bufio.NewReader(c)
	line, _ := br.ReadString('\n')
	if line != "HTTP/1.1 100 Continue\r\n" {
		t.Fatalf("got %q before the body, want 100 Continue", line)
	}
	br.ReadString('\n')
	io.WriteString(c, "ok")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if string(b) != "ok" {
		t.Errorf("body %q", b)
	}
}

func TestServerHijackUpgrade(t *testing.T) {
	addr := startServer(t, &Server{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		brw.Flush()
		line, _ := brw.ReadString('\n')
		brw.WriteString("echo:" + line)
		brw.Flush()
	}))
	// The first echoed line was sent with the request: it waits in the
	// server's buffer and must reach the hijacker.
	got := rawExchange(t, addr, "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nhello\n")
	if !strings.HasSuffix(got, "\r\n\r\necho:hello\n") {
		t.Errorf("upgrade: %q", got)
	}
}

func TestServerCancelsWhenClientGoes(t *testing.T) {
	canceled := make(chan struct{})
	entered := make(chan struct{})
	addr := startServer(t, &Server{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		select {
		case <-r.Context().Done():
			close(canceled)
		case <-time.After(5 * time.Second):
		}
	}))
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	<-entered
	c.Close()
	select {
	case <-canceled:
	case <-time.After(3 * time.Second):
		t.Fatal("the handler's context outlived its client")
	}
}

func TestServerFastHandlerNotCanceled(t *testing.T) {
	// A pipelined second request arriving while the first is served is
	// data, not the client going away.
	addr := startServer(t, &Server{watchDelay: 2 * time.Millisecond}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(10 * time.Millisecond) // past watchDelay: the watcher reads
		if r.Context().Err() != nil {
			w.WriteHeader(499)
		}
		io.WriteString(w, r.URL.Path)
	}))
	got := rawExchange(t, addr, "GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
	if strings.Count(got, "HTTP/1.1 200 OK") != 2 || !strings.HasSuffix(got, "/b") {
		t.Errorf("pipelined: %q", got)
	}
}

func TestServerShutdownDrains(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{})
	s := &Server{}
	addr := startServer(t, s, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(entered)
			<-release
		}
		io.WriteString(w, "done")
	}))
	idle, _ := net.Dial("tcp", addr)
	defer idle.Close()
	io.WriteString(idle, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(idle), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	busy, _ := net.Dial("tcp", addr)
	defer busy.Close()
	io.WriteString(busy, "GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
	<-entered
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	// The idle connection is closed at once.
	_ = idle.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := idle.Read(make([]byte, 1)); err == nil {
		t.Errorf("idle connection still open after Shutdown (read %d)", n)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	b, _ := io.ReadAll(busy)
	if !strings.Contains(string(b), "Connection: close\r\n") || !strings.HasSuffix(string(b), "done") {
		t.Errorf("in-flight response during drain: %q", b)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

func TestServerPrefaceHandedOff(t *testing.T) {
	got := make(chan string, 1)
	s := &Server{Preface: func(c net.Conn) {
		defer c.Close()
		b := make([]byte, len(h2Preface)+3)
		_, _ = io.ReadFull(c, b)
		got <- string(b)
	}}
	addr := startServer(t, s, http.NotFoundHandler())
	c, _ := net.Dial("tcp", addr)
	defer c.Close()
	io.WriteString(c, h2Preface+"abc")
	select {
	case b := <-got:
		if b != h2Preface+"abc" {
			t.Errorf("handed-off connection replayed %q", b)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("preface not handed off")
	}
}

func TestServerIdleTimeout(t *testing.T) {
	addr := startServer(t, &Server{IdleTimeout: 50 * time.Millisecond}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	c, _ := net.Dial("tcp", addr)
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	start := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	b, _ := io.ReadAll(c)
	if !strings.HasPrefix(string(b), "HTTP/1.1 200") || time.Since(start) > 2*time.Second {
		t.Errorf("idle connection kept %v: %q", time.Since(start), b)
	}
}

func BenchmarkServer(b *testing.B) {
	body := []byte("ok")
	addr := startServer(b, &Server{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Content-Type"] = []string{"text/plain"}
		w.Write(body)
	}))
	benchGet(b, addr)
}

func BenchmarkNetHTTPServer(b *testing.B) {
	body := []byte("ok")
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Content-Type"] = []string{"text/plain"}
		w.Write(body)
	})}
	go srv.Serve(ln)
	defer srv.Close()
	benchGet(b, ln.Addr().String())
}

// benchGet sends keep-alive GETs on 8 raw connections.
func benchGet(b *testing.B, addr string) {
	req := []byte("GET /bench HTTP/1.1\r\nHost: orders\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
	b.ReportAllocs()
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		for pb.Next() {
			if _, err := c.Write(req); err != nil {
				b.Error(err)
				return
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}

// framingCases are request streams a smuggling attack would send or that
// merely look like one; bad ones must be refused (and counted) before any
// handler sees a request past the ambiguity.
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
	{"body that looks like CL+TE", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 44\r\n\r\nContent-Length: 1\r\nTransfer-Encoding: chunked", false},
	{"connect then bytes", "CONNECT a:82 HTTP/1.1\r\nHost: a:82\r\n\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\n", false},
	{"upgrade then bytes", "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x00 x\r\n\r\n", false},
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

func TestServerFramingCases(t *testing.T) {
	for _, tc := range framingCases {
		t.Run(tc.name, func(t *testing.T) {
			var refused atomic.Int32
			handedOff := make(chan struct{}, 1)
			s := &Server{
				Refused: func(*Error) { refused.Add(1) },
				Preface: func(c net.Conn) { c.Close(); handedOff <- struct{}{} },
			}
			addr := startServer(t, s, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodConnect || r.Header.Get("Upgrade") != "" {
					c, _, err := http.NewResponseController(w).Hijack()
					if err == nil {
						c.Close()
					}
					return
				}
				_, _ = io.Copy(io.Discard, r.Body)
			}))
			rawExchange(t, addr, tc.raw)
			if tc.name == "h2c preface" {
				select {
				case <-handedOff:
				case <-time.After(time.Second):
					t.Error("preface not handed off")
				}
			}
			if got := refused.Load() > 0; got != tc.bad {
				t.Errorf("refused = %v, want %v", got, tc.bad)
			}
		})
	}
}

// TestServerWatchStopRace: handlers that end right about when the
// client-gone watch starts race its read against stop; every response
// must still go out (a lost wake-up hangs the connection).
func TestServerWatchStopRace(t *testing.T) {
	const delay = 2 * time.Millisecond
	addr := startServer(t, &Server{ReadHeaderTimeout: time.Minute, watchDelay: delay}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(delay - 200*time.Microsecond + time.Duration(len(r.URL.Path)%5)*100*time.Microsecond)
	}))
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 2 * time.Second}
	for i := range 300 {
		resp, err := c.Get("http://" + addr + "/" + strings.Repeat("x", i%7))
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		resp.Body.Close()
	}
}

// TestServerLateBodyReaderSealed: a handler that leaves a goroutine
// reading its body after returning must not read the next request's body
// on the same connection: it gets http.ErrBodyReadAfterClose.
func TestServerLateBodyReaderSealed(t *testing.T) {
	late := make(chan io.Reader, 1)
	lateGot := make(chan string, 1)
	second := make(chan string, 1)
	addr := startServer(t, &Server{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/first" {
			late <- r.Body // read only once the next request is in
			return
		}
		b := <-late
		got, err := io.ReadAll(b)
		lateGot <- fmt.Sprintf("%q %v", got, err)
		mine, _ := io.ReadAll(r.Body)
		second <- string(mine)
	}))
	got := rawExchange(t, addr, "POST /first HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\naaaaaPOST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nbbbbb")
	if strings.Count(got, "HTTP/1.1 200 OK") != 2 {
		t.Fatalf("responses %q", got)
	}
	if l, s := <-lateGot, <-second; l != `"" http: invalid Read on closed Body` || s != "bbbbb" {
		t.Errorf("late reader of the first body got %s; the second handler got %q", l, s)
	}
}

// TestServerBigHeadRestThenIdle: what followed a head over the read
// buffer (a large body, then a pipelined request) is served in full,
// even when the body's reads leave the buffer empty with the next
// request still held back.
func TestServerBigHeadRestThenIdle(t *testing.T) {
	addr := startServer(t, &Server{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s:%d", r.URL.Path, len(b))
	}))
	body := strings.Repeat("z", 64<<10)
	got := rawExchange(t, addr, "POST /one HTTP/1.1\r\nHost: a\r\nX-Big: "+strings.Repeat("b", 9000)+"\r\nContent-Length: "+fmt.Sprint(len(body))+"\r\n\r\n"+body+
		"GET /two HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
	if !strings.Contains(got, "/one:65536") || !strings.Contains(got, "/two:0") {
		t.Errorf("big head, large body, pipelined request: %.300q", got)
	}
}

// TestServerIdleHandoff: a connection idle past idleHandoff moves to a
// fresh goroutine and still serves its next request, and the idle timeout
// still counts from the end of the last response, not from the handoff.
func TestServerIdleHandoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const idle = time.Second
		s := &Server{IdleTimeout: idle, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, r.URL.Path)
		})}
		cli, srv := net.Pipe()
		defer cli.Close()
		if !s.ServeConn(srv) {
			t.Fatal("not served")
		}
		br := bufio.NewReader(cli)
		get := func(path string) {
			t.Helper()
			if _, err := io.WriteString(cli, "GET "+path+" HTTP/1.1\r\nHost: a\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("GET %s: %v", path, err)
			}
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 || string(b) != path {
				t.Fatalf("GET %s: %d %q", path, resp.StatusCode, b)
			}
		}
		get("/a")
		time.Sleep(idleHandoff / 2) // within the handoff: same goroutine
		get("/b")
		time.Sleep(idleHandoff + idle/4) // past it: resume waits
		get("/c")
		start := time.Now()
		if _, err := br.ReadByte(); err == nil {
			t.Fatal("the server wrote on an idle connection")
		}
		if got := time.Since(start); got != idle {
			t.Errorf("idle connection closed after %v, want %v", got, idle)
		}
	})
}

// TestServerWatchRearms: the client-gone watch's timer is not reset per
// request; a slow request after quick ones on the same connection is still
// watched from its own start, and the handler is canceled once its client
// goes.
func TestServerWatchRearms(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const delay = 50 * time.Millisecond
		canceledAfter := make(chan time.Duration, 1)
		s := &Server{watchDelay: delay, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/slow" {
				time.Sleep(delay / 4)
				return
			}
			start := time.Now()
			select {
			case <-r.Context().Done():
				canceledAfter <- time.Since(start)
			case <-time.After(time.Hour):
				canceledAfter <- -1
			}
		})}
		cli, srv := net.Pipe()
		if !s.ServeConn(srv) {
			t.Fatal("not served")
		}
		br := bufio.NewReader(cli)
		for i := range 6 { // quick requests, 12.5 ms apart: the timer set by the first is due mid-way
			io.WriteString(cli, "GET /q HTTP/1.1\r\nHost: a\r\n\r\n")
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("request %d: %v", i, err)
			}
			resp.Body.Close()
		}
		io.WriteString(cli, "GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
		synctest.Wait()
		cli.Close()
		if got := <-canceledAfter; got < 0 || got > delay {
			t.Errorf("slow handler canceled after %v, want within the %v watch delay", got, delay)
		}
	})
}

// TestServerAdoptHeader: a handler may hand the response a whole header
// map while it has no fields and nothing is written; after that the
// header is the handler's to fill, and adopting is refused.
func TestServerAdoptHeader(t *testing.T) {
	type adopter interface{ AdoptHeader(http.Header) bool }
	addr := startServer(t, &Server{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a := w.(adopter)
		switch r.URL.Path {
		case "/adopt":
			if !a.AdoptHeader(http.Header{"X-Up": {"1"}}) {
				t.Error("adopt refused on a fresh response")
			}
			w.Header()["X-Own"] = []string{"2"} // the adopted map is the header now
		case "/late":
			w.Header()["X-Own"] = []string{"2"}
			if a.AdoptHeader(http.Header{"X-Up": {"1"}}) {
				t.Error("adopt took over a header with fields")
			}
		case "/written":
			w.WriteHeader(204)
			if a.AdoptHeader(http.Header{"X-Up": {"1"}}) {
				t.Error("adopt after WriteHeader")
			}
		}
	}))
	got := rawExchange(t, addr, "GET /adopt HTTP/1.1\r\nHost: a\r\n\r\nGET /late HTTP/1.1\r\nHost: a\r\n\r\nGET /written HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
	resps := strings.Split(got, "HTTP/1.1 ")
	if len(resps) != 4 {
		t.Fatalf("responses: %q", got)
	}
	if !strings.Contains(resps[1], "X-Up: 1\r\n") || !strings.Contains(resps[1], "X-Own: 2\r\n") {
		t.Errorf("adopted: %q", resps[1])
	}
	if strings.Contains(resps[2], "X-Up") || !strings.Contains(resps[2], "X-Own: 2\r\n") {
		t.Errorf("late: %q", resps[2])
	}
	if strings.Contains(resps[3], "X-Up") || !strings.HasPrefix(resps[3], "204") {
		t.Errorf("written: %q", resps[3])
	}
}

// TestServerReusesFinishedRequest: the requests of one keep-alive
// connection share one *http.Request and header map, each request seeing
// only its own fields.
func TestServerReusesFinishedRequest(t *testing.T) {
	var reqs []*http.Request
	var hdrs []string
	addr := startServer(t, &Server{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reqs = append(reqs, r)
		hdrs = append(hdrs, fmt.Sprintf("%s %v", r.URL.Path, r.Header))
		fmt.Fprint(w, "ok")
	}))
	out := rawExchange(t, addr, "GET /a HTTP/1.1\r\nHost: x\r\nX-First: 1\r\nX-Both: a\r\n\r\n"+
		"GET /b HTTP/1.1\r\nHost: x\r\nX-Both: b\r\nConnection: close\r\n\r\n")
	if strings.Count(out, "200 OK") != 2 {
		t.Fatalf("answers: %q", out)
	}
	want := []string{"/a map[X-Both:[a] X-First:[1]]", "/b map[Connection:[close] X-Both:[b]]"}
	if !slices.Equal(hdrs, want) {
		t.Fatalf("handlers saw %q, want %q", hdrs, want)
	}
	if reqs[0] != reqs[1] {
		t.Error("the second request on the connection was not the first's, reused")
	}
}
