package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// backName is the server name the front halves verify on the back halves.
const backName = "bench-back"

// certFiles are the PEM files the HAProxy and nginx pairs use.
type certFiles struct {
	ca                 string // CA certificate
	frontCrt, frontKey string // client certificate of the front half
	backCrt, backKey   string // server certificate of the back half
	frontPEM, backPEM  string // certificate + key in one file (HAProxy's crt)
}

// writeCerts makes an ECDSA P-256 CA and two leaves (front: client auth;
// back: server auth for bench-back and 127.0.0.1) in dir.
func writeCerts(dir string) (certFiles, error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return certFiles{}, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "trellis bench CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return certFiles{}, fmt.Errorf("certs: ca: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return certFiles{}, err
	}
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage, dns []string, ips []net.IP) ([]byte, []byte, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
			DNSNames:     dns,
			IPAddresses:  ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return nil, nil, fmt.Errorf("certs: %s: %w", cn, err)
		}
		kder, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, nil, err
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
	}
	frontCrt, frontKey, err := leaf(2, "bench-front", x509.ExtKeyUsageClientAuth, nil, nil)
	if err != nil {
		return certFiles{}, err
	}
	backCrt, backKey, err := leaf(3, backName, x509.ExtKeyUsageServerAuth, []string{backName}, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return certFiles{}, err
	}
	f := certFiles{
		ca:       filepath.Join(dir, "ca.crt"),
		frontCrt: filepath.Join(dir, "front.crt"), frontKey: filepath.Join(dir, "front.key"),
		backCrt: filepath.Join(dir, "back.crt"), backKey: filepath.Join(dir, "back.key"),
		frontPEM: filepath.Join(dir, "front.pem"), backPEM: filepath.Join(dir, "back.pem"),
	}
	files := []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{f.ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644},
		{f.frontCrt, frontCrt, 0o644},
		{f.frontKey, frontKey, 0o600},
		{f.backCrt, backCrt, 0o644},
		{f.backKey, backKey, 0o600},
		{f.frontPEM, append(append([]byte{}, frontCrt...), frontKey...), 0o600},
		{f.backPEM, append(append([]byte{}, backCrt...), backKey...), 0o600},
	}
	for _, w := range files {
		if err := os.WriteFile(w.path, w.data, w.mode); err != nil {
			return certFiles{}, fmt.Errorf("certs: %w", err)
		}
	}
	return f, nil
}
