package testpki

import (
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"
)

// Handshake is what Serve saw of one connection.
type Handshake struct {
	State tls.ConnectionState
	Err   error // the handshake's error, else check's
}

// Serve accepts TLS connections with cfg on a loopback port until the test
// ends. Per connection it handshakes, runs check (nil: none) on the state,
// reports both on the channel and, if neither failed, writes "ok".
func Serve(t testing.TB, cfg *tls.Config, check func(tls.ConnectionState) error) (string, <-chan Handshake) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	out := make(chan Handshake, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				tc := tls.Server(c, cfg)
				err := tc.Handshake()
				if err == nil && check != nil {
					err = check(tc.ConnectionState())
				}
				out <- Handshake{State: tc.ConnectionState(), Err: err}
				if err == nil {
					io.WriteString(tc, "ok")
				}
			}()
		}
	}()
	return ln.Addr().String(), out
}

// Dial handshakes with addr and reads Serve's "ok", which in TLS 1.3 is
// where a server's rejection of the client certificate surfaces.
func Dial(t testing.TB, addr string, cfg *tls.Config) (tls.ConnectionState, error) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	tc := tls.Client(c, cfg)
	if err := tc.Handshake(); err != nil {
		return tls.ConnectionState{}, err
	}
	_, err = io.ReadFull(tc, make([]byte, 2))
	return tc.ConnectionState(), err
}
