package lb

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"testing"
)

// TestEvenDistribution: random, round robin and least request spread equal
// endpoints evenly, with a few calls held in flight so that load counts.
// Random and round robin from several goroutines; least request from one,
// since a goroutine descheduled while it holds calls rightly makes their
// endpoints lose for a while.
func TestEvenDistribution(t *testing.T) {
	for _, policy := range []Policy{Random, RoundRobin, LeastRequest} {
		for _, n := range []int{3, 10, 100} {
			t.Run(fmt.Sprintf("%s/n=%d", policy, n), func(t *testing.T) {
				eps := numbered("ep", n)
				p, err := NewPicker(Config{Policy: policy}, eps)
				if err != nil {
					t.Fatal(err)
				}
				counts := make(map[*Endpoint]int)
				var mu sync.Mutex
				var wg sync.WaitGroup
				goroutines := 4
				if policy == LeastRequest {
					goroutines = 1
				}
				perG := 80000 / goroutines
				for range goroutines {
					wg.Go(func() {
						local := make(map[*Endpoint]int)
						var held []Call
						for i := range perG {
							c, _ := p.Pick(nil, eps, nil)
							local[c.Endpoint()]++
							// Hold a few calls so in-flight counts differ.
							if held = append(held, c); len(held) > 3 || i == perG-1 {
								for _, h := range held {
									h.Done(Success)
								}
								held = held[:0]
							}
						}
						mu.Lock()
						for e, c := range local {
							counts[e] += c
						}
						mu.Unlock()
					})
				}
				wg.Wait()
				fair := float64(perG*goroutines) / float64(n)
				// Binomial spread is ~sqrt(fair): 100 endpoints get 800
				// picks each, ±28; allow ±20% (7 sigma).
				for _, e := range eps {
					if c := float64(counts[e]); c < fair*0.8 || c > fair*1.2 {
						t.Fatalf("%s got %v picks, want %v ± 20%%", e.Addr(), c, fair)
					}
				}
			})
		}
	}
}

// keyed returns n requests hashed by header X-User, values user0, user1...
func keyed(n int) []*Request {
	rs := make([]*Request, n)
	for i := range rs {
		rs[i] = &Request{Header: http.Header{"X-User": {fmt.Sprint("user", i)}}}
	}
	return rs
}

// assign maps each request to the endpoint p sends it to (by address).
func assign(t *testing.T, p Picker, eps []*Endpoint, rs []*Request) []string {
	t.Helper()
	out := make([]string, len(rs))
	for i, r := range rs {
		c, ok := p.Pick(r, eps, nil)
		if !ok {
			t.Fatal("no pick")
		}
		out[i] = c.Endpoint().Addr()
		c.Done(Abandoned)
	}
	return out
}

// TestConsistentHashing: a key always goes to the same endpoint, whatever
// the endpoints' order (so every proxy agrees); removing one endpoint
// moves its own keys and (Maglev) few others; keys spread over every
// endpoint.
func TestConsistentHashing(t *testing.T) {
	const keys = 20000
	rs := keyed(keys)
	key := HashKey{Kind: HashHeader, Name: "x-user"}
	for _, tc := range []struct {
		policy Policy
		n      int
	}{{RingHash, 10}, {RingHash, 100}, {Maglev, 10}, {Maglev, 100}} {
		policy, n := tc.policy, tc.n
		t.Run(fmt.Sprintf("%s/n=%d", policy, n), func(t *testing.T) {
			eps := numbered("10.0.0.", n)
			p, _ := NewPicker(Config{Policy: policy, Hash: key}, eps)
			before := assign(t, p, eps, rs)
			if again := assign(t, p, eps, rs); !slices.Equal(before, again) {
				t.Fatal("the same keys went to other endpoints the second time")
			}
			// Another proxy, its endpoints in another order.
			shuffled := slices.Clone(eps)
			rand.New(rand.NewPCG(1, 2)).Shuffle(n, func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
			other, _ := NewPicker(Config{Policy: policy, Hash: key}, shuffled)
			if got := assign(t, other, shuffled, rs); !slices.Equal(before, got) {
				t.Fatal("a picker built from the same endpoints in another order sends keys elsewhere")
			}
			// Spread: each endpoint owns about 1/n of the keys.
			share := map[string]int{}
			for _, a := range before {
				share[a]++
			}
			// Ring hash: 160 points each, ~8% off, and keys binomially
			// (200 a share at n=100: ~7%). Maglev's table splits within 1%.
			lo, hi := 0.6, 1.4
			if policy == Maglev {
				lo, hi = 0.75, 1.25
			}
			for _, e := range eps {
				if f := float64(share[e.Addr()]*n) / keys; f < lo || f > hi {
					t.Errorf("%s owns %.2f of a fair share of keys, want %.2f..%.2f", e.Addr(), f, lo, hi)
				}
			}
			// Remove endpoint 3: only its keys (and, Maglev, few others) move.
			removed := eps[3].Addr()
			rest := slices.Delete(slices.Clone(eps), 3, 4)
			after := assign(t, mustPicker(t, Config{Policy: policy, Hash: key}, rest), rest, rs)
			moved, movedOthers := 0, 0
			for i := range before {
				if before[i] != after[i] {
					moved++
					if before[i] != removed {
						movedOthers++
					}
				}
			}
			t.Logf("%s: removing 1 of %d endpoints moved %.2f%% of keys (ideal %.2f%%); %.2f%% of keys not on it",
				policy, n, 100*float64(moved)/keys, 100/float64(n), 100*float64(movedOthers)/keys)
			switch policy {
			case RingHash:
				if movedOthers != 0 {
					t.Fatalf("ring hash moved %d keys that were not on the removed endpoint", movedOthers)
				}
			case Maglev:
				// Under 1% at M=65537, n ≤ 100 (the paper's Figure 11).
				if movedOthers > keys/100 {
					t.Fatalf("maglev moved %d of %d keys that were not on the removed endpoint, want < 1%%", movedOthers, keys)
				}
			}
			if moved < keys/n/2 || moved > keys*2/n {
				t.Fatalf("moved %d of %d keys, want about %d", moved, keys, keys/n)
			}
		})
	}
}

func mustPicker(t *testing.T, cfg Config, eps []*Endpoint) Picker {
	t.Helper()
	p, err := NewPicker(cfg, eps)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestHashingWithoutKey: a request without the key (or no request, or a
// slice other than the one the picker was built for) is balanced randomly.
func TestHashingWithoutKey(t *testing.T) {
	for _, policy := range []Policy{RingHash, Maglev} {
		for _, k := range []HashKey{{HashHeader, "x-user"}, {HashCookie, "session"}, {HashQuery, "user"}, {HashSource, ""}, {}} {
			t.Run(fmt.Sprintf("%s/%d", policy, k.Kind), func(t *testing.T) {
				eps := numbered("ep", 4)
				p := mustPicker(t, Config{Policy: policy, Hash: k}, eps)
				bare := &Request{Header: http.Header{"Cookie": {"other=1"}}, RawQuery: "other=1"}
				for _, r := range []*Request{nil, bare} {
					checkPicks(t, p, nil, eps, nil, eps)
					seen := map[*Endpoint]bool{}
					for range 200 {
						c, _ := p.Pick(r, eps, nil)
						seen[c.Endpoint()] = true
						c.Done(Abandoned)
					}
					if len(seen) != len(eps) {
						t.Fatalf("keyless requests reached %d of %d endpoints", len(seen), len(eps))
					}
				}
				// Keyed, but against a set it was not built for: random.
				seen := map[*Endpoint]bool{}
				for range 200 {
					c, _ := p.Pick(hashedReq(), eps[:3], nil)
					seen[c.Endpoint()] = true
					c.Done(Abandoned)
				}
				if len(seen) != 3 {
					t.Fatalf("picks from another set reached %d of 3 endpoints", len(seen))
				}
			})
		}
	}
}

// TestHashingRetryAndEjection: a key's retry, or the key while its endpoint
// is ejected, goes to one other endpoint, the same every time; and back
// when the endpoint returns.
func TestHashingRetryAndEjection(t *testing.T) {
	for _, policy := range []Policy{RingHash, Maglev} {
		t.Run(string(policy), func(t *testing.T) {
			eps := numbered("ep", 5)
			p := mustPicker(t, Config{Policy: policy, Hash: HashKey{HashHeader, "x-user"}}, eps)
			for _, r := range keyed(50) {
				home := pickOf(t, p, r, eps, nil)
				retry := pickOf(t, p, r, eps, []*Endpoint{home})
				if retry == home {
					t.Fatal("a retry went to the endpoint it had tried")
				}
				if again := pickOf(t, p, r, eps, []*Endpoint{home}); again != retry {
					t.Fatalf("retries of one key went to %s and %s", retry.Addr(), again.Addr())
				}
				home.Eject(farFuture)
				if got := pickOf(t, p, r, eps, nil); got != retry {
					t.Fatalf("with its endpoint ejected the key went to %s, want %s (where its retry goes)", got.Addr(), retry.Addr())
				}
				home.Eject(past)
				if got := pickOf(t, p, r, eps, nil); got != home {
					t.Fatalf("the key did not come back to %s after its ejection", home.Addr())
				}
			}
		})
	}
}

func pickOf(t *testing.T, p Picker, r *Request, eps, tried []*Endpoint) *Endpoint {
	t.Helper()
	c, ok := p.Pick(r, eps, tried)
	if !ok {
		t.Fatal("no pick")
	}
	c.Done(Abandoned)
	return c.Endpoint()
}

// TestLeastRequestAvoidsBusy: an endpoint with calls in flight loses every
// comparison with an idle one, so it is picked only when nothing idle is
// left to compare it with.
func TestLeastRequestAvoidsBusy(t *testing.T) {
	eps := numbered("ep", 4)
	p := mustPicker(t, Config{Policy: LeastRequest}, eps)
	var held []Call
	for range 3 {
		c, _ := p.Pick(nil, eps[:1], nil)
		held = append(held, c)
	}
	counts := map[*Endpoint]int{}
	for range 3000 {
		c, _ := p.Pick(nil, eps, nil)
		counts[c.Endpoint()]++
		c.Done(Success)
	}
	if counts[eps[0]] != 0 {
		t.Fatalf("the busy endpoint drew %d of 3000 picks against idle ones", counts[eps[0]])
	}
	for _, c := range held {
		c.Done(Success)
	}
	if c, _ := p.Pick(nil, eps[:1], nil); c.Endpoint() != eps[0] {
		t.Fatal("a lone busy endpoint is not picked")
	}
}

// BenchmarkBuild is what a hashing picker costs at snapshot compile, when
// a service's endpoint set changes (never per request).
func BenchmarkBuild(b *testing.B) {
	for _, policy := range []Policy{RingHash, Maglev} {
		for _, n := range []int{10, 100, 1000} {
			eps := numbered("10.1.", n)
			b.Run(fmt.Sprintf("%s/n=%d", policy, n), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					_, _ = NewPicker(Config{Policy: policy, Hash: HashKey{HashHeader, "x"}}, eps)
				}
			})
		}
	}
}
