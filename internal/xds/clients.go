package xds

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sort"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Stream modes.
const (
	ModeSotW  = "sotw"
	ModeDelta = "delta"
)

// KindXDS is what proxy-status shows in its KIND column for an xDS client.
const KindXDS = "xds"

// ClientStatus is one xDS stream, for proxy-status.
type ClientStatus struct {
	// NodeID is the client's node.id (from its bootstrap), "" until its
	// first request.
	NodeID string `json:"nodeId"`
	Kind   string `json:"kind"`
	// Identity is the SPIFFE ID of the client's certificate.
	Identity string `json:"identity"`
	// Mode is "sotw" or "delta".
	Mode string `json:"mode"`
	// Acked is the last version the client acknowledged, per type URL;
	// Sent the last version sent.
	Acked map[string]string `json:"acked"`
	Sent  map[string]string `json:"sent"`
	// Error is the client's last NACK ("<type URL>: <message>"), cleared
	// by a later ACK of that type.
	Error       string    `json:"error,omitempty"`
	ConnectedAt time.Time `json:"connectedAt"`
}

type stream struct {
	st ClientStatus
	// nonces maps a delta response's nonce to its system version: a delta
	// ACK names the nonce only.
	nonces   map[string]string
	nackType string
}

// clients implements go-control-plane's server callbacks: it admits
// streams (mTLS with a mesh certificate), counts them and keeps their
// status.
type clients struct {
	trustDomain string
	metrics     Metrics
	log         *slog.Logger
	now         func() time.Time

	mu      sync.Mutex
	streams map[int64]*stream
}

func newClients(td string, m Metrics, log *slog.Logger) *clients {
	return &clients{trustDomain: td, metrics: m, log: log, now: time.Now, streams: map[int64]*stream{}}
}

var errNoCert = errors.New("xds: a client certificate issued by the mesh's CA is required (bootstrap channel_creds type tls with certificate_file and private_key_file)")

// peerIdentity is the SPIFFE ID of the stream's verified client
// certificate. The gRPC port verifies a certificate when one is given
// (push.ServerTLSConfig); an xDS stream must have one, in the mesh's trust
// domain, with exactly one URI SAN.
func peerIdentity(ctx context.Context, trustDomain string) (string, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "", errNoCert
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.PeerCertificates) == 0 {
		return "", errNoCert
	}
	return spiffeID(ti.State.PeerCertificates[0], trustDomain)
}

func spiffeID(leaf *x509.Certificate, trustDomain string) (string, error) {
	if len(leaf.URIs) != 1 || leaf.URIs[0].Scheme != "spiffe" {
		return "", errors.New("xds: client certificate must carry exactly one SPIFFE ID")
	}
	if trustDomain != "" && leaf.URIs[0].Host != trustDomain {
		return "", fmt.Errorf("xds: client identity %s is not in trust domain %s", leaf.URIs[0], trustDomain)
	}
	return leaf.URIs[0].String(), nil
}

func (c *clients) open(ctx context.Context, id int64, mode string) error {
	ident, err := peerIdentity(ctx, c.trustDomain)
	if err != nil {
		c.metrics.Refused()
		c.log.Debug("xds stream refused", "err", err)
		return status.Error(codes.Unauthenticated, err.Error())
	}
	c.mu.Lock()
	c.streams[id] = &stream{st: ClientStatus{Kind: KindXDS, Identity: ident, Mode: mode, ConnectedAt: c.now(),
		Acked: map[string]string{}, Sent: map[string]string{}}, nonces: map[string]string{}}
	c.mu.Unlock()
	c.metrics.StreamOpened(mode)
	return nil
}

func (c *clients) closed(id int64) {
	c.mu.Lock()
	s, ok := c.streams[id]
	delete(c.streams, id)
	c.mu.Unlock()
	if ok {
		c.metrics.StreamClosed(s.st.Mode)
	}
}

// request records the node and an ACK or NACK of typeURL: a request
// answering a response (nonce set) acks version, or nacks with errDetail.
func (c *clients) request(id int64, node *corev3.Node, typeURL, nonce, version string, errDetail error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.streams[id]
	if !ok {
		return
	}
	if node.GetId() != "" {
		s.st.NodeID = node.GetId()
	}
	if nonce == "" {
		return
	}
	if errDetail != nil {
		s.st.Error, s.nackType = typeURL+": "+errDetail.Error(), typeURL
		c.metrics.Nacked(typeURL)
		c.log.Info("xds client refused resources", "node", s.st.NodeID, "type", typeURL, "err", errDetail)
		return
	}
	s.st.Acked[typeURL] = version
	if s.nackType == typeURL {
		s.st.Error, s.nackType = "", ""
	}
}

func (c *clients) sent(id int64, typeURL, version, nonce string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.streams[id]; ok {
		s.st.Sent[typeURL] = version
		if nonce != "" {
			// Bounded: a client answers each nonce, and only the
			// latest per type is kept beside older unanswered ones.
			if len(s.nonces) > 64 {
				clear(s.nonces)
			}
			s.nonces[nonce] = version
		}
	}
}

func (c *clients) deltaVersion(id int64, nonce string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.streams[id]; ok {
		v := s.nonces[nonce]
		delete(s.nonces, nonce)
		return v
	}
	return ""
}

func (c *clients) list() []ClientStatus {
	c.mu.Lock()
	out := make([]ClientStatus, 0, len(c.streams))
	for _, s := range c.streams {
		st := s.st
		st.Acked, st.Sent = maps.Clone(s.st.Acked), maps.Clone(s.st.Sent)
		out = append(out, st)
	}
	c.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].NodeID != out[j].NodeID {
			return out[i].NodeID < out[j].NodeID
		}
		return out[i].ConnectedAt.Before(out[j].ConnectedAt)
	})
	return out
}

func nackError(d interface{ GetMessage() string }, present bool) error {
	if !present {
		return nil
	}
	msg := strings.TrimSpace(d.GetMessage())
	if msg == "" {
		msg = "refused"
	}
	return errors.New(msg)
}

// The go-control-plane callbacks.

func (c *clients) OnStreamOpen(ctx context.Context, id int64, _ string) error {
	return c.open(ctx, id, ModeSotW)
}

func (c *clients) OnStreamClosed(id int64, _ *corev3.Node) { c.closed(id) }

func (c *clients) OnStreamRequest(id int64, req *discoveryv3.DiscoveryRequest) error {
	c.request(id, req.GetNode(), req.GetTypeUrl(), req.GetResponseNonce(), req.GetVersionInfo(),
		nackError(req.GetErrorDetail(), req.GetErrorDetail() != nil))
	return nil
}

func (c *clients) OnStreamResponse(_ context.Context, id int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	c.sent(id, resp.GetTypeUrl(), resp.GetVersionInfo(), "")
}

func (c *clients) OnDeltaStreamOpen(ctx context.Context, id int64, _ string) error {
	return c.open(ctx, id, ModeDelta)
}

func (c *clients) OnDeltaStreamClosed(id int64, _ *corev3.Node) { c.closed(id) }

func (c *clients) OnStreamDeltaRequest(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
	var version string
	if n := req.GetResponseNonce(); n != "" {
		version = c.deltaVersion(id, n)
	}
	c.request(id, req.GetNode(), req.GetTypeUrl(), req.GetResponseNonce(), version,
		nackError(req.GetErrorDetail(), req.GetErrorDetail() != nil))
	return nil
}

func (c *clients) OnStreamDeltaResponse(id int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
	c.sent(id, resp.GetTypeUrl(), resp.GetSystemVersionInfo(), resp.GetNonce())
}

// The REST (fetch) API is not served: refuse it.

func (c *clients) OnFetchRequest(context.Context, *discoveryv3.DiscoveryRequest) error {
	return status.Error(codes.Unimplemented, "xds: fetch is not served; open an ADS stream")
}

func (c *clients) OnFetchResponse(*discoveryv3.DiscoveryRequest, *discoveryv3.DiscoveryResponse) {}
