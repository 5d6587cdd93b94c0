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
// standard library. Shared: do not add to it.
func (c *CA) RootPool() *x509.CertPool { return c.cur.Load().pool }

// ServerTLSConfig is TLS for the control plane's own listeners (gRPC for
// proxies, admin API for the CLI), offering nextProtos by ALPN. Its
// certificate is issued by this CA for id, dnsNames and ips, and re-issued
// on the first handshake after about half its lifetime (identity.RenewAt)
// or after the CA's issuer changed (a rotation). Client certificates are
// verified against the bundle current at each handshake when given but not
// required: the gRPC server decides per RPC (Certify must work before a
// proxy has one).
func (c *CA) ServerTLSConfig(id spiffeid.ID, dnsNames []string, ips []net.IP, nextProtos ...string) (*tls.Config, error) {
	sc := &serverCert{ca: c, id: id, dnsNames: dnsNames, ips: ips}
	// Issue now, so a bad id fails here rather than on the first handshake.
	if _, err := sc.get(); err != nil {
		return nil, fmt.Errorf("ca: server tls: %w", err)
	}
	base := &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return sc.get()
		},
		ClientAuth: tls.VerifyClientCertIfGiven,
		NextProtos: nextProtos,
	}
	cfg := base.Clone()
	cfg.ClientCAs = c.RootPool()
	// A rotation changes the bundle while listeners run: each handshake
	// takes the pool current then.
	cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		h := base.Clone()
		h.ClientCAs = c.RootPool()
		return h, nil
	}
	return cfg, nil
}

type serverCert struct {
	ca       *CA
	id       spiffeid.ID
	dnsNames []string
	ips      []net.IP

	mu      sync.Mutex // serialises re-issue so a burst of handshakes issues once
	cert    *tls.Certificate
	gen     uint64 // the issuer cert came from
	renewAt time.Time
}

func (s *serverCert) get() (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.ca.now()
	is := s.ca.cur.Load()
	if s.cert != nil && now.Before(s.renewAt) && s.gen == is.gen {
		return s.cert, nil
	}
	key, err := identity.NewKey()
	if err != nil {
		if s.cert != nil && now.Before(s.cert.Leaf.NotAfter) {
			return s.cert, nil // keep serving the still-valid one
		}
		return nil, err
	}
	chain, _, err := s.ca.issueWith(is, key.Public(), s.id, s.dnsNames, s.ips)
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
	s.gen = is.gen
	s.renewAt = identity.RenewAt(leaf.NotBefore, leaf.NotAfter, s.ca.jitter())
	s.ca.log.Debug("issued control plane server certificate", "id", s.id.String(), "not_after", leaf.NotAfter)
	return s.cert, nil
}
