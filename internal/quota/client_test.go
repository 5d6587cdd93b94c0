package quota

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/ratelimit"
)

// pipe is an in-memory Quota stream: reports go to the test's allocator
// loop, grants come back; broken ends it.
type pipe struct {
	ctx     context.Context
	reports chan *meshv1.QuotaReport
	grants  chan *meshv1.QuotaGrant
}

func (p *pipe) Send(r *meshv1.QuotaReport) error {
	select {
	case p.reports <- r:
		return nil
	case <-p.ctx.Done():
		return p.ctx.Err()
	}
}

func (p *pipe) Recv() (*meshv1.QuotaGrant, error) {
	select {
	case g := <-p.grants:
		return g, nil
	case <-p.ctx.Done():
		return nil, p.ctx.Err()
	}
}

// controlPlane serves pipes from an allocator; down refuses new streams
// and breaks open ones.
type controlPlane struct {
	a    *Allocator
	mu   sync.Mutex
	down bool
	stop []context.CancelFunc
	// first records each stream's first report.
	first []*meshv1.QuotaReport
}

func (cp *controlPlane) open(ctx context.Context) (Stream, error) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.down {
		return nil, errors.New("connection refused")
	}
	ctx, cancel := context.WithCancel(ctx)
	cp.stop = append(cp.stop, cancel)
	p := &pipe{ctx: ctx, reports: make(chan *meshv1.QuotaReport), grants: make(chan *meshv1.QuotaGrant, 1)}
	go func() {
		id := ""
		for {
			select {
			case r := <-p.reports:
				if id == "" {
					id = r.GetNodeId()
					cp.mu.Lock()
					cp.first = append(cp.first, r)
					cp.mu.Unlock()
				}
				p.grants <- cp.a.Report(id, r.GetDemands())
			case <-ctx.Done():
				cp.a.Forget(id)
				return
			}
		}
	}()
	return p, nil
}

func (cp *controlPlane) setDown(down bool) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	cp.down = down
	if down {
		for _, c := range cp.stop {
			c()
		}
		cp.stop = nil
	}
}

// TestClientSharesAndDegrades: two replicas of a global limit, one offered
// 3× the other: they get shares near 3:1; with the control plane down both
// fall back to half (the limit ÷ 2 endpoints); when it returns, the
// granted shares come back.
func TestClientSharesAndDegrades(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		epoch := time.Now()
		clock := func() int64 { return int64(time.Since(epoch)) }
		cp := &controlPlane{a: NewAllocator(AllocatorOptions{})}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		spec := ratelimit.Spec{Limit: ratelimit.Limit{Requests: 400, Period: time.Second, Burst: 10}}
		regs := make([]*ratelimit.Registry, 2)
		entries := make([]*ratelimit.Entry, 2)
		var wg sync.WaitGroup
		for i := range regs {
			regs[i] = ratelimit.NewRegistry(clock)
			regs[i].SetReplicas(2)
			entries[i] = regs[i].Bind("inbound service default/p", spec, true)
			wg.Go(func() {
				_ = Run(ctx, ClientOptions{NodeID: []string{"a", "b"}[i], Open: cp.open, Limits: regs[i]})
			})
		}
		// Offered load: 300/s to a, 100/s to b.
		load := func(d time.Duration) {
			for range int(d / (10 * time.Millisecond)) {
				for range 3 {
					entries[0].Decide("", "", clock())
				}
				entries[1].Decide("", "", clock())
				time.Sleep(10 * time.Millisecond)
			}
		}
		if got := entries[0].Policy().Share(); got != 0.5 {
			t.Fatalf("before any grant: share %v, want the safe 1/2", got)
		}
		load(3 * time.Second)
		a, b := entries[0].Policy().Share(), entries[1].Policy().Share()
		if want := 0.05 + 0.9*0.75; a < want-0.02 || a > want+0.02 || b > 0.3 {
			t.Errorf("granted shares a=%v b=%v, want a≈%v", a, b, want)
		}
		cp.setDown(true)
		load(time.Second)
		if a, b := entries[0].Policy().Share(), entries[1].Policy().Share(); a != 0.5 || b != 0.5 {
			t.Errorf("control plane down: shares %v, %v, want the safe 1/2 each", a, b)
		}
		cp.setDown(false)
		load(15 * time.Second) // the retry backoff grew while it was down
		if a := entries[0].Policy().Share(); a < 0.6 {
			t.Errorf("after the control plane came back: share %v, want the granted ≈0.72", a)
		}
		cp.mu.Lock()
		for _, r := range cp.first {
			if r.GetNodeId() == "" {
				t.Error("a stream's first report has no node id")
			}
		}
		cp.mu.Unlock()
		cancel()
		wg.Wait()
	})
}

// TestClientStaleGrants: a control plane that takes reports but stops
// answering is not trusted past a few intervals.
func TestClientStaleGrants(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		epoch := time.Now()
		reg := ratelimit.NewRegistry(func() int64 { return int64(time.Since(epoch)) })
		reg.SetReplicas(4)
		e := reg.Bind("k", ratelimit.Spec{Limit: ratelimit.Limit{Requests: 100, Period: time.Second}}, true)
		ctx, cancel := context.WithCancel(context.Background())
		var mu sync.Mutex
		answer := true
		open := func(ctx context.Context) (Stream, error) {
			p := &pipe{ctx: ctx, reports: make(chan *meshv1.QuotaReport), grants: make(chan *meshv1.QuotaGrant, 1)}
			go func() {
				for {
					select {
					case <-p.reports:
						mu.Lock()
						ok := answer
						mu.Unlock()
						if ok {
							p.grants <- &meshv1.QuotaGrant{Shares: []*meshv1.QuotaShare{{Policy: "k", Share: 0.9}}}
						}
					case <-ctx.Done():
						return
					}
				}
			}()
			return p, nil
		}
		done := make(chan struct{})
		go func() { _ = Run(ctx, ClientOptions{NodeID: "n", Open: open, Limits: reg}); close(done) }()
		time.Sleep(2 * time.Second)
		if got := e.Policy().Share(); got != 0.9 {
			t.Fatalf("share %v, want the granted 0.9", got)
		}
		mu.Lock()
		answer = false
		mu.Unlock()
		time.Sleep(3 * time.Second)
		if got := e.Policy().Share(); got != 0.25 {
			t.Errorf("share %v with no grant for 3 s, want the safe 1/4", got)
		}
		cancel()
		<-done
	})
}
