package telemetry

import (
	"github.com/prometheus/client_golang/prometheus"
)

// The proxy's refusals: connections, handshakes, tunnels and requests it
// turned away (or cleaned) to protect itself, its app or its peers, by a
// reason from a fixed list, and the inbound requests it accepted without
// mTLS (a PERMISSIVE service). Label sets are bounded: the reason only.
const (
	RefusedName   = "trellis_proxy_refused_total"
	PlaintextName = "trellis_proxy_plaintext_requests_total"
)

// Refusal is one reason of RefusedName; its String is the label value.
type Refusal uint8

// The refusal reasons. docs/metrics.md has the same table.
const (
	// RefusedPlaintext: a plaintext connection (or request) on an inbound
	// port whose service is STRICT.
	RefusedPlaintext Refusal = iota
	// RefusedTLSVersion: a client offering only TLS versions below 1.3.
	RefusedTLSVersion
	// RefusedTLSHandshake: any other failed inbound handshake (no client
	// certificate, garbage, a stall past the handshake timeout).
	RefusedTLSHandshake
	// RefusedUntrustedCert: a peer certificate whose chain does not verify
	// against the trust bundle (a foreign CA, expired, not yet valid).
	RefusedUntrustedCert
	// RefusedBadIdentity: a peer certificate without exactly one valid
	// SPIFFE ID URI SAN.
	RefusedBadIdentity
	// RefusedPeerIdentity: outbound, a peer proxy whose SPIFFE ID is not
	// the endpoint's registered identity (secure naming).
	RefusedPeerIdentity
	// RefusedTunnelPort: a CONNECT or TCP tunnel to a port not declared tcp.
	RefusedTunnelPort
	// RefusedMeshHeader: a request or trailer carrying a header the mesh
	// owns (X-Trellis-*, any case, "_" for "-"), stripped before passing on.
	RefusedMeshHeader
	// RefusedFraming: an HTTP/1.1 request framed ambiguously
	// (Content-Length with Transfer-Encoding, two Content-Lengths, an
	// obs-folded header line, a malformed chunk size): 400, connection closed.
	RefusedFraming
	// RefusedHeaderTooLarge: request headers over the listener's limit (431).
	RefusedHeaderTooLarge
	// RefusedBodyTimeout: a request body that stalled past the body read
	// timeout (408, or the request aborted).
	RefusedBodyTimeout
	// RefusedMalformed: any other HTTP/1.1 request the parser refused
	// before a chain saw it (a malformed request line, field or Host, an
	// unsupported version): 400/505, connection closed.
	RefusedMalformed
	numRefusals
)

var refusalNames = [numRefusals]string{
	"plaintext", "tls_version", "tls_handshake", "untrusted_certificate",
	"bad_identity", "peer_identity", "tunnel_port", "mesh_header",
	"framing", "header_too_large", "body_timeout", "malformed_request",
}

// String is the reason label value.
func (r Refusal) String() string {
	if r >= numRefusals {
		return "unknown"
	}
	return refusalNames[r]
}

// RefusalReasons lists every reason label value, in order.
func RefusalReasons() []string { return refusalNames[:] }

// Refusals counts refusals by reason and plaintext inbound requests. Every
// child exists from the start (shown at 0), so counting never allocates.
type Refusals struct {
	byReason  [numRefusals]prometheus.Counter
	plaintext prometheus.Counter
}

type refusalVecs struct {
	refused   *prometheus.CounterVec
	plaintext prometheus.Counter
	r         *Refusals
}

func newRefusalVecs() refusalVecs {
	v := refusalVecs{
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: RefusedName,
			Help: "Connections, handshakes, tunnels and requests the proxy refused, or cleaned of mesh-owned headers, by reason.",
		}, []string{"reason"}),
		plaintext: prometheus.NewCounter(prometheus.CounterOpts{
			Name: PlaintextName,
			Help: "Inbound requests accepted without mTLS (the service's mTLS mode is PERMISSIVE).",
		}),
	}
	r := &Refusals{plaintext: v.plaintext}
	for i := range r.byReason {
		r.byReason[i] = v.refused.WithLabelValues(refusalNames[i])
	}
	v.r = r
	return v
}

func (v refusalVecs) collectors() []prometheus.Collector {
	return []prometheus.Collector{v.refused, v.plaintext}
}

// Refused counts one refusal.
func (r *Refusals) Refused(reason Refusal) {
	if r == nil || reason >= numRefusals {
		return
	}
	r.byReason[reason].Inc()
}

// Plaintext counts one inbound request that arrived without mTLS.
func (r *Refusals) Plaintext() {
	if r != nil {
		r.plaintext.Inc()
	}
}

// Refusals returns the proxy's refusal counters.
func (m *ProxyMetrics) Refusals() *Refusals { return m.ref.r }
