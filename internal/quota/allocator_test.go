package quota

import (
	"math"
	"testing"
	"testing/synctest"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
)

var perSecond500 = &meshv1.RateLimitValue{Requests: 500, Period: durationpb.New(time.Second), Burst: 50}

func demand(policy string, rate float64) []*meshv1.QuotaDemand {
	return []*meshv1.QuotaDemand{{Policy: policy, OfferedRate: rate, Limit: perSecond500}}
}

func shareOf(t *testing.T, g *meshv1.QuotaGrant, policy string) float64 {
	t.Helper()
	for _, s := range g.GetShares() {
		if s.GetPolicy() == policy {
			return s.GetShare()
		}
	}
	t.Fatalf("grant %v has no share of %s", g, policy)
	return 0
}

// TestAllocatorProportional: shares follow demand, with the floor, and add
// up to the limit; a replica taking 70% gets most of it.
func TestAllocatorProportional(t *testing.T) {
	a := NewAllocator(AllocatorOptions{})
	rates := map[string]float64{"a": 1400, "b": 400, "c": 200}
	for id, r := range rates {
		a.Report(id, demand("p", r))
	}
	var sum float64
	got := map[string]float64{}
	for id, r := range rates {
		got[id] = shareOf(t, a.Report(id, demand("p", r)), "p")
		sum += got[id]
	}
	if math.Abs(sum-1) > 1e-9 {
		t.Errorf("shares %v add up to %v, want 1", got, sum)
	}
	// floor 0.1/3 each, then 0.9 × demand share.
	for id, want := range map[string]float64{"a": 0.1/3 + 0.9*0.7, "b": 0.1/3 + 0.9*0.2, "c": 0.1/3 + 0.9*0.1} {
		if math.Abs(got[id]-want) > 1e-9 {
			t.Errorf("%s: share %v, want %v", id, got[id], want)
		}
	}
	if got["a"] < 0.6 {
		t.Errorf("the 70%% replica got %v of the limit", got["a"])
	}
}

func TestAllocatorFloorAndIdle(t *testing.T) {
	a := NewAllocator(AllocatorOptions{})
	a.Report("busy", demand("p", 1000))
	quiet := shareOf(t, a.Report("quiet", demand("p", 0)), "p")
	if want := 0.1 / 2; math.Abs(quiet-want) > 1e-9 {
		t.Errorf("a quiet replica got %v, want the floor %v", quiet, want)
	}
	b := NewAllocator(AllocatorOptions{})
	b.Report("x", demand("p", 0))
	if got := shareOf(t, b.Report("y", demand("p", 0)), "p"); got != 0.5 {
		t.Errorf("no demand anywhere: %v, want an even 0.5", got)
	}
}

// TestAllocatorGroups: a different limit or policy is shared apart; a
// replica that stops reporting a policy leaves it.
func TestAllocatorGroups(t *testing.T) {
	a := NewAllocator(AllocatorOptions{})
	a.Report("a", demand("p", 100))
	other := []*meshv1.QuotaDemand{{Policy: "p", OfferedRate: 100, Limit: &meshv1.RateLimitValue{Requests: 600, Period: durationpb.New(time.Second)}}}
	if got := shareOf(t, a.Report("b", other), "p"); got != 1 {
		t.Errorf("a replica with another limit shares it with others: %v", got)
	}
	a.Report("b", demand("q", 5))
	if n := a.Replicas("p"); n != 1 {
		t.Errorf("%d replicas of p after b left it, want 1", n)
	}
	a.Forget("a")
	if n := a.Replicas("p"); n != 0 {
		t.Errorf("%d replicas after Forget", n)
	}
}

// TestAllocatorExpiry: a replica silent for the TTL no longer holds a
// share, so the others get the whole limit back.
func TestAllocatorExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := NewAllocator(AllocatorOptions{TTL: 3 * time.Second})
		a.Report("gone", demand("p", 500))
		a.Report("live", demand("p", 500))
		for range 4 {
			time.Sleep(time.Second)
			a.Report("live", demand("p", 500))
		}
		if got := shareOf(t, a.Report("live", demand("p", 500)), "p"); got != 1 {
			t.Errorf("share %v after the other replica went silent, want 1", got)
		}
	})
}

// TestAllocatorKeepsShareOfSilentReplicas: while one of three replicas
// (after a control-plane restart, say) has not reported yet, it enforces
// its safe share, a third of the limit, so the two that report share only
// the other two thirds; the three together never exceed the limit. Once
// it reports, shares cover the whole limit again.
func TestAllocatorKeepsShareOfSilentReplicas(t *testing.T) {
	a := NewAllocator(AllocatorOptions{})
	expect3 := func(rate float64) []*meshv1.QuotaDemand {
		d := demand("p", rate)
		d[0].Replicas = 3
		return d
	}
	a.Report("b", expect3(400))
	c := shareOf(t, a.Report("c", expect3(200)), "p")
	b := shareOf(t, a.Report("b", expect3(400)), "p")
	if sum := b + c + 1.0/3; sum > 1+1e-9 {
		t.Errorf("b %v + c %v + the silent replica's safe 1/3 = %v, over the limit", b, c, sum)
	}
	if math.Abs(b+c-2.0/3) > 1e-9 {
		t.Errorf("b %v + c %v = %v, want the two thirds not held back", b, c, b+c)
	}
	a.Report("a", expect3(1400))
	var sum float64
	for id, r := range map[string]float64{"a": 1400, "b": 400, "c": 200} {
		sum += shareOf(t, a.Report(id, expect3(r)), "p")
	}
	if math.Abs(sum-1) > 1e-9 {
		t.Errorf("all three reporting: shares add up to %v, want 1", sum)
	}
}
