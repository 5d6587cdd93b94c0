package sidecar

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"trellis.dev/trellis/internal/identity"
)

// fakeCerts is a certificate that certify replaces with one valid from now
// for ttl, recording when each renewal happened.
type fakeCerts struct {
	mu       sync.Mutex
	ttl      time.Duration
	start    time.Time
	notAfter time.Time
	renewals []time.Time
	tokens   []string
	fail     int // fail this many renewals with the current certificate
}

func (f *fakeCerts) validity() (time.Time, time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.start, f.notAfter, true
}

func (f *fakeCerts) certify(_ context.Context, token string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokens = append(f.tokens, token)
	if token == "" && f.fail > 0 {
		f.fail--
		return errors.New("control plane says no")
	}
	now := time.Now()
	f.renewals = append(f.renewals, now)
	f.start, f.notAfter = now, now.Add(f.ttl)
	return nil
}

func newTestRenewer(f *fakeCerts, seed uint64) *renewer {
	rng := rand.New(rand.NewPCG(seed, seed))
	return &renewer{
		log:         slog.New(slog.DiscardHandler),
		cert:        f.validity,
		certify:     f.certify,
		token:       "join-token",
		jitter:      rng.Float64,
		earlySpread: 5 * time.Second,
		early:       make(chan struct{}, 1),
	}
}

// TestRenewSchedule: each certificate is renewed at RenewAt with its own
// jitter draw, inside [45%, 55%] of its life, and the draws differ.
func TestRenewSchedule(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const ttl = 100 * time.Second
		f := &fakeCerts{ttl: ttl, start: time.Now(), notAfter: time.Now().Add(ttl)}
		r := newTestRenewer(f, 7)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { r.run(ctx); close(done) }()
		time.Sleep(10 * ttl)
		cancel()
		<-done

		f.mu.Lock()
		defer f.mu.Unlock()
		if len(f.renewals) < 15 {
			t.Fatalf("%d renewals in %s of %s certificates, want about 20", len(f.renewals), 10*ttl, ttl)
		}
		distinct := map[time.Duration]bool{}
		// Re-derive: renewal i+1 happens at RenewAt(renewal i, +ttl, draw i+1).
		want := rand.New(rand.NewPCG(7, 7)) // the same draws, in order
		want.Float64()                      // the first certificate's draw
		for i := 1; i < len(f.renewals); i++ {
			from := f.renewals[i-1]
			exp := identity.RenewAt(from, from.Add(ttl), want.Float64())
			got := f.renewals[i]
			if !got.Equal(exp) {
				t.Fatalf("renewal %d at +%s, want +%s", i, got.Sub(from), exp.Sub(from))
			}
			d := got.Sub(from)
			if d < ttl*45/100 || d > ttl*55/100 {
				t.Fatalf("renewal %d at %.1f%% of the certificate's life, want 45-55%%", i, 100*d.Seconds()/ttl.Seconds())
			}
			distinct[d] = true
		}
		if len(distinct) < len(f.renewals)/2 {
			t.Fatalf("renewal offsets barely vary (%d distinct of %d): no jitter", len(distinct), len(f.renewals)-1)
		}
	})
}

// TestRenewSoon: renewSoon renews within earlySpread, long before the
// scheduled point.
func TestRenewSoon(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const ttl = time.Hour
		f := &fakeCerts{ttl: ttl, start: time.Now(), notAfter: time.Now().Add(ttl)}
		r := newTestRenewer(f, 1)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go r.run(ctx)
		time.Sleep(time.Minute)
		synctest.Wait()
		asked := time.Now()
		r.renewSoon()
		r.renewSoon() // coalesces
		time.Sleep(r.earlySpread)
		synctest.Wait()
		f.mu.Lock()
		defer f.mu.Unlock()
		if len(f.renewals) != 1 {
			t.Fatalf("%d renewals within %s of renewSoon, want 1", len(f.renewals), r.earlySpread)
		}
		if d := f.renewals[0].Sub(asked); d < 0 || d >= r.earlySpread {
			t.Fatalf("renewed %s after renewSoon, want within [0, %s)", d, r.earlySpread)
		}
	})
}

// TestRenewFallsBackToToken: a refused renewal tries the join token, and a
// failure of both is retried well before expiry.
func TestRenewFallsBackToToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const ttl = 20 * time.Second
		f := &fakeCerts{ttl: ttl, start: time.Now(), notAfter: time.Now().Add(ttl), fail: 1}
		r := newTestRenewer(f, 3)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go r.run(ctx)
		time.Sleep(ttl * 56 / 100)
		synctest.Wait()
		f.mu.Lock()
		defer f.mu.Unlock()
		if len(f.tokens) != 2 || f.tokens[0] != "" || f.tokens[1] != "join-token" {
			t.Fatalf("certify calls with tokens %q, want the current certificate then the join token", f.tokens)
		}
		if len(f.renewals) != 1 {
			t.Fatalf("%d renewals, want 1 (with the token)", len(f.renewals))
		}
	})
}
