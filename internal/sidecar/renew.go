package sidecar

import (
	"context"
	"log/slog"
	"time"

	"trellis.dev/trellis/internal/identity"
)

// renewer renews the workload certificate at RenewMin–RenewMax of its life
// (identity.RenewAt, the jitter drawn once per certificate), or within
// earlySpread of a renewSoon call, which the sidecar makes when the trust
// bundle says the CA now issues under another root. It renews with the
// current certificate, or with the join token if that fails (say, it
// expired while the control plane was down).
type renewer struct {
	log *slog.Logger
	// cert is the current certificate's validity, counted from when it
	// arrived (the CA back-dates NotBefore for clock skew, which would make
	// short TTLs renew too early); ok is false before the first one.
	cert func() (start, notAfter time.Time, ok bool)
	// certify gets a new certificate; an empty token renews with the
	// current one.
	certify func(ctx context.Context, token string) error
	token   string
	// jitter draws in [0, 1); one draw per certificate for its renewal
	// time, one per early renewal for its delay.
	jitter func() float64
	// earlySpread bounds the delay of an early renewal, so the proxies of
	// a mesh do not all re-certify in the same instant after a rotation.
	earlySpread time.Duration
	// renewed runs after each renewal (reports the new certificate).
	renewed func()
	early   chan struct{} // buffer 1
}

// defaultEarlySpread is renewer.earlySpread's default.
const defaultEarlySpread = 5 * time.Second

// renewSoon asks for a renewal within earlySpread. Calls coalesce.
func (r *renewer) renewSoon() { poke(r.early) }

func poke(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func (r *renewer) run(ctx context.Context) {
	for {
		start, notAfter, ok := r.cert()
		if !ok {
			return
		}
		if !r.wait(ctx, identity.RenewAt(start, notAfter, r.jitter())) {
			return
		}
		err := r.certify(ctx, "")
		if err != nil && r.token != "" {
			r.log.Warn("certificate renewal with current certificate failed; trying the join token", "err", err)
			err = r.certify(ctx, r.token)
		}
		if err != nil {
			// Retry well before expiry, whatever the lifetime.
			retry := min(10*time.Second, max(time.Second, notAfter.Sub(start)/20))
			r.log.Error("certificate renewal failed; will retry", "err", err, "in", retry)
			if !sleep(ctx, retry) {
				return
			}
			continue
		}
		if r.renewed != nil {
			r.renewed()
		}
	}
}

// wait sleeps until at (at least a second from now) or, after renewSoon,
// for a jittered part of earlySpread. It reports false when ctx ended.
func (r *renewer) wait(ctx context.Context, at time.Time) bool {
	t := time.NewTimer(max(time.Until(at), time.Second))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	case <-r.early:
		d := time.Duration(r.jitter() * float64(r.earlySpread))
		r.log.Info("CA issues under a new root; re-certifying early", "in", d)
		return sleep(ctx, d)
	}
}
