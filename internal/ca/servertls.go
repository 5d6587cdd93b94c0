package ca

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"trellis.dev/trellis/internal/identity"
)

// RootPool is the trust bundle as a pool, for clients of the control plane
// (the CLI, proxies before they have a certificate) that verify with the
// standard library.
func (c *CA) RootPool() *x509.CertPool {
	pool := x509.NewCertPool()
	for _, r := range c.roots {
		pool.AddCert(r)
	}
	return pool
}

// ServerTLSConfig is TLS for the control plane's own listeners (gRPC for
// proxies, admin API for the CLI). Its certificate is issued by this CA for
// id, dnsNames and ips, and re-issued on the first handshake after 2/3 of its
// lifetime. Client certificates are verified against the bundle when given
// but not required: the gRPC server decides per RPC (Certify must work
// before a proxy has one). Callers add NextProtos (grpc-go and net/http do).
func (c *CA) ServerTLSConfig(id spiffeid.ID, dnsNames []string, ips []net.IP) (*tls.Config, error) {
	sc := &serverCert{ca: c, id: id, dnsNames: dnsNames, ips: ips}
	// Issue now, so a bad id fails here rather than on the first handshake.
	if _, err := sc.get(); err != nil {
		return nil, fmt.Errorf("ca: server tls: %w", err)
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return sc.get()
		},
		ClientAuth: tls.VerifyClientCertIfGiven,
		ClientCAs:  c.RootPool(),
	}, nil
}

type serverCert struct {
	ca       *CA
	id       spiffeid.ID
	dnsNames []string
	ips      []net.IP

	mu      sync.Mutex // serialises re-issue so a burst of handshakes issues once
	cert    *tls.Certificate
	renewAt time.Time
}

func (s *serverCert) get() (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.ca.now()
	if s.cert != nil && now.Before(s.renewAt) {
		return s.cert, nil
	}
	key, err := identity.NewKey()
	if err != nil {
		if s.cert != nil && now.Before(s.cert.Leaf.NotAfter) {
			return s.cert, nil // keep serving the still-valid one
		}
		return nil, err
	}
	chain, _, err := s.ca.issue(key.Public(), s.id, s.dnsNames, s.ips)
	if err != nil {
		if s.cert != nil && now.Before(s.cert.Leaf.NotAfter) {
			s.ca.log.Warn("re-issuing control plane server certificate failed; serving the current one", "err", err)
			return s.cert, nil
		}
		return nil, err
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return nil, err
	}
	s.cert = &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}
	s.renewAt = identity.RenewAt(leaf.NotBefore, leaf.NotAfter)
	s.ca.log.Debug("issued control plane server certificate", "id", s.id.String(), "not_after", leaf.NotAfter)
	return s.cert, nil
}
