package testpki

import (
	"crypto/tls"
	"crypto/x509"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

const id = "spiffe://trellis.local/ns/default/sa/orders"

func TestLeafVerifies(t *testing.T) {
	ca := NewCA(t)
	leaf, key := ca.Leaf(t, id)
	if !key.PublicKey.Equal(leaf.PublicKey) {
		t.Fatal("leaf is not for the returned key")
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id {
		t.Fatalf("URIs = %v, want [%s]", leaf.URIs, id)
	}
	for _, eku := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if !slices.Contains(leaf.ExtKeyUsage, eku) {
			t.Fatalf("ExtKeyUsage %v lacks %v", leaf.ExtKeyUsage, eku)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{eku}}); err != nil {
			t.Fatalf("verify for %v: %v", eku, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: NewCA(t).Pool()}); err == nil {
		t.Fatal("leaf verified against another CA")
	}
	other, _ := ca.Leaf(t, id)
	if other.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Fatal("two leaves share a serial number")
	}
}

func TestOptions(t *testing.T) {
	past := time.Now().Add(-time.Hour)
	ca := NewCA(t, func(c *x509.Certificate) { c.Subject.CommonName = "evil root" })
	if ca.Cert.Subject.CommonName != "evil root" || !ca.Cert.IsCA {
		t.Fatalf("root %s, IsCA %v", ca.Cert.Subject, ca.Cert.IsCA)
	}
	expired, _ := ca.Leaf(t, id, func(c *x509.Certificate) { c.NotBefore, c.NotAfter = past.Add(-time.Hour), past })
	_, err := expired.Verify(x509.VerifyOptions{Roots: ca.Pool()})
	if err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired leaf: err = %v", err)
	}
	if bare, _ := ca.Leaf(t, ""); len(bare.URIs) != 0 {
		t.Fatalf("Leaf(\"\") has URIs %v", bare.URIs)
	}
}

// An SVID and the bundle make a working SPIFFE mTLS pair over Serve/Dial.
func TestSVIDHandshake(t *testing.T) {
	ca := NewCA(t)
	td := spiffeid.RequireTrustDomainFromString("trellis.local")
	server := ca.SVID(t, id)
	client := ca.SVID(t, "spiffe://trellis.local/ns/default/sa/web")
	addr, results := Serve(t, tlsconfig.MTLSServerConfig(server, ca.Bundle(td), tlsconfig.AuthorizeMemberOf(td)), nil)
	cs, err := Dial(t, addr, tlsconfig.MTLSClientConfig(client, ca.Bundle(td), tlsconfig.AuthorizeID(server.ID)))
	if err != nil {
		t.Fatal(err)
	}
	if got := cs.PeerCertificates[0].URIs[0].String(); got != id {
		t.Fatalf("server presented %s", got)
	}
	if r := <-results; r.Err != nil || len(r.State.PeerCertificates) == 0 || r.State.PeerCertificates[0].URIs[0].String() != client.ID.String() {
		t.Fatalf("server: %v, peer certificates %d", r.Err, len(r.State.PeerCertificates))
	}

	// A client from another root is refused by the server.
	rogue := NewCA(t).TLSCertificate(t, id)
	if _, err := Dial(t, addr, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{rogue}}); err == nil {
		t.Fatal("client from another CA accepted")
	}
	if r := <-results; r.Err == nil {
		t.Fatal("server accepted a client from another CA")
	}
}
