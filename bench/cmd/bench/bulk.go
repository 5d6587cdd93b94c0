package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

// The opaque TCP load: a source on loopback writes a fixed number of bytes
// to each connection and closes it; the client reads until EOF or its time
// limit and reports the rate. Server to client, so the end of the transfer
// is the tunnel passing on the close, which every TCP proxy must do.

// bulkSource is the TCP source server.
type bulkSource struct {
	addr  string
	l     net.Listener
	limit int64 // bytes per connection
}

func startBulkSource(limit int64) (*bulkSource, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("tcp source: %w", err)
	}
	s := &bulkSource{addr: l.Addr().String(), l: l, limit: limit}
	go s.serve()
	return s, nil
}

func (s *bulkSource) serve() {
	for {
		c, err := s.l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			// A reader that stops early (its time limit) fails the write:
			// nothing to report, the reader has its figure.
			_, _ = io.CopyBuffer(c, io.LimitReader(zeros{}, s.limit), make([]byte, 256<<10))
		}()
	}
}

func (s *bulkSource) stop() { s.l.Close() }

// zeros reads as an endless run of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// bulkResult is one transfer.
type bulkResult struct {
	bytes   int64
	elapsed time.Duration
}

func (r bulkResult) mbps() float64 { return float64(r.bytes) / (1 << 20) / r.elapsed.Seconds() }

// readBulk dials a, reads until EOF or limit time has passed, and
// returns what arrived. Stopping at the time limit is a result, not an
// error; a transfer that ends early is one.
func readBulk(a string, want int64, limit time.Duration) (bulkResult, error) {
	start := time.Now()
	c, err := net.DialTimeout("tcp", a, 5*time.Second)
	if err != nil {
		return bulkResult{}, fmt.Errorf("tcp bulk: %w", err)
	}
	defer c.Close()
	if err := c.SetReadDeadline(start.Add(limit)); err != nil {
		return bulkResult{}, err
	}
	n, err := io.CopyBuffer(io.Discard, c, make([]byte, 256<<10))
	r := bulkResult{bytes: n, elapsed: time.Since(start)}
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		if n == 0 {
			return r, errors.New("tcp bulk: no byte arrived")
		}
		return r, nil
	case err != nil:
		return r, fmt.Errorf("tcp bulk: after %d bytes: %w", n, err)
	case n != want:
		return r, fmt.Errorf("tcp bulk: connection closed after %d of %d bytes", n, want)
	}
	return r, nil
}
