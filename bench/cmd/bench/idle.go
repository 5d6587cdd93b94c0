package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"
)

// The idle keep-alive load: many HTTP/1.1 connections to one sidecar's
// outbound port, each first used for one request (so it is a real
// keep-alive connection, past the proxy's header read), then held idle
// while the sidecar's RSS is read; then one request on each of a random
// sample of them, one at a time, timed.

// heldConn is one idle keep-alive connection.
type heldConn struct {
	c net.Conn
	r *bufio.Reader
}

// idleResult is the idle section of latest.json.
type idleResult struct {
	Connections int     `json:"connections"`
	Sidecar     string  `json:"sidecar"`          // which proxy held them
	RSSBeforeMB float64 `json:"rss_before_mb"`    // that proxy before the first one opened
	RSSHeldMB   float64 `json:"rss_held_mb"`      // with all of them open and idle
	AnonHeldMB  float64 `json:"rss_held_anon_mb"` // the anonymous part of it (heap, stacks)
	PeerRSSMB   float64 `json:"peer_rss_mb"`      // the other half meanwhile
	OpenSeconds float64 `json:"open_s"`           // to open and use them all
	Sampled     int     `json:"sampled"`          // requests on random held connections
	P50         float64 `json:"p50_ms"`
	P99         float64 `json:"p99_ms"`
}

// roundTrip sends one GET for host on hc and reads the whole response.
func (hc *heldConn) roundTrip(host string) error {
	if err := hc.c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return err
	}
	if _, err := io.WriteString(hc.c, "GET / HTTP/1.1\r\nHost: "+host+"\r\n\r\n"); err != nil {
		return err
	}
	resp, err := http.ReadResponse(hc.r, nil)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	switch {
	case err != nil:
		return err
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("status %s", resp.Status)
	case resp.Close:
		return errors.New("the proxy closed a keep-alive connection")
	}
	return nil
}

// openHeld opens n connections to a with workers in parallel, each used
// for one request; on any failure it closes what it opened.
func openHeld(ctx context.Context, a, host string, n, workers int) ([]*heldConn, error) {
	conns := make([]*heldConn, n)
	idx := make(chan int)
	errc := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range idx {
				c, err := net.DialTimeout("tcp", a, 5*time.Second)
				if err != nil {
					errc <- fmt.Errorf("connection %d: %w", i, err)
					return
				}
				hc := &heldConn{c: c, r: bufio.NewReaderSize(c, 1024)}
				conns[i] = hc
				if err := hc.roundTrip(host); err != nil {
					errc <- fmt.Errorf("connection %d: first request: %w", i, err)
					return
				}
			}
		})
	}
	var err error
feed:
	for i := range n {
		select {
		case idx <- i:
		case err = <-errc:
			break feed
		case <-ctx.Done():
			err = ctx.Err()
			break feed
		}
	}
	close(idx)
	wg.Wait()
	close(errc)
	if err == nil {
		err = <-errc // nil when none failed
	}
	if err != nil {
		closeHeld(conns)
		return nil, fmt.Errorf("idle connections: %w", err)
	}
	return conns, nil
}

func closeHeld(conns []*heldConn) {
	for _, hc := range conns {
		if hc != nil {
			hc.c.Close()
		}
	}
}

// sampleHeld sends one request on each of k random connections, one at a
// time, and returns the sorted latencies.
func sampleHeld(conns []*heldConn, host string, k int, rng *rand.Rand) ([]time.Duration, error) {
	k = min(k, len(conns))
	lat := make([]time.Duration, 0, k)
	for _, i := range rng.Perm(len(conns))[:k] {
		t0 := time.Now()
		if err := conns[i].roundTrip(host); err != nil {
			return nil, fmt.Errorf("idle connections: request on held connection %d: %w", i, err)
		}
		lat = append(lat, time.Since(t0))
	}
	sortDurations(lat)
	return lat, nil
}

// raiseNoFile lifts RLIMIT_NOFILE as far as allowed, for the harness and
// the processes it starts (they inherit it): the idle section holds
// thousands of sockets on both ends.
func raiseNoFile(want uint64) (uint64, error) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, fmt.Errorf("rlimit: %w", err)
	}
	if l.Max < want {
		// Raising the hard limit needs privilege; try, and keep the old
		// one if refused.
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: want}); err == nil {
			return want, nil
		}
	}
	l.Cur = min(max(l.Cur, want), l.Max)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, fmt.Errorf("rlimit: %w", err)
	}
	return l.Cur, nil
}
