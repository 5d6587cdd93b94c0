package control

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"trellis.dev/trellis/internal/config"
	"trellis.dev/trellis/internal/store"
)

// AuditPrefix holds the audit log: one key per entry, created absent-only
// (compare-and-set on "absent") in the transaction of the change it records,
// so an entry exists exactly when its change does. Nothing writes an
// existing audit key or deletes one: no API route does, and the applier
// writes only under config.ResourcePrefix.
const AuditPrefix = "/audit/"

// AuditEntry is one line of the audit log: who did what, when, at which
// store revision (the revision of the change, read from the entry's own
// ModRevision).
type AuditEntry struct {
	Time time.Time `json:"time"`
	// Who: "admin-token" (the data dir's file), "token:<id>" (an admin API
	// or join token), "cert:<serial>" (a renewing proxy), "bootstrap-token"
	// (dev mode).
	Who string `json:"who"`
	// Action: apply, delete, token.create, token.revoke, ca.issue.
	Action string `json:"action"`
	// Target: the resources changed, the token id, the identity issued.
	Target   string `json:"target"`
	Detail   string `json:"detail,omitempty"`
	Revision int64  `json:"revision"`
}

// op is the store op that appends e: a key ordered by time, with random
// bits so two replicas' entries in one nanosecond never collide, created
// only if absent.
func (e AuditEntry) op() (store.Op, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return store.Op{}, fmt.Errorf("audit: %w", err)
	}
	e.Revision = 0 // known only once committed
	val, err := json.Marshal(e)
	if err != nil {
		return store.Op{}, fmt.Errorf("audit: encode: %w", err)
	}
	key := fmt.Sprintf("%s%020d-%s", AuditPrefix, e.Time.UnixNano(), hex.EncodeToString(b[:]))
	return store.Put(key, val, store.Absent), nil
}

// readAudit lists the audit log in revision order; limit > 0 keeps the
// newest limit entries.
func readAudit(ctx context.Context, st interface {
	List(ctx context.Context, prefix string) ([]store.KV, int64, error)
}, limit int) ([]AuditEntry, error) {
	kvs, _, err := st.List(ctx, AuditPrefix)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	out := make([]AuditEntry, 0, len(kvs))
	for _, kv := range kvs {
		var e AuditEntry
		if err := json.Unmarshal(kv.Value, &e); err != nil {
			continue
		}
		e.Revision = kv.ModRevision
		out = append(out, e)
	}
	slices.SortStableFunc(out, func(a, b AuditEntry) int { return cmp.Compare(a.Revision, b.Revision) })
	if limit > 0 && len(out) > limit {
		out = out[len(out)-limit:]
	}
	return out, nil
}

// auditCtxKey carries the caller of an admin API change to auditingStore.
type auditCtxKey struct{}

type auditIntent struct {
	who, action string
	now         time.Time
}

func withAudit(ctx context.Context, who, action string, now time.Time) context.Context {
	return context.WithValue(ctx, auditCtxKey{}, auditIntent{who: who, action: action, now: now})
}

// auditingStore is the store the applier writes through: a transaction
// made for an admin API change (its context says who) gets the change's
// audit entry as one more op, so the change and its record commit together
// or not at all.
type auditingStore struct {
	tokenKV
}

func (a auditingStore) Txn(ctx context.Context, ops ...store.Op) (int64, error) {
	in, ok := ctx.Value(auditCtxKey{}).(auditIntent)
	if !ok {
		return a.tokenKV.Txn(ctx, ops...)
	}
	e := AuditEntry{Time: in.now.UTC(), Who: in.who, Action: in.action, Target: describeOps(ops)}
	op, err := e.op()
	if err != nil {
		return 0, err
	}
	return a.tokenKV.Txn(ctx, append(ops, op)...)
}

// describeOps names the resources a transaction writes: "put
// Service/default/orders, delete HTTPRoute/default/split".
func describeOps(ops []store.Op) string {
	var parts []string
	for _, op := range ops {
		rest, ok := strings.CutPrefix(op.Key, config.ResourcePrefix)
		if !ok {
			continue
		}
		verb := "put"
		if op.Type == store.OpDelete {
			verb = "delete"
		}
		parts = append(parts, verb+" "+rest)
	}
	return strings.Join(parts, ", ")
}
