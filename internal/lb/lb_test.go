package lb

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestNew(t *testing.T) {
	tests := []struct {
		policy  Policy
		want    string
		wantErr string
	}{
		{policy: PeakEWMA, want: "*lb.PeakEWMAPicker"},
		{policy: "", want: "*lb.PeakEWMAPicker"},
		{policy: RoundRobin, want: "*lb.RoundRobinPicker"},
		{policy: Random, want: "*lb.RandomPicker"},
		{policy: LeastRequest, want: "*lb.LeastRequestPicker"},
		{policy: RingHash, want: "*lb.RingHashPicker"},
		{policy: Maglev, want: "*lb.MaglevPicker"},
		{policy: "bogus", wantErr: `unknown policy "bogus" (valid: p2c-ewma, round-robin, random, least-request, ring-hash, maglev)`},
		{policy: "P2C-EWMA", wantErr: "unknown policy"},
	}
	for _, tt := range tests {
		t.Run(string(tt.policy), func(t *testing.T) {
			p, err := New(tt.policy)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("New(%q) error = %v, want containing %q", tt.policy, err, tt.wantErr)
				}
				if p != nil {
					t.Fatalf("New(%q) returned a picker with an error", tt.policy)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := fmt.Sprintf("%T", p); got != tt.want {
				t.Fatalf("New(%q) = %s, want %s", tt.policy, got, tt.want)
			}
		})
	}
}

// TestTriedExcluded: neither picker returns an endpoint in tried, and each
// says ok=false when nothing is left.
func TestTriedExcluded(t *testing.T) {
	eps := newEps("a", "b", "c", "d")
	a, b, c, d := eps[0], eps[1], eps[2], eps[3]
	stranger := NewEndpoint("a") // same address, other state: not tried
	tests := []struct {
		name  string
		eps   []*Endpoint
		tried []*Endpoint
		want  []*Endpoint // every one of these is picked, nothing else; none: ok=false
	}{
		{name: "empty", eps: nil, want: nil},
		{name: "empty with tried", eps: []*Endpoint{}, tried: []*Endpoint{a}, want: nil},
		{name: "single", eps: []*Endpoint{a}, want: []*Endpoint{a}},
		{name: "single tried", eps: []*Endpoint{a}, tried: []*Endpoint{a}, want: nil},
		{name: "all tried", eps: eps, tried: []*Endpoint{d, b, a, c}, want: nil},
		{name: "none tried", eps: eps, want: eps},
		{name: "one tried", eps: eps, tried: []*Endpoint{b}, want: []*Endpoint{a, c, d}},
		{name: "first tried", eps: eps, tried: []*Endpoint{a}, want: []*Endpoint{b, c, d}},
		{name: "last tried", eps: eps, tried: []*Endpoint{d}, want: []*Endpoint{a, b, c}},
		{name: "one left", eps: eps, tried: []*Endpoint{a, b, d}, want: []*Endpoint{c}},
		{name: "two left", eps: eps, tried: []*Endpoint{c, a}, want: []*Endpoint{b, d}},
		{name: "tried twice", eps: eps, tried: []*Endpoint{c, c}, want: []*Endpoint{a, b, d}},
		{name: "tried not in eps", eps: []*Endpoint{a, b}, tried: []*Endpoint{stranger, c}, want: []*Endpoint{a, b}},
	}
	for _, tt := range tests {
		for _, policy := range Policies() {
			t.Run(tt.name+"/"+string(policy), func(t *testing.T) {
				p := newSeeded(policy, 10)
				got := map[*Endpoint]int{}
				for range 400 {
					c, ok := p.Pick(nil, tt.eps, tt.tried)
					if ok != (len(tt.want) > 0) {
						t.Fatalf("ok = %v, want %v", ok, len(tt.want) > 0)
					}
					if !ok {
						if c.Endpoint() != nil {
							t.Fatalf("ok=false with endpoint %s", c.Endpoint().Addr())
						}
						return
					}
					got[c.Endpoint()]++
					// Not charged, so the endpoints stay equal and P2C
					// must reach every one.
					c.Done(Abandoned)
				}
				for e := range got {
					if !slices.Contains(tt.want, e) {
						t.Fatalf("picked %s (tried %v)", e.Addr(), addrsOf(tt.tried))
					}
				}
				for _, e := range tt.want {
					if got[e] == 0 {
						t.Fatalf("never picked %s among %v (tried %v)", e.Addr(), addrsOf(tt.eps), addrsOf(tt.tried))
					}
					// Equal endpoints: P2C's first candidate wins ties, so
					// its picks are uniform over what is left. (Round robin
					// hands a tried endpoint's turn to the next one.)
					if fair := 400 / len(tt.want); policy == PeakEWMA && (got[e] < fair*7/10 || got[e] > fair*13/10) {
						t.Fatalf("picked %s %d times of 400, want about %d (%v)", e.Addr(), got[e], fair, got)
					}
				}
			})
		}
	}
}

func TestNewPickerInvalid(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"negative slow start", Config{Policy: Random, SlowStart: -time.Second}, "slow start -1s is negative"},
		{"header without a name", Config{Policy: RingHash, Hash: HashKey{Kind: HashHeader}}, "hash key needs a name"},
		{"cookie without a name", Config{Policy: Maglev, Hash: HashKey{Kind: HashCookie}}, "hash key needs a name"},
		{"unknown hash kind", Config{Policy: Maglev, Hash: HashKey{Kind: 9, Name: "x"}}, "unknown hash kind 9"},
		{"unknown policy", Config{Policy: "rr"}, `unknown policy "rr"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := NewPicker(tt.cfg, nil)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || p != nil {
				t.Fatalf("NewPicker(%+v) = %v, %v; want error containing %q", tt.cfg, p, err, tt.wantErr)
			}
		})
	}
	if _, err := NewPicker(Config{Policy: "x"}, nil); !errors.Is(err, ErrUnknownPolicy) {
		t.Fatalf("error %v is not ErrUnknownPolicy", err)
	}
}

// newSeeded returns a picker for policy, deterministic for PeakEWMA.
func newSeeded(policy Policy, seed uint64) Picker {
	if policy == PeakEWMA {
		return NewPeakEWMA(seeded(seed))
	}
	p, _ := New(policy)
	return p
}

func addrsOf(eps []*Endpoint) []string {
	var s []string
	for _, e := range eps {
		s = append(s, e.Addr())
	}
	return s
}

func TestRoundRobinEven(t *testing.T) {
	tests := []struct {
		n, goroutines, perG int
	}{
		{1, 1, 10},
		{3, 1, 300},
		{3, 6, 1000},
		{7, 4, 700},
		{100, 4, 1000},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("n=%d/g=%d", tt.n, tt.goroutines), func(t *testing.T) {
			eps := numbered("ep", tt.n)
			index := map[*Endpoint]int{}
			for i, e := range eps {
				index[e] = i
			}
			p := NewRoundRobin()
			counts := make([]int, tt.n)
			var mu sync.Mutex
			var wg sync.WaitGroup
			for range tt.goroutines {
				wg.Go(func() {
					local := make([]int, tt.n)
					for range tt.perG {
						c, _ := p.Pick(nil, eps, nil)
						local[index[c.Endpoint()]]++
						c.Done(Success)
					}
					mu.Lock()
					for i, c := range local {
						counts[i] += c
					}
					mu.Unlock()
				})
			}
			wg.Wait()
			total := tt.goroutines * tt.perG
			for i, c := range counts {
				// The counter hands out each value once, so the split is
				// exact up to the remainder.
				if c < total/tt.n || c > total/tt.n+1 {
					t.Fatalf("endpoint %d got %d of %d picks: %v", i, c, total, counts)
				}
			}
		})
	}
}

func TestRoundRobinOrder(t *testing.T) {
	eps := newEps("a", "b", "c", "d")
	tests := []struct {
		name  string
		eps   []*Endpoint
		tried []*Endpoint
		want  string
	}{
		{"cycles", eps, nil, "a b c d a b c d"},
		{"skips one", eps, eps[1:2], "a c c d a c c d"},
		{"skips the last, wrapping", eps, eps[3:], "a b c a a b c a"},
		{"skips a run", eps, eps[1:3], "a d d d a d d d"},
		{"one left", eps, []*Endpoint{eps[0], eps[2], eps[3]}, "b b b b b b b b"},
		{"shrunk set", eps[:2], nil, "a b a b a b a b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewRoundRobin()
			var got []string
			for range 8 {
				c, ok := p.Pick(nil, tt.eps, tt.tried)
				if !ok {
					t.Fatal("ok = false")
				}
				got = append(got, c.Endpoint().Addr())
				c.Done(Success)
			}
			if s := strings.Join(got, " "); s != tt.want {
				t.Fatalf("order = %s, want %s", s, tt.want)
			}
		})
	}
}

// TestPickersConcurrent runs many goroutines picking from changing slices,
// with retries and every outcome, under -race; afterwards no call is left
// in flight.
func TestPickersConcurrent(t *testing.T) {
	all := numbered("ep", 6)
	sets := [][]*Endpoint{all[:1], all[:2], all[:4], all[3:], all}
	for _, policy := range Policies() {
		t.Run(string(policy), func(t *testing.T) {
			p, err := New(policy)
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			for g := range 8 {
				wg.Go(func() {
					var tried []*Endpoint
					for n := range 3000 {
						eps := sets[(g+n)%len(sets)]
						if n%5 == 0 {
							tried = tried[:0]
						}
						c, ok := p.Pick(nil, eps, tried)
						if !ok {
							tried = tried[:0]
							continue
						}
						if isTried(tried, c.Endpoint()) || !slices.Contains(eps, c.Endpoint()) {
							t.Errorf("picked %s from %v, tried %v", c.Endpoint().Addr(), addrsOf(eps), addrsOf(tried))
							return
						}
						tried = append(tried, c.Endpoint())
						c.Done(Outcome(n % 3))
					}
				})
			}
			wg.Wait()
			for _, e := range all {
				if n := e.inflight.Load(); n != 0 {
					t.Errorf("%s: in flight = %d after every call finished", e.Addr(), n)
				}
			}
		})
	}
}

// hashedReq is a request carrying every key a hashing picker may hash.
func hashedReq() *Request {
	return &Request{
		Method: "GET", Authority: "orders", Path: "/x", RawQuery: "a=1&user=al%20ice&b=2",
		Header: http.Header{"X-User": {"alice"}, "Cookie": {"theme=dark; session=\"abc123\"; lang=en"}},
		Source: "spiffe://trellis.local/ns/default/sa/web",
	}
}

// benchConfigs is every balancer as the benchmarks and the allocation test
// run it; the hashing ones hash something the request carries.
func benchConfigs() []Config {
	var cs []Config
	for _, p := range Policies() {
		if !p.Hashing() {
			cs = append(cs, Config{Policy: p})
			continue
		}
		for _, k := range []HashKey{{HashHeader, "x-user"}, {HashCookie, "session"}, {HashQuery, "user"}, {HashSource, ""}} {
			cs = append(cs, Config{Policy: p, Hash: k})
		}
	}
	return cs
}

func (c Config) String() string {
	names := [...]string{"none", "header", "cookie", "query", "source"}
	s := string(c.Policy)
	if c.Policy.Hashing() {
		s += "/" + names[c.Hash.Kind]
	}
	if c.SlowStart > 0 {
		s += "/slow-start-" + c.SlowStart.String()
	}
	return s
}

func TestPickAllocations(t *testing.T) {
	eps := numbered("ep", 4)
	tried := eps[1:2]
	r := hashedReq()
	for _, cfg := range benchConfigs() {
		for _, ss := range []time.Duration{0, time.Hour} {
			cfg.SlowStart = ss
			p, err := NewPicker(cfg, eps)
			if err != nil {
				t.Fatal(err)
			}
			for _, tr := range [][]*Endpoint{nil, tried} {
				allocs := testing.AllocsPerRun(1000, func() {
					c, _ := p.Pick(r, eps, tr)
					c.Done(Success)
				})
				if allocs > 0 {
					t.Errorf("%s (slow start %v, tried %d): %.1f allocs per Pick+Done, want 0", cfg, ss, len(tr), allocs)
				}
			}
		}
	}
}

// BenchmarkPick is the figure: a pick over 100 endpoints must take
// < 200 ns and allocate nothing, for every balancer.
func BenchmarkPick(b *testing.B) {
	r := hashedReq()
	for _, n := range []int{3, 100} {
		eps := make([]*Endpoint, n)
		for i := range eps {
			eps[i] = NewEndpoint(fmt.Sprintf("127.0.%d.%d:8080", i/256, i%256))
		}
		configs := benchConfigs()
		// Slow start reads the clock on every pick (the window may be
		// open). A minute: every endpoint is ramping, together; a
		// microsecond: none is (the steady state).
		for _, p := range []Policy{PeakEWMA, RoundRobin, Random, LeastRequest, Maglev} {
			for _, w := range []time.Duration{time.Minute, time.Microsecond} {
				configs = append(configs, Config{Policy: p, Hash: HashKey{HashHeader, "x-user"}, SlowStart: w})
			}
		}
		for _, cfg := range configs {
			p, err := NewPicker(cfg, eps)
			if err != nil {
				b.Fatal(err)
			}
			// Abandoned only releases the in-flight slot: the pick alone.
			b.Run(fmt.Sprintf("%s/n=%d", cfg, n), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					c, _ := p.Pick(r, eps, nil)
					c.Done(Abandoned)
				}
			})
			// With the feedback a learning picker charges per call.
			b.Run(fmt.Sprintf("%s/n=%d/done", cfg, n), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					c, _ := p.Pick(r, eps, nil)
					c.Done(Success)
				}
			})
			// As the proxy calls it: the pick at the clock reading it made
			// at the request's start, Done at its reading at the response
			// header (advanced 1µs a call here, so time moves on).
			b.Run(fmt.Sprintf("%s/n=%d/done-clock-passed", cfg, n), func(b *testing.B) {
				rq := *r
				rq.Now = time.Now()
				b.ReportAllocs()
				for b.Loop() {
					c, _ := p.Pick(&rq, eps, nil)
					rq.Now = rq.Now.Add(time.Microsecond)
					c.DoneAt(Success, rq.Now)
				}
			})
		}
	}
}

func benchmarkPicker(b *testing.B, newPicker func() Picker) {
	for _, n := range []int{3, 100} {
		eps := make([]*Endpoint, n)
		for i := range eps {
			eps[i] = NewEndpoint(fmt.Sprintf("127.0.%d.%d:8080", i/256, i%256))
		}
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			p := newPicker()
			b.ReportAllocs()
			for b.Loop() {
				c, _ := p.Pick(nil, eps, nil)
				c.Done(Success)
			}
		})
		b.Run(fmt.Sprintf("n=%d/parallel", n), func(b *testing.B) {
			p := newPicker()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					c, _ := p.Pick(nil, eps, nil)
					c.Done(Success)
				}
			})
		})
		b.Run(fmt.Sprintf("n=%d/retry", n), func(b *testing.B) {
			p := newPicker()
			tried := eps[:1]
			b.ReportAllocs()
			for b.Loop() {
				c, _ := p.Pick(nil, eps, tried)
				c.Done(Failure)
			}
		})
	}
}

func BenchmarkPeakEWMA(b *testing.B) {
	benchmarkPicker(b, func() Picker { return NewPeakEWMA() })
}

func BenchmarkRoundRobin(b *testing.B) {
	benchmarkPicker(b, func() Picker { return NewRoundRobin() })
}
