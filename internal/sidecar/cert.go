package sidecar

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/identity"
	"trellis.dev/trellis/internal/push"
)

// clientCertificate presents the current workload certificate to the
// control plane, or none before the first one is issued.
func (s *sidecar) clientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	svid, err := s.src.GetX509SVID()
	if err != nil {
		return &tls.Certificate{}, nil
	}
	c := &tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, cert := range svid.Certificates {
		c.Certificate = append(c.Certificate, cert.Raw)
	}
	return c, nil
}

// certify gets a certificate for a fresh key. An empty token renews with the
// current certificate.
func (s *sidecar) certify(ctx context.Context, token string) error {
	key, err := identity.NewKey()
	if err != nil {
		return fmt.Errorf("sidecar: key: %w", err)
	}
	csr, err := identity.NewCSR(key, s.id)
	if err != nil {
		return fmt.Errorf("sidecar: csr: %w", err)
	}
	var resp *meshv1.CertifyResponse
	backoff := 200 * time.Millisecond
	for {
		resp, err = s.client.Certify(ctx, token, csr, s.o.Namespace, s.o.ServiceAccount)
		if err == nil {
			break
		}
		if !retryable(err) || ctx.Err() != nil {
			return fmt.Errorf("sidecar: certify: %w", err)
		}
		s.log.Warn("control plane unreachable, retrying certification", "err", err, "in", backoff)
		if !sleep(ctx, backoff) {
			return fmt.Errorf("sidecar: certify: %w", ctx.Err())
		}
		backoff = min(backoff*2, 5*time.Second)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	bundle := resp.TrustBundle
	if len(s.bundle) > 0 && len(bundle) == 0 {
		bundle = s.bundle
	}
	if err := s.src.Set(resp.CertChain, key, bundle); err != nil {
		return fmt.Errorf("sidecar: certificate from control plane: %w", err)
	}
	s.bundle, s.received = bundle, time.Now()
	s.log.Info("certificate issued", "identity", s.id.String(), "expires", time.Unix(resp.NotAfter, 0).UTC())
	return nil
}

// retryable reports whether a Certify error may pass once the control plane
// is back; a refused token or CSR will not.
func retryable(err error) bool {
	if errors.Is(err, push.ErrUnavailable) {
		return true
	}
	if errors.Is(err, push.ErrRejected) {
		return false
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Unknown:
		return true
	}
	return false
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (s *sidecar) updateBundle(bundle [][]byte) error {
	if len(bundle) == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if slices.EqualFunc(bundle, s.bundle, func(a, b []byte) bool { return string(a) == string(b) }) {
		return nil
	}
	if err := s.src.SetBundle(bundle); err != nil {
		return err
	}
	s.bundle = bundle
	s.log.Info("trust bundle updated", "roots", len(bundle))
	if s.src.IssuerMoved() {
		s.renew.renewSoon()
	}
	return nil
}

// certValidity is the current certificate's life, counted from when it
// arrived if the CA back-dated it.
func (s *sidecar) certValidity() (start, notAfter time.Time, ok bool) {
	svid, err := s.src.GetX509SVID()
	if err != nil {
		return time.Time{}, time.Time{}, false
	}
	leaf := svid.Certificates[0]
	s.mu.Lock()
	start = s.received
	s.mu.Unlock()
	if leaf.NotBefore.After(start) {
		start = leaf.NotBefore
	}
	return start, leaf.NotAfter, true
}
