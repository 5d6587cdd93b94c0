package push

import (
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
)

// Keepalive: the client pings an idle connection every clientPingEvery so a
// dead control plane (or a silently dropped NAT entry) is noticed; the
// server must permit pings at least that often or it would close the
// connection with ENHANCE_YOUR_CALM.
const (
	clientPingEvery   = 20 * time.Second
	clientPingTimeout = 10 * time.Second
	serverMinPing     = 10 * time.Second
)

// HandshakeTimeout bounds a new connection's TLS and HTTP/2 handshakes on
// the control plane's gRPC port: a client that connects and stalls is
// closed after it instead of holding a socket and a goroutine (grpc-go's
// default is 120s).
const HandshakeTimeout = 5 * time.Second

// ServerTLSConfig is the control plane's TLS config for the Mesh service:
// client certificates are optional at the handshake (bootstrap Certify has
// none) but, when given, must chain to roots(), which is read per handshake
// so a rotated bundle applies to new connections at once.
func ServerTLSConfig(getCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error), roots func() *x509.CertPool) *tls.Config {
	base := &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: getCertificate,
		ClientAuth:     tls.VerifyClientCertIfGiven,
		NextProtos:     []string{"h2"},
	}
	cfg := base.Clone()
	cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		c := base.Clone()
		c.ClientCAs = roots()
		return c, nil
	}
	return cfg
}

// GRPCServerOptions are the grpc.ServerOptions the Mesh service expects:
// TLS from tlsConfig and a keepalive policy that admits the client's pings.
func GRPCServerOptions(tlsConfig *tls.Config) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.Creds(credentials.NewTLS(tlsConfig)),
		grpc.ConnectionTimeout(HandshakeTimeout),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             serverMinPing,
			PermitWithoutStream: true,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    time.Minute,
			Timeout: 20 * time.Second,
		}),
	}
}

// TokenValidator returns a ValidToken func that accepts any of tokens,
// comparing in constant time. Empty tokens are never valid.
func TokenValidator(tokens ...string) func(string) bool {
	known := make([][]byte, 0, len(tokens))
	for _, t := range tokens {
		if t != "" {
			known = append(known, []byte(t))
		}
	}
	return func(token string) bool {
		if token == "" {
			return false
		}
		ok := 0
		for _, k := range known {
			ok |= subtle.ConstantTimeCompare(k, []byte(token))
		}
		return ok == 1
	}
}
