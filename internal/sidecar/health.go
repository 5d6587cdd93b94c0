package sidecar

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync/atomic"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/health"
)

// appHealth runs the check of the local app (internal/health) and carries
// its verdict to the proxy's /ready and, through the session's heartbeats,
// to the registry. The endpoint registers unhealthy ("no check passed
// yet"), so a replica whose app is slow to listen takes no traffic.
type appHealth struct {
	s *sidecar
	// changed (buffer 1) wakes the session to heartbeat a new verdict now.
	changed chan struct{}
	// checker is nil until the first snapshot (its Service's healthCheck)
	// arrives, and stays nil when checks are off. Set on the watch's
	// goroutine, read on the lease's.
	checker atomic.Pointer[health.Checker]
	off     bool
	// ctx bounds the checker's run (the session's).
	ctx context.Context
}

func newAppHealth(ctx context.Context, s *sidecar) *appHealth {
	return &appHealth{s: s, ctx: ctx, changed: make(chan struct{}, 1), off: s.o.AppAddr == "" || s.o.HealthCheck.Off}
}

// status is the verdict to report: always healthy without an app or with
// checks off (--health-check off); unhealthy until the checker exists.
func (h *appHealth) status() (bool, string) {
	if h.off {
		return true, ""
	}
	c := h.checker.Load()
	if c == nil {
		return false, health.ReasonStarting
	}
	st := c.Status()
	return st.Healthy, st.Reason
}

// spec resolves the check for a snapshot: its own Service's healthCheck
// (a TCP connect to the app without one), the --health-check flag over it.
func (h *appHealth) spec(snap *meshv1.Snapshot) (health.Spec, error) {
	in := snap.GetInbound()
	hc := in.GetHealthCheck()
	addr, err := appAddrOf(h.s.o.AppAddr, in.GetPorts(), hc.GetPort())
	if err != nil {
		return health.Spec{}, err
	}
	s := health.Spec{
		Addr:               addr,
		Path:               hc.GetPath(),
		Interval:           hc.GetInterval().AsDuration(),
		Timeout:            hc.GetTimeout().AsDuration(),
		HealthyThreshold:   int(hc.GetHealthyThreshold()),
		UnhealthyThreshold: int(hc.GetUnhealthyThreshold()),
	}
	switch hc.GetType() {
	case meshv1.HealthCheck_HTTP:
		s.Type = health.HTTP
	case meshv1.HealthCheck_GRPC:
		s.Type = health.GRPC
	}
	if h.s.o.HealthCheckSet {
		host, _, _ := net.SplitHostPort(h.s.o.AppAddr)
		s = h.s.o.HealthCheck.Apply(s, host)
	}
	s = s.WithDefaults()
	if err := s.Validate(); err != nil {
		return health.Spec{}, fmt.Errorf("inbound.health_check: %w", err)
	}
	return s, nil
}

// appAddrOf is where the app serves the named Service port, as the
// inbound proxy sends it there: the first port is --app, the others the
// app's host at their target port. "" is the first port.
func appAddrOf(appAddr string, ports []*meshv1.Port, name string) (string, error) {
	if name == "" {
		return appAddr, nil
	}
	host, _, err := net.SplitHostPort(appAddr)
	if err != nil {
		return "", fmt.Errorf("inbound.health_check: --app %q: %w", appAddr, err)
	}
	for i, p := range ports {
		if p.GetName() != name {
			continue
		}
		if i == 0 {
			return appAddr, nil
		}
		t := p.GetTargetPort()
		if t == 0 {
			t = p.GetPort()
		}
		return net.JoinHostPort(host, strconv.FormatUint(uint64(t), 10)), nil
	}
	return "", fmt.Errorf("inbound.health_check.port: the service has no port named %q", name)
}

// check returns the spec a snapshot asks for, or the error that NACKs it.
func (h *appHealth) check(snap *meshv1.Snapshot) (health.Spec, error) {
	if h.off {
		return health.Spec{}, nil
	}
	return h.spec(snap)
}

// apply starts the checker on the first snapshot and reconfigures it on
// later ones (the spec was checked by check).
func (h *appHealth) apply(s health.Spec) error {
	if h.off {
		return nil
	}
	if c := h.checker.Load(); c != nil {
		return c.Configure(s)
	}
	c, err := health.New(s, health.Options{
		OnChange: h.onChange,
		Metrics:  h.s.proxy.HealthMetrics(),
		Logger:   h.s.o.Logger,
	})
	if err != nil {
		return err
	}
	h.checker.Store(c)
	go c.Run(h.ctx)
	return nil
}

// onChange tells the proxy's /ready and the control plane.
func (h *appHealth) onChange(st health.Status) {
	h.s.proxy.SetAppHealth(st.Healthy, st.Reason)
	select {
	case h.changed <- struct{}{}:
	default:
	}
}
