package store

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/namespace"
)

// EtcdOptions configures NewEtcd. Endpoints is required.
type EtcdOptions struct {
	// Endpoints are etcd client URLs, all http:// or all https://.
	Endpoints []string
	// Prefix is put before every key (the etcd key is Prefix+key), so
	// several meshes, or other users, share one etcd without seeing each
	// other's keys. Trellis's keys start with "/": "/trellis" stores
	// /trellis/resources/... . One mesh's prefix must not be the start of
	// another's.
	Prefix string
	// CAFile verifies the servers (default: the system roots); CertFile and
	// KeyFile are the client certificate, both or neither. Any of them, or
	// an https endpoint, turns TLS on.
	CAFile, CertFile, KeyFile string
	// DialTimeout bounds the first connection (default 5s): NewEtcd fails
	// rather than hang when no endpoint answers.
	DialTimeout time.Duration
	// RequestTimeout bounds each call whose context has a later deadline
	// or none (default 10s): with etcd unreachable, calls fail instead of
	// waiting for it forever.
	RequestTimeout time.Duration
	// WatchBuffer is each watcher's queue of undelivered revisions
	// (batches). When it is full the watch waits up to a second for the
	// reader, then is closed and its reader must re-List. Default 1024.
	WatchBuffer int
	// Logger receives closed watches and the client's warnings. Nil discards.
	Logger *slog.Logger
}

const (
	defaultEtcdDialTimeout    = 5 * time.Second
	defaultEtcdRequestTimeout = 10 * time.Second
	etcdSlowWatcherGrace      = time.Second
)

// Etcd is the Store on an etcd cluster (v3 API, etcd 3.4 or later).
// Revisions, compare-and-set, leases and watches are etcd's own, so any
// number of control-plane replicas can share one cluster.
type Etcd struct {
	cli    *clientv3.Client
	kv     clientv3.KV      // namespaced by Prefix
	w      clientv3.Watcher // namespaced by Prefix
	opts   EtcdOptions
	log    *slog.Logger
	closed atomic.Bool

	// life ends every watch on Close; pumps counts their goroutines. mu
	// orders a Watch's pumps.Add before Close's Wait.
	life  context.Context
	end   context.CancelFunc
	mu    sync.Mutex
	pumps sync.WaitGroup
}

var _ Store = (*Etcd)(nil)

// NewEtcd connects to etcd and checks that it answers.
func NewEtcd(o EtcdOptions) (*Etcd, error) {
	if err := o.setDefaults(); err != nil {
		return nil, fmt.Errorf("store: etcd: %w", err)
	}
	tlsCfg, err := o.tlsConfig()
	if err != nil {
		return nil, fmt.Errorf("store: etcd: %w", err)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            o.Endpoints,
		DialTimeout:          o.DialTimeout,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		TLS:                  tlsCfg,
		Logger:               newZapSlog(o.Logger.With("component", "store", "backend", "etcd")),
	})
	if err != nil {
		return nil, fmt.Errorf("store: etcd %v: %w", o.Endpoints, err)
	}
	life, end := context.WithCancel(context.Background())
	s := &Etcd{
		cli:  cli,
		kv:   namespace.NewKV(cli.KV, o.Prefix),
		w:    namespace.NewWatcher(cli.Watcher, o.Prefix),
		opts: o,
		log:  o.Logger.With("component", "store", "backend", "etcd"),
		life: life,
		end:  end,
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.DialTimeout)
	defer cancel()
	if _, err := s.Revision(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("store: etcd %v did not answer within %v (is it running, are the URLs and TLS files right?): %w",
			o.Endpoints, o.DialTimeout, err)
	}
	return s, nil
}

func (o *EtcdOptions) setDefaults() error {
	if len(o.Endpoints) == 0 {
		return errors.New("endpoints: at least one etcd URL is required")
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		return errors.New("client certificate: give both the certificate and its key, or neither")
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = defaultEtcdDialTimeout
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = defaultEtcdRequestTimeout
	}
	if o.WatchBuffer <= 0 {
		o.WatchBuffer = defaultWatchBuffer
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// tlsConfig is nil for plain-HTTP endpoints, else the client's TLS config.
// Endpoints are given to the client without their scheme deciding TLS, so
// mixing the two is refused here rather than half-working.
func (o *EtcdOptions) tlsConfig() (*tls.Config, error) {
	var secure, plain int
	for _, e := range o.Endpoints {
		switch {
		case strings.HasPrefix(e, "https://"):
			secure++
		case strings.HasPrefix(e, "http://"):
			plain++
		default:
			return nil, fmt.Errorf("endpoint %q: want http://host:port or https://host:port", e)
		}
	}
	files := o.CAFile != "" || o.CertFile != ""
	switch {
	case secure > 0 && plain > 0:
		return nil, errors.New("endpoints mix http:// and https://: use one scheme for all")
	case plain > 0 && files:
		return nil, errors.New("TLS files given but the endpoints are http://: use https:// URLs")
	case plain > 0:
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s: no PEM certificate in it", o.CAFile)
		}
	}
	if o.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// call runs one request under RequestTimeout and turns etcd's errors into
// the store's.
func (s *Etcd) call(ctx context.Context, what string, fn func(ctx context.Context) error) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, s.opts.RequestTimeout)
	defer cancel()
	err := fn(ctx)
	switch {
	case err == nil:
		return nil
	case s.closed.Load():
		return fmt.Errorf("store: etcd %s: %w", what, ErrClosed)
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		return fmt.Errorf("store: etcd %s: %w", what, ErrNotFound)
	case errors.Is(err, rpctypes.ErrCompacted):
		return fmt.Errorf("store: etcd %s: %w", what, ErrCompacted)
	case errors.Is(err, rpctypes.ErrTooManyOps):
		return fmt.Errorf("store: etcd %s: %w (raise the etcd server's --max-txn-ops)", what, err)
	case errors.Is(err, rpctypes.ErrRequestTooLarge):
		return fmt.Errorf("store: etcd %s: %w (raise the etcd server's --max-request-bytes)", what, err)
	}
	return fmt.Errorf("store: etcd %s: %w", what, err)
}

func (s *Etcd) check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.closed.Load() {
		return ErrClosed
	}
	return nil
}

// Get returns the key, or ErrNotFound.
func (s *Etcd) Get(ctx context.Context, key string) (KV, error) {
	if key == "" {
		return KV{}, fmt.Errorf("store: get %q: %w", key, ErrNotFound)
	}
	var resp *clientv3.GetResponse
	err := s.call(ctx, "get", func(ctx context.Context) (err error) {
		resp, err = s.kv.Get(ctx, key)
		return err
	})
	if err != nil {
		return KV{}, err
	}
	if len(resp.Kvs) == 0 {
		return KV{}, fmt.Errorf("store: get %q: %w", key, ErrNotFound)
	}
	return fromEtcdKV(resp.Kvs[0]), nil
}

// List returns every key under prefix in key order and the revision the
// read was served at.
func (s *Etcd) List(ctx context.Context, prefix string) ([]KV, int64, error) {
	var resp *clientv3.GetResponse
	err := s.call(ctx, "list", func(ctx context.Context) (err error) {
		resp, err = s.kv.Get(ctx, prefix, clientv3.WithPrefix())
		return err
	})
	if err != nil {
		return nil, 0, err
	}
	kvs := make([]KV, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		kvs[i] = fromEtcdKV(kv)
	}
	return kvs, resp.Header.Revision, nil
}

// Revision is etcd's current revision (a linearizable read).
func (s *Etcd) Revision(ctx context.Context) (int64, error) {
	var rev int64
	err := s.call(ctx, "revision", func(ctx context.Context) error {
		// Any key will do: a count-only read returns the header's revision
		// and reads no value.
		resp, err := s.kv.Get(ctx, "\x00", clientv3.WithCountOnly())
		if err == nil {
			rev = resp.Header.Revision
		}
		return err
	})
	return rev, err
}

// Txn is one etcd transaction: If(every precondition) Then(every write)
// Else(a read of every compared key, to say which precondition failed).
// Checks are compares with no request, so a Txn of checks only writes
// nothing and returns the current revision, as etcd does.
func (s *Etcd) Txn(ctx context.Context, ops ...Op) (int64, error) {
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	if len(ops) == 0 {
		return s.Revision(ctx)
	}
	if _, err := checkOps(ops); err != nil {
		return 0, err
	}
	var (
		cmps            []clientv3.Cmp
		then, otherwise []clientv3.Op
		compared        []Op
	)
	for _, op := range ops {
		if cmp, ok := etcdCompare(op); ok {
			cmps = append(cmps, cmp)
			otherwise = append(otherwise, clientv3.OpGet(op.Key, clientv3.WithKeysOnly()))
			compared = append(compared, op)
		}
		switch op.Type {
		case OpPut:
			var opts []clientv3.OpOption
			if op.Lease != 0 {
				opts = append(opts, clientv3.WithLease(clientv3.LeaseID(op.Lease)))
			}
			then = append(then, clientv3.OpPut(op.Key, string(op.Value), opts...))
		case OpDelete:
			then = append(then, clientv3.OpDelete(op.Key))
		}
	}
	var resp *clientv3.TxnResponse
	err := s.call(ctx, "txn", func(ctx context.Context) (err error) {
		resp, err = s.kv.Txn(ctx).If(cmps...).Then(then...).Else(otherwise...).Commit()
		return err
	})
	if errors.Is(err, ErrNotFound) {
		return 0, fmt.Errorf("store: txn: %s: %w", leasesOf(ops), err)
	}
	if err != nil {
		return 0, err
	}
	if !resp.Succeeded {
		return 0, conflictOf(compared, resp)
	}
	return resp.Header.Revision, nil
}

// etcdCompare is op's precondition as an etcd Cmp; false for Any. A missing
// key has CreateRevision and ModRevision 0, so Absent is CreateRevision ==
// 0 and a revision never matches a missing key.
func etcdCompare(op Op) (clientv3.Cmp, bool) {
	switch op.ExpectRevision {
	case Any:
		return clientv3.Cmp{}, false
	case Absent:
		return clientv3.Compare(clientv3.CreateRevision(op.Key), "=", 0), true
	}
	return clientv3.Compare(clientv3.ModRevision(op.Key), "=", op.ExpectRevision), true
}

// conflictOf names the first op whose precondition failed, from the Else
// branch's reads (taken at the same revision as the failed compares).
func conflictOf(compared []Op, resp *clientv3.TxnResponse) error {
	for i, op := range compared {
		if i >= len(resp.Responses) {
			break
		}
		kvs := resp.Responses[i].GetResponseRange().GetKvs()
		var err error
		if len(kvs) == 0 {
			err = expectErr(op, false, 0)
		} else {
			err = expectErr(op, true, kvs[0].ModRevision)
		}
		if err != nil {
			return err
		}
	}
	return fmt.Errorf("store: txn: a precondition failed at revision %d: %w", resp.Header.Revision, ErrConflict)
}

// leasesOf describes the leases a Txn's puts use, for an unknown-lease error.
func leasesOf(ops []Op) string {
	var parts []string
	for _, op := range ops {
		if op.Type == OpPut && op.Lease != 0 {
			parts = append(parts, fmt.Sprintf("put %q with lease %d", op.Key, op.Lease))
		}
	}
	return strings.Join(parts, ", ")
}

// Grant creates an etcd lease. etcd counts TTLs in whole seconds, so ttl is
// rounded up, and raises a TTL below its minimum (1.5 election timeouts).
func (s *Etcd) Grant(ctx context.Context, ttl time.Duration) (LeaseID, error) {
	if ttl <= 0 {
		return 0, fmt.Errorf("store: grant: ttl %v: must be positive", ttl)
	}
	secs := int64(math.Ceil(ttl.Seconds()))
	var id LeaseID
	err := s.call(ctx, "grant", func(ctx context.Context) error {
		resp, err := s.cli.Grant(ctx, secs)
		if err == nil {
			id = LeaseID(resp.ID)
			if resp.TTL != secs {
				s.log.Debug("etcd changed a lease's TTL", "asked", secs, "granted", resp.TTL)
			}
		}
		return err
	})
	return id, err
}

// KeepAlive renews the lease once; ErrNotFound if it expired or was revoked.
func (s *Etcd) KeepAlive(ctx context.Context, id LeaseID) error {
	return s.call(ctx, fmt.Sprintf("keepalive lease %d", id), func(ctx context.Context) error {
		_, err := s.cli.KeepAliveOnce(ctx, clientv3.LeaseID(id))
		return err
	})
}

// Revoke ends the lease and deletes its keys in one revision.
func (s *Etcd) Revoke(ctx context.Context, id LeaseID) error {
	return s.call(ctx, fmt.Sprintf("revoke lease %d", id), func(ctx context.Context) error {
		_, err := s.cli.Revoke(ctx, clientv3.LeaseID(id))
		return err
	})
}

// Compact drops etcd's history before rev. It acts on the whole cluster,
// every prefix sharing it included; operators usually let etcd do it
// (--auto-compaction-retention) rather than call it.
func (s *Etcd) Compact(ctx context.Context, rev int64) error {
	return s.call(ctx, fmt.Sprintf("compact to %d", rev), func(ctx context.Context) error {
		_, err := s.cli.Compact(ctx, rev)
		return err
	})
}

// Close ends every watch (their channels close) and the client. Calling it
// again returns nil; every other method then returns ErrClosed.
func (s *Etcd) Close() error {
	s.mu.Lock()
	already := s.closed.Swap(true)
	s.mu.Unlock()
	if already {
		return nil
	}
	s.end()
	s.pumps.Wait()
	s.w.Close()
	if err := s.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("store: etcd close: %w", err)
	}
	return nil
}

func fromEtcdKV(kv *mvccpb.KeyValue) KV {
	return KV{
		Key:            string(kv.Key),
		Value:          kv.Value,
		CreateRevision: kv.CreateRevision,
		ModRevision:    kv.ModRevision,
		Lease:          LeaseID(kv.Lease),
	}
}
