package proxy

import (
	"context"
	"net/http"
	"sync"
	"time"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/concurrency"
	"trellis.dev/trellis/internal/telemetry"
)

// The inbound adaptive concurrency limit (ConcurrencyPolicy, the
// snapshot's inbound_policy.concurrency): the [concurrency limit] slot of
// the inbound chain. A proxy has one limiter, for its own service, kept
// across snapshots while the policy is unchanged (what it learnt — minRTT,
// the limit — survives a push), and driven by its controller goroutine
// from the first snapshot that has it to the one that drops or changes it.

// concurrencyFilter admits a request while the limit allows and sheds it
// otherwise, at once, with 503 CL (gRPC: UNAVAILABLE) — before the app
// queues it. An admitted request's time to its response header is the
// controller's latency sample, unless the app was never reached or the
// client went away.
func concurrencyFilter(next Handler) Handler {
	return HandlerFunc(func(ex *Exchange) *Response {
		in := &ex.cfg.inbound
		l := in.limiter
		if l == nil {
			return next.Serve(ex)
		}
		tok, ok := l.Acquire()
		if !ok {
			in.concMetrics.Shed()
			return shed(ex)
		}
		start := time.Now()
		resp := next.Serve(ex)
		sample := ex.Flags&(FlagUF|FlagUR|FlagDC) == 0 && ex.clientCtx.Err() == nil
		l.Release(tok, time.Since(start), sample)
		return resp
	})
}

// grpcUnavailable is the grpc-status a shed gRPC request gets: the
// status a client's retry policy and a gRPC balancer read as "try
// elsewhere".
var grpcUnavailable = []string{"14"}

// shed answers a request over the limit.
func shed(ex *Exchange) *Response {
	if isGRPC(ex.Header) {
		ex.Flags |= FlagCL
		return &Response{
			Status: http.StatusOK,
			Header: http.Header{
				"Content-Type": grpcContentType,
				"Grpc-Status":  grpcUnavailable,
				"Grpc-Message": []string{"over the service's concurrency limit (shed by the mesh)"},
				headerError:    []string{FlagCL.String()},
			},
		}
	}
	return ex.fail(http.StatusServiceUnavailable, FlagCL, ex.cfg.inbound.key+" is over its concurrency limit; retry later or elsewhere")
}

// compileConcurrency checks the inbound policy's concurrency limit; nil
// without one.
func compileConcurrency(cp *meshv1.ConcurrencyPolicy) (*concurrency.Config, error) {
	if cp == nil {
		return nil, nil
	}
	cfg := concurrency.Config{
		MinLimit:       cp.GetMinLimit(),
		MaxLimit:       cp.GetMaxLimit(),
		InitialLimit:   cp.GetInitialLimit(),
		Interval:       cp.GetInterval().AsDuration(),
		Percentile:     cp.GetPercentile(),
		Buffer:         cp.GetBuffer(),
		MinRTTInterval: cp.GetMinRttInterval().AsDuration(),
		MinRTTRequests: cp.GetMinRttRequests(),
		Jitter:         cp.GetJitter(),
	}.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, invalid("inbound_policy.concurrency: %v", err)
	}
	return &cfg, nil
}

// concurrencyState is the proxy's limiter and its controller.
type concurrencyState struct {
	mu      sync.Mutex
	live    *concurrency.Limiter // the running one, nil: none
	stop    context.CancelFunc
	metrics *telemetry.ConcurrencyMetrics
	// shedBefore counts what replaced limiters shed, so the total the
	// proxy reports never goes back.
	shedBefore uint64
}

// limiter returns the limiter for cfg: the live one while its Config is
// the same, else a new one, not yet running (the snapshot may still be
// refused: commit starts it).
func (st *concurrencyState) limiter(cfg concurrency.Config) (*concurrency.Limiter, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.live != nil && st.live.Config() == cfg {
		return st.live, nil
	}
	return concurrency.New(cfg)
}

// commit makes l (nil: none) the running limiter, stopping the one it
// replaces; the controller stops when done closes (proxy shutdown).
func (st *concurrencyState) commit(l *concurrency.Limiter, m *telemetry.ConcurrencyMetrics, done <-chan struct{}) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if l == st.live {
		return
	}
	if st.live != nil {
		st.stop()
		st.shedBefore += st.live.Shed()
		st.metrics.SetLimit(0)
	}
	st.live, st.metrics, st.stop = l, m, nil
	if l == nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	st.stop = cancel
	go func() {
		select {
		case <-done:
			cancel()
		case <-ctx.Done():
		}
	}()
	go l.Run(ctx, m.SetLimit)
}

// status is the current limit and the requests shed since the proxy
// started (0, 0 without a policy ever).
func (st *concurrencyState) status() (limit uint32, shed uint64) {
	st.mu.Lock()
	defer st.mu.Unlock()
	shed = st.shedBefore
	if st.live != nil {
		limit, shed = st.live.Limit(), shed+st.live.Shed()
	}
	return limit, shed
}

// ConcurrencyStatus is the inbound concurrency limit now and the requests
// shed over it since the proxy started; the proxy reports them to the
// control plane.
func (p *Proxy) ConcurrencyStatus() (limit uint32, shed uint64) { return p.conc.status() }
