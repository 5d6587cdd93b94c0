// Package push is the control plane's gRPC Mesh service (Certify, Register,
// Heartbeat, Watch) and the proxy-side client that runs a proxy's session
// against it.
//
// The server depends only on the small interfaces below (Signer, Registry,
// Snapshots); the control plane adapts the CA, the registry and the compiler
// to them. Each Watch stream has its own sender goroutine, changes coalesce
// (latest wins), and a stream whose send stalls is closed and counted, so one
// slow proxy never holds up the others.
//
// Revisions: a snapshot carries the store revision it was compiled from.
// Each stream records the revision its proxy is current at — that of the
// snapshot it ACKed, advanced without a push when a later compile yields the
// same version (the write did not change this proxy's config); a NACK does
// not advance it. AwaitRevision waits for every connected proxy to reach a
// revision, which is what `trellis apply --wait` long-polls.
//
// Several replicas: a Client may be given every replica's address
// (ParseAddrs); its one connection uses gRPC's pick_first over a static
// resolver, so a broken stream or call moves it to the next replica that
// answers. A replica that is asked to Watch (or Quota) for a node it has
// not registered looks the node up in the shared registry (Registry.Lookup)
// and adopts it, same lease, when the caller's identity is the one that
// registered it; the proxy re-opens its Watch with the version it runs, so
// an unchanged config is not resent. Each server names itself
// (ServerOptions.Replica) in the Watch header, in every snapshot and in
// ProxyStatus.Replica.
//
// What the server records for metrics goes through the Metrics interface
// (internal/telemetry implements it); gauges are read from Counters and
// SoonestCertExpiry at scrape time.
package push

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

// Sentinel errors callers branch on.
var (
	// ErrLeaseNotFound: the lease expired or never existed. A Registry
	// returns an error wrapping it from Heartbeat; the proxy registers again.
	ErrLeaseNotFound = errors.New("push: lease not found")
	// ErrUnavailable: the control plane could not be reached; retrying may help.
	ErrUnavailable = errors.New("push: control plane unavailable")
	// ErrRejected: the control plane refused the request; retrying the same
	// request will not help.
	ErrRejected = errors.New("push: rejected by control plane")
)

// Node is one connected proxy, as the snapshot source sees it.
type Node struct {
	ID        string
	Service   string
	Namespace string
	Identity  spiffeid.ID
	// Subscriptions are "name.namespace", sorted, deduped.
	Subscriptions []string
}

// Snapshots is what the server needs of the compiler.
type Snapshots interface {
	// Snapshot compiles n's config. Version is set; Nonce is left empty
	// (the server sets it on a copy, so the result may be shared).
	Snapshot(ctx context.Context, n Node) (*meshv1.Snapshot, error)
	// Subscribe returns a channel that receives (non-blocking, buffer 1)
	// whenever inputs change, and a cancel func.
	Subscribe() (<-chan struct{}, func())
}

// Registry is what the server needs of the endpoint registry.
type Registry interface {
	Register(ctx context.Context, ep *meshv1.Endpoint, ttl time.Duration) (lease int64, granted time.Duration, err error)
	// Heartbeat returns an error wrapping ErrLeaseNotFound when the lease expired.
	Heartbeat(ctx context.Context, lease int64) error
	// SetHealth records the proxy's verdict on its app on the lease's
	// endpoint (wrapping ErrLeaseNotFound when the lease expired).
	SetHealth(ctx context.Context, lease int64, healthy bool, reason string) error
	// Lookup returns the registered endpoint with this id in namespace and
	// its lease, or an error wrapping ErrLeaseNotFound when there is none.
	// With several replicas a proxy registers through one and may fail over
	// to another: that one adopts the registration instead of asking the
	// proxy to register again, so its lease carries on.
	Lookup(ctx context.Context, namespace, id string) (ep *meshv1.Endpoint, lease int64, err error)
}

// Signer is what the server needs of the CA.
type Signer interface {
	// Sign issues a certificate for id to the CSR's key: leaf first.
	Sign(csrDER []byte, id spiffeid.ID) (chain [][]byte, notAfter time.Time, err error)
	// Bundle is the current set of trusted roots, DER.
	Bundle() [][]byte
}

// ServerOptions configure NewServer.
type ServerOptions struct {
	TrustDomain spiffeid.TrustDomain
	// ValidToken reports whether token is the shared dev-mode bootstrap
	// token, which may obtain a certificate for ANY identity (trellis
	// control --insecure-bootstrap-token). Use TokenValidator for a
	// constant-time comparison. Default: none is.
	ValidToken func(token string) bool
	// Tokens are the identity-bound join tokens (nil: none).
	Tokens Tokens
	// Auditor records renewals and dev-mode issuances (join tokens record
	// through Tokens.Redeem). Default: none.
	Auditor Auditor
	// Accounts checks an endpoint's service account against its service's
	// declared accounts on Register (nil: no check).
	Accounts Accounts
	// Refusals counts refused Certify/Register calls (default: none).
	Refusals  Refusals
	Signer    Signer
	Registry  Registry
	Snapshots Snapshots
	// MaxTTL clamps the lease TTL a proxy may request (default 30s).
	MaxTTL time.Duration
	// SendTimeout bounds one snapshot send; a stream whose send blocks longer
	// is closed and counted (default 10s).
	SendTimeout time.Duration
	// Metrics records pushes, answers and issued certificates (default: none).
	Metrics Metrics
	// Tap relays `trellis tap` between viewers and the proxies' Tap
	// streams; nil: the stream is refused (UNIMPLEMENTED).
	Tap TapRelay
	// Replica names this control-plane replica (--replica-id): it is sent
	// in every snapshot and Watch header, and in ProxyStatus.Replica.
	Replica string
	// Quota allocates global rate limits over the Quota stream; nil: the
	// stream is refused (UNIMPLEMENTED) and proxies keep local shares.
	Quota QuotaAllocator
	// Stats keeps the proxies' windowed request summaries sent over the
	// Report stream; nil: the stream is refused (UNIMPLEMENTED).
	Stats  StatsSink
	Logger *slog.Logger
}

// Metrics is what the server records; internal/telemetry implements it on a
// Prometheus registry. Gauges (connected proxies, the soonest certificate
// expiry) are read at scrape time from Counters and SoonestCertExpiry instead.
// Calls must be cheap and must not block: they run on the streams' goroutines.
type Metrics interface {
	// SnapshotPushed counts one snapshot sent to a proxy.
	SnapshotPushed()
	// SnapshotAcked counts an ACK; sinceSend is the time from the send to it.
	SnapshotAcked(sinceSend time.Duration)
	// SnapshotNacked counts a NACK.
	SnapshotNacked()
	// SlowConsumerClosed counts a stream closed because its send stalled.
	SlowConsumerClosed()
	// CertificateIssued counts a workload certificate signed by Certify;
	// renewal tells a renewal (current certificate) from a bootstrap (token).
	CertificateIssued(renewal bool)
}

type nopMetrics struct{}

func (nopMetrics) SnapshotPushed()                {}
func (nopMetrics) SnapshotAcked(time.Duration)    {}
func (nopMetrics) SnapshotNacked()                {}
func (nopMetrics) SlowConsumerClosed()            {}
func (nopMetrics) CertificateIssued(renewal bool) {}

// Defaults for ServerOptions and SessionOptions.
const (
	DefaultMaxTTL      = 30 * time.Second
	DefaultSendTimeout = 10 * time.Second
	DefaultHeartbeat   = 5 * time.Second
)

// States of a proxy in ProxyStatus.
const (
	// StatePending: connected, nothing sent yet (first compile pending or failed).
	StatePending = "PENDING"
	// StateStale: a snapshot was sent and not yet acknowledged.
	StateStale = "STALE"
	// StateSynced: the proxy acknowledged the last snapshot sent.
	StateSynced = "SYNCED"
	// StateNacked: the proxy refused the last snapshot sent and keeps its last good one.
	StateNacked = "NACKED"
)

// ProxyStatus is one connected proxy, for `trellis proxy-status`. Its JSON
// (the admin API's /v1/proxies, `proxy-status -o json|yaml`) uses
// lowerCamelCase names, as kubectl and the Gateway API do; they are part of
// the admin API and documented in docs/operations.md.
type ProxyStatus struct {
	NodeID string `json:"nodeId"`
	// Replica is the control-plane replica the proxy's Watch stream is
	// attached to (its --replica-id).
	Replica   string `json:"replica,omitempty"`
	Service   string `json:"service"`
	Namespace string `json:"namespace"`
	Identity  string `json:"identity"`
	// SentVersion is the config version last sent; AckedVersion the last
	// one the proxy acknowledged (and runs).
	SentVersion  string `json:"sentVersion"`
	AckedVersion string `json:"ackedVersion"`
	// Revision is the store revision the proxy is known to be current at:
	// that of the snapshot it last ACKed, advanced without a push when a
	// later compile for it yields the same version (a write that did not
	// change its config). Zero until the first ACK on this stream.
	Revision int64 `json:"revision"`
	// SentRevision is the revision the last snapshot sent is current at;
	// above Revision while that snapshot is unanswered or refused.
	SentRevision int64 `json:"sentRevision"`
	// State is StateSynced, StateStale, StateNacked or StatePending.
	State string `json:"state"`
	// Error is the proxy's last NACK text or the last compile error.
	Error string `json:"error,omitempty"`
	// CertExpiry is when the proxy's workload certificate expires.
	CertExpiry  time.Time `json:"certExpiry,omitzero"`
	ConnectedAt time.Time `json:"connectedAt,omitzero"`
	LastAck     time.Time `json:"lastAck,omitzero"`
	// ConcurrencyLimit is the proxy's adaptive concurrency limit (0: no
	// ConcurrencyPolicy) and ConcurrencyShed the requests it shed since it
	// started, as it last reported them (every message, and a status-only
	// one every few seconds while they change).
	ConcurrencyLimit uint32 `json:"concurrencyLimit,omitempty"`
	ConcurrencyShed  uint64 `json:"concurrencyShed,omitempty"`
	// CertIssuer is the hex SHA-256 of the root the proxy's certificate
	// chains to, and TrustBundle that of the bundle it has installed
	// (identity.BundleFingerprint), as it last reported them; a CA
	// rotation waits on them.
	CertIssuer  string `json:"certIssuer,omitempty"`
	TrustBundle string `json:"trustBundle,omitempty"`
}

// AtRevision reports whether p runs a snapshot current at rev or later.
func (p ProxyStatus) AtRevision(rev int64) bool { return p.Revision >= rev }

// Refused reports whether p refused (NACKed) the config current at rev: it
// keeps its older one and will not reach rev until its config changes again.
func (p ProxyStatus) Refused(rev int64) bool {
	return p.State == StateNacked && p.SentRevision >= rev && !p.AtRevision(rev)
}

// Settled reports whether waiting for rev is over: every proxy in list runs
// it, or one refused it.
func Settled(list []ProxyStatus, rev int64) bool {
	for _, p := range list {
		if p.Refused(rev) {
			return true
		}
	}
	for _, p := range list {
		if !p.AtRevision(rev) {
			return false
		}
	}
	return true
}

// Counters are the server's running totals, for metrics.
type Counters struct {
	// Streams is the number of Watch streams open now.
	Streams int
	Pushes  uint64
	Acks    uint64
	Nacks   uint64
	// SlowConsumerClosed counts streams closed because a send stalled.
	SlowConsumerClosed uint64
	// Incremental counts the pushes (of Pushes) that were deltas;
	// PushedBytes is the encoded size of every snapshot sent.
	Incremental uint64
	PushedBytes uint64
}
