package http1

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestTransportFullDuplex: a server that echoes the body as it reads it
// fills its send buffer long before an 8 MiB body is in; the transport
// must read the response while it writes, or both sides wait forever.
func TestTransportFullDuplex(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = http.NewResponseController(w).EnableFullDuplex()
		_, _ = io.Copy(w, r.Body)
	}))
	defer srv.Close()
	tr := &Transport{}
	defer tr.CloseIdleConnections()
	body := bytes.Repeat([]byte("0123456789abcdef"), 512<<10) // 8 MiB
	for _, tc := range []struct {
		name string
		body io.Reader
		n    int64
	}{
		{"in memory", bytes.NewReader(body), int64(len(body))},
		{"streamed, known length", struct{ io.Reader }{bytes.NewReader(body)}, int64(len(body))},
		{"streamed, chunked", struct{ io.Reader }{bytes.NewReader(body)}, -1},
	} {
		// A deadlock ends at the context's deadline, as a failure.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL, tc.body)
		req.ContentLength = tc.n
		resp, err := tr.RoundTrip(req)
		if err != nil {
			cancel()
			t.Fatalf("%s: %v", tc.name, err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		if err != nil || !bytes.Equal(got, body) {
			t.Fatalf("%s: %d of %d bytes back, %v", tc.name, len(got), len(body), err)
		}
	}
}

// TestTransportBodyWriteFailure: a streamed body that fails mid-way ends
// the exchange with the body's error, not a hang waiting for a response
// the server cannot give, and the connection is not reused.
func TestTransportBodyWriteFailure(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	defer srv.Close()
	tr := &Transport{}
	defer tr.CloseIdleConnections()
	broken := errors.New("client body broke")
	req, _ := http.NewRequest(http.MethodPost, srv.URL, io.MultiReader(strings.NewReader("part"), failingReader{broken}))
	req.ContentLength = 100
	start := time.Now()
	_, err := tr.RoundTrip(req)
	if !errors.Is(err, broken) || time.Since(start) > 5*time.Second {
		t.Fatalf("err %v after %v, want the body's error at once", err, time.Since(start))
	}
	if idle := idleCount(tr, strings.TrimPrefix(srv.URL, "http://")); idle != 0 {
		t.Errorf("%d idle connections after a broken body, want 0", idle)
	}
}

type failingReader struct{ err error }

func (f failingReader) Read([]byte) (int, error) { return 0, f.err }
