package ratelimit

import (
	"fmt"
	"testing"
	"time"
)

func TestKeyedSeparateBuckets(t *testing.T) {
	k := NewKeyed(TokenBucketAlgorithm, perSecond(1, 1), 10)
	if !k.Decide("a", 0).Allowed || !k.Decide("b", 0).Allowed {
		t.Fatal("first request of each key refused")
	}
	if k.Decide("a", 0).Allowed {
		t.Error("a's second allowed: keys share a bucket")
	}
}

func TestKeyedBoundOverflowShares(t *testing.T) {
	k := NewKeyed(TokenBucketAlgorithm, perSecond(1, 1), 2)
	k.Decide("a", 0)
	k.Decide("b", 0)
	// Set full of busy keys: c and d share the overflow bucket.
	if !k.Decide("c", 0).Allowed {
		t.Fatal("c refused: the overflow bucket was not full")
	}
	if k.Decide("d", 0).Allowed {
		t.Error("d allowed: past the bound new keys must share one bucket")
	}
	if k.Len() != 2 {
		t.Errorf("%d keys held, want the bound 2", k.Len())
	}
	// Once a and b are idle (refilled) the sweep drops them and makes room.
	later := int64(5 * time.Second)
	if !k.Decide("e", later).Allowed {
		t.Error("e refused after the idle keys could be dropped")
	}
	if k.Len() != 1 {
		t.Errorf("%d keys after the sweep, want 1 (e)", k.Len())
	}
}

func TestKeyedSetLimit(t *testing.T) {
	k := NewKeyed(TokenBucketAlgorithm, perSecond(10, 1), 10)
	k.Decide("a", 0)
	k.SetLimit(perSecond(1, 1), 0)
	if k.Decide("a", 50*ms).Allowed {
		t.Error("a refilled at the old rate")
	}
	if got := k.Decide("new", 0); !got.Allowed {
		t.Error("new key refused")
	}
	if k.Decide("new", 100*ms).Allowed {
		t.Error("a new key got the old limit")
	}
}

func TestPolicyScopesAndOverrides(t *testing.T) {
	spiffe := func(sa string) string { return "spiffe://trellis.local/ns/default/sa/" + sa }
	p := NewPolicy(Spec{
		Algorithm: TokenBucketAlgorithm,
		Limit:     perSecond(1, 1),
		Scope:     ScopeIdentity,
		Overrides: []Override{{Identities: []string{spiffe("batch")}, Limit: perSecond(1, 3)}},
	})
	if !p.Decide(spiffe("web"), "", 0).Allowed || p.Decide(spiffe("web"), "", 0).Allowed {
		t.Error("web: want 1 then refused")
	}
	if !p.Decide(spiffe("api"), "", 0).Allowed {
		t.Error("api limited by web's bucket")
	}
	n := 0
	for p.Decide(spiffe("batch"), "", 0).Allowed {
		n++
	}
	if n != 3 {
		t.Errorf("override admitted %d, want its burst 3", n)
	}

	h := NewPolicy(Spec{Limit: perSecond(1, 1), Scope: ScopeHeader})
	if !h.Decide("x", "tenant-a", 0).Allowed || !h.Decide("x", "tenant-b", 0).Allowed {
		t.Error("per-header keys share a bucket")
	}
	if h.Decide("y", "tenant-a", 0).Allowed {
		t.Error("per-header: the identity changed the key")
	}
}

func TestPolicySetShare(t *testing.T) {
	p := NewPolicy(Spec{Limit: perSecond(100, 1)})
	p.SetShare(0.1, 0) // 10/s: 100 ms per request
	p.Decide("", "", 0)
	if p.Decide("", "", 50*ms).Allowed {
		t.Error("a 10% share admitted at 20/s")
	}
	if !p.Decide("", "", 100*ms).Allowed {
		t.Error("a 10% share refused at 10/s")
	}
	if p.Share() != 0.1 {
		t.Errorf("share %v", p.Share())
	}
}

func ExamplePolicy() {
	p := NewPolicy(Spec{Algorithm: LeakyBucketAlgorithm, Limit: Limit{Requests: 2, Period: time.Second, Burst: 1}})
	for range 3 {
		d := p.Decide("", "", 0)
		fmt.Println(d.Allowed, d.Delay)
	}
	// Output:
	// true 0s
	// true 500ms
	// false 0s
}
