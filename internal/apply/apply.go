// Package apply is the control plane's one way to change resources: apply a
// set of objects, or delete one. It reads the stored resources at one
// revision, checks the whole set (config.CheckSet: within the apply, then
// the state after it, refusing only the problems the change introduces),
// and writes in one transaction, or not at all.
//
// The transaction is fenced, so that several control-plane replicas writing
// to one store cannot each pass a cross-object check against the state they
// read and both commit (one removing a Service port while the other attaches
// a route to it). Every change writes FenceKey, compare-and-set on the
// revision at which it read the fence, before it read the resources: any
// change committed since makes the transaction fail with store.ErrConflict,
// and the Applier reads again, checks again and retries (bounded). Keys it
// writes are also compare-and-set, which keeps writers that bypass the
// Applier from being overwritten blindly. On etcd the whole transaction is
// one Txn: compares on the fence and each key, then the puts.
package apply

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"trellis.dev/trellis/internal/config"
	"trellis.dev/trellis/internal/store"
)

// FenceKey is written by every change of resources. Its value is unused; its
// ModRevision is the revision of the last change.
const FenceKey = "/fence/resources"

// DefaultRetries bounds how often a change re-reads and retries after a
// concurrent write.
const DefaultRetries = 8

// Store is what an Applier needs of the store.
type Store interface {
	Get(ctx context.Context, key string) (store.KV, error)
	List(ctx context.Context, prefix string) ([]store.KV, int64, error)
	Txn(ctx context.Context, ops ...store.Op) (int64, error)
}

// Options configure an Applier.
type Options struct {
	// Retries bounds the retries after a concurrent write. Default
	// DefaultRetries.
	Retries int
	// Now stamps the creation time of new resources. Default time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// Errors callers branch on. Both are wrapped with what was being done.
var (
	// ErrNotFound: the resource to delete does not exist.
	ErrNotFound = errors.New("not found")
	// ErrBusy: concurrent writes kept changing the resources for every
	// retry. It wraps store.ErrConflict.
	ErrBusy = fmt.Errorf("resources kept changing under concurrent writes; try again: %w", store.ErrConflict)
)

// Problems is the user's error: the change fails the set checks. Each line
// names the file (when known), the resource, the field and the reason.
type Problems struct {
	Lines []string
}

func (p *Problems) Error() string { return "apply: " + strings.Join(p.Lines, "; ") }

// Object is one object of an apply and the file it came from.
type Object struct {
	Obj  config.Object
	File string
}

// Action is what a change did to one resource.
type Action string

// Actions.
const (
	Created    Action = "created"
	Configured Action = "configured"
	Unchanged  Action = "unchanged"
	Deleted    Action = "deleted"
)

// Result is one resource's action.
type Result struct {
	Ref    config.Ref
	Action Action
}

// Outcome is what a change did. Revision is the new store revision, or the
// revision read when nothing was written (dry run, all unchanged).
type Outcome struct {
	Revision int64
	Results  []Result
}

// Applier applies and deletes resources. Safe for concurrent use.
type Applier struct {
	st      Store
	log     *slog.Logger
	retries int
	now     func() time.Time
	// mu serializes this replica's changes: they all write the fence, so
	// concurrent ones would only conflict and retry. The fence still
	// guards against other replicas.
	mu sync.Mutex
}

// New returns an Applier writing to st.
func New(st Store, o Options) *Applier {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Retries <= 0 {
		o.Retries = DefaultRetries
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Applier{st: st, log: o.Logger.With("component", "apply"), retries: o.Retries, now: o.Now}
}

// Apply creates or updates objs in one transaction; dryRun checks and
// reports without writing. A *Problems error means the set checks refused
// it; ErrBusy that concurrent writes won every retry.
func (a *Applier) Apply(ctx context.Context, objs []Object, dryRun bool) (*Outcome, error) {
	out, err := a.retry(ctx, func(s *snapshot) (*Outcome, []store.Op, error) { return a.plan(s, objs, dryRun) })
	if err != nil {
		return nil, fmt.Errorf("apply: %w", err)
	}
	return out, nil
}

// Delete deletes the resource ref names, in one transaction, unless that
// would introduce a set-check problem (*Problems). ErrNotFound if it does not
// exist.
func (a *Applier) Delete(ctx context.Context, ref config.Ref) (*Outcome, error) {
	out, err := a.retry(ctx, func(s *snapshot) (*Outcome, []store.Op, error) { return planDelete(s, ref) })
	if err != nil {
		return nil, fmt.Errorf("delete %s: %w", ref, err)
	}
	return out, nil
}

// retry reads, plans and commits, again after every conflict.
func (a *Applier) retry(ctx context.Context, plan func(*snapshot) (*Outcome, []store.Op, error)) (*Outcome, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for range a.retries + 1 {
		s, err := a.read(ctx)
		if err != nil {
			return nil, err
		}
		out, ops, err := plan(s)
		if err != nil || len(ops) == 0 {
			return out, err
		}
		ops = append(ops, store.Put(FenceKey, nil, s.fence))
		rev, err := a.st.Txn(ctx, ops...)
		if errors.Is(err, store.ErrConflict) {
			a.log.Debug("concurrent write, reading again", "err", err)
			continue
		}
		if err != nil {
			return nil, err
		}
		out.Revision = rev
		a.log.Info("resources changed", "revision", rev, "changed", len(ops)-1, "results", len(out.Results))
		return out, nil
	}
	return nil, ErrBusy
}

// snapshot is the stored resources at one revision, and the fence's
// revision read before them.
type snapshot struct {
	fence int64 // ModRevision of FenceKey, or store.Absent
	rev   int64
	kvs   map[string]store.KV
	objs  map[config.Ref]config.Object
	order []config.Ref // store key order
}

func (a *Applier) read(ctx context.Context) (*snapshot, error) {
	s := &snapshot{fence: store.Absent, kvs: map[string]store.KV{}, objs: map[config.Ref]config.Object{}}
	// The fence first: a change committed after this read, even one that
	// lands before the List, fails our Txn.
	kv, err := a.st.Get(ctx, FenceKey)
	switch {
	case err == nil:
		s.fence = kv.ModRevision
	case !errors.Is(err, store.ErrNotFound):
		return nil, err
	}
	kvs, rev, err := a.st.List(ctx, config.ResourcePrefix)
	if err != nil {
		return nil, err
	}
	s.rev = rev
	for _, kv := range kvs {
		ref, err := config.ParseStoreKey(kv.Key)
		if err != nil {
			continue
		}
		o, err := config.DecodeStored(ref.Kind, kv.Value)
		if err != nil {
			a.log.Warn("stored resource does not decode; it is left out of set checks", "key", kv.Key, "err", err)
			continue
		}
		s.kvs[kv.Key] = kv
		s.objs[ref] = o
		s.order = append(s.order, ref)
	}
	return s, nil
}

func (s *snapshot) list() []config.Object {
	out := make([]config.Object, 0, len(s.order))
	for _, ref := range s.order {
		out = append(out, s.objs[ref])
	}
	return out
}

// plan checks objs against s and returns the ops that apply them.
func (a *Applier) plan(s *snapshot, objs []Object, dryRun bool) (*Outcome, []store.Op, error) {
	applied := make([]config.Object, 0, len(objs))
	fileOf := map[config.Ref]string{}
	for _, o := range objs {
		applied = append(applied, o.Obj)
		if _, ok := fileOf[o.Obj.Ref()]; !ok {
			fileOf[o.Obj.Ref()] = o.File
		}
	}
	// Within the apply first (duplicates, ports), then the state after it.
	origin := func(i int) string { return objs[i].File }
	if p := newProblems(config.CheckSetIn(applied, origin), nil, fileOf); p != nil {
		return nil, nil, p
	}
	after := make([]config.Object, 0, len(s.order)+len(applied))
	byRef := map[config.Ref]config.Object{}
	for _, o := range applied {
		byRef[o.Ref()] = o
	}
	for _, ref := range s.order {
		if o, ok := byRef[ref]; ok {
			after = append(after, o)
			continue
		}
		after = append(after, s.objs[ref])
	}
	for _, o := range applied {
		if _, ok := s.objs[o.Ref()]; !ok {
			after = append(after, o)
		}
	}
	if p := newProblems(config.CheckSet(after), config.CheckSet(s.list()), fileOf); p != nil {
		return nil, nil, p
	}

	now := metav1.NewTime(a.now().UTC().Truncate(time.Second))
	out := &Outcome{Revision: s.rev}
	var ops []store.Op
	for _, o := range applied {
		ref := o.Ref()
		key := config.StoreKey(ref)
		kv, exists := s.kvs[key]
		keepCreationTime(o, s.objs[ref], exists, now)
		value, err := config.Encode(o)
		if err != nil {
			return nil, nil, fmt.Errorf("encode %s: %w", ref, err)
		}
		res := Result{Ref: ref}
		switch {
		case !exists:
			res.Action = Created
			ops = append(ops, store.Put(key, value, store.Absent))
		case string(kv.Value) == string(value):
			res.Action = Unchanged
		default:
			res.Action = Configured
			ops = append(ops, store.Put(key, value, kv.ModRevision))
		}
		out.Results = append(out.Results, res)
	}
	if dryRun {
		return out, nil, nil
	}
	return out, ops, nil
}

// keepCreationTime stamps o with the stored object's creation time, or now
// for a new one: the creation time orders routes (Gateway API precedence),
// so an update keeps the original.
func keepCreationTime(o, stored config.Object, exists bool, now metav1.Time) {
	m, ok := o.(interface {
		GetCreationTimestamp() metav1.Time
		SetCreationTimestamp(metav1.Time)
	})
	if !ok {
		return
	}
	ts := now
	if old, ok := stored.(interface{ GetCreationTimestamp() metav1.Time }); exists && ok {
		if t := old.GetCreationTimestamp(); !t.IsZero() {
			ts = t
		}
	}
	m.SetCreationTimestamp(ts)
}

// planDelete returns the op deleting ref, refusing a delete that leaves the
// remaining set with a problem it did not have.
func planDelete(s *snapshot, ref config.Ref) (*Outcome, []store.Op, error) {
	key := config.StoreKey(ref)
	kv, ok := s.kvs[key]
	if !ok {
		return nil, nil, ErrNotFound
	}
	after := make([]config.Object, 0, len(s.order))
	for _, r := range s.order {
		if r != ref {
			after = append(after, s.objs[r])
		}
	}
	if p := newProblems(config.CheckSet(after), config.CheckSet(s.list()), nil); p != nil {
		return nil, nil, p
	}
	out := &Outcome{Revision: s.rev, Results: []Result{{Ref: ref, Action: Deleted}}}
	return out, []store.Op{store.Delete(key, kv.ModRevision)}, nil
}

type errKey struct {
	ref          config.Ref
	field, cause string
}

// newProblems renders the problems of err that are not in before (a problem
// the store already had is not the change's), each once, naming the file
// the resource came from. Nil if none.
func newProblems(err, before error, fileOf map[config.Ref]string) *Problems {
	skip := map[errKey]bool{}
	for _, e := range config.Errors(before) {
		skip[errKey{e.Ref, e.Field, e.Reason}] = true
	}
	var lines []string
	shown := map[string]bool{}
	for _, e := range config.Errors(err) {
		if skip[errKey{e.Ref, e.Field, e.Reason}] {
			continue
		}
		c := *e
		if c.File == "" {
			c.File = fileOf[e.Ref]
		}
		// Once per line: one resource's problem in two files (a
		// duplicate) is two lines.
		if line := c.Error(); !shown[line] {
			shown[line] = true
			lines = append(lines, line)
		}
	}
	if err != nil && len(config.Errors(err)) == 0 {
		lines = append(lines, err.Error())
	}
	if len(lines) == 0 {
		return nil
	}
	return &Problems{Lines: lines}
}
