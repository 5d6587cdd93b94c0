package proxy

import (
	"crypto/tls"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	meshv1 "trellis.dev/trellis/api/mesh/v1"
	"trellis.dev/trellis/internal/authz"
	"trellis.dev/trellis/internal/telemetry"
)

// Authorization on the inbound side: the snapshot's
// inbound_policy.authorization compiled once into an authz.Engine, decided
// per request (authzFilter, in the inbound chain) and per TCP tunnel
// (authorizeTunnel, before the app is dialled). Everything a decision
// needs — counters, the message a denial carries — is resolved when the
// snapshot is compiled, so an allowed request allocates nothing.

// authzConfig is one snapshot's compiled authorization.
type authzConfig struct {
	engine *authz.Engine
	// policies[i] is engine.Policies()[i]'s counters and denial message.
	policies []authzOutcome
	// def is the default's outcome, noMatch that of "ALLOW policies apply
	// and none matched".
	def, noMatch authzOutcome
}

type authzOutcome struct {
	label        string // the policy label of the counters
	allow, deny  prometheus.Counter
	denyMsg      string // what a denied client is told
	denyGRPCMsgs []string
}

// compileAuthz compiles az (nil: allow everything) for the inbound service
// key. A malformed authorization refuses the whole snapshot.
func (c *compiled) compileAuthz(az *meshv1.Authorization, env compileEnv) error {
	e, err := authz.Compile(az)
	if err != nil {
		return invalid("inbound_policy.authorization: %v", err)
	}
	key := c.inbound.key
	counter := authzCounters(env)
	ac := &authzConfig{engine: e}
	names := e.Policies()
	for i, name := range names {
		ac.policies = append(ac.policies, newOutcome(counter, name,
			"denied by AuthorizationPolicy "+name+" ("+e.Action(i)+")"))
	}
	ac.def = newOutcome(counter, telemetry.AuthzDefault,
		"denied by the mesh default (--default-authorization deny): no ALLOW AuthorizationPolicy applies to "+key)
	ac.noMatch = newOutcome(counter, telemetry.AuthzNoMatch,
		"denied: no rule of the ALLOW AuthorizationPolicies of "+key+" matches")
	c.authz = ac
	return nil
}

func newOutcome(counter func(policy, decision string) prometheus.Counter, label, msg string) authzOutcome {
	return authzOutcome{
		label:        label,
		allow:        counter(label, telemetry.AuthzAllow),
		deny:         counter(label, telemetry.AuthzDeny),
		denyMsg:      msg,
		denyGRPCMsgs: []string{msg},
	}
}

// authzCounters resolves counters on the proxy's registry; compile-only
// tests (no proxy) get unregistered ones.
func authzCounters(env compileEnv) func(policy, decision string) prometheus.Counter {
	if env.proxy != nil && env.proxy.metrics != nil {
		return env.proxy.metrics.AuthzCounter
	}
	return func(string, string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: telemetry.AuthzDecisionsName})
	}
}

func (ac *authzConfig) outcome(d authz.Decision) *authzOutcome {
	switch {
	case d.Policy >= 0:
		return &ac.policies[d.Policy]
	case d.Reason == authz.ReasonNoAllowMatch:
		return &ac.noMatch
	}
	return &ac.def
}

// authzFilter decides each request against the snapshot the request
// started with, so a policy change applies to the next request on every
// connection, pooled ones included. Denied: 403 (flag AZ) naming the
// policy, or PERMISSION_DENIED for gRPC.
func (p *Proxy) authzFilter(next Handler) Handler {
	return HandlerFunc(func(ex *Exchange) *Response {
		ac := ex.cfg.authz
		f := authz.Facts{
			PeerID: ex.PeerID, Port: ex.Port, Method: ex.Method, Path: ex.Path,
			Header: ex.Header, GRPC: ex.target.proto == meshv1.Protocol_GRPC,
		}
		d := ac.engine.Decide(&f)
		o := ac.outcome(d)
		if d.Allow {
			o.allow.Inc()
			return next.Serve(ex)
		}
		o.deny.Inc()
		p.logDenied(ex.cfg, o, d, ex.PeerID, ex.Port, ex.Method, ex.Path)
		if isGRPC(ex.Header) {
			ex.Flags |= FlagAZ
			return &Response{
				Status: http.StatusOK,
				Header: http.Header{
					"Content-Type": grpcContentType,
					"Grpc-Status":  grpcPermissionDenied,
					"Grpc-Message": o.denyGRPCMsgs,
					headerError:    azFlagValue,
				},
			}
		}
		return ex.fail(http.StatusForbidden, FlagAZ, o.denyMsg)
	})
}

var (
	grpcPermissionDenied = []string{"7"}
	azFlagValue          = []string{"AZ"}
)

// authorizeTunnel decides an inbound TCP tunnel to service port port before
// the app is dialled, so a denied connection never reaches it. It returns
// the reason for the preamble's "error" reply when denied.
func (p *Proxy) authorizeTunnel(cfg *compiled, conn *tls.Conn, port uint32) (string, bool) {
	ac := cfg.authz
	peer := peerID(conn.ConnectionState().PeerCertificates)
	d := ac.engine.Decide(&authz.Facts{PeerID: peer, Port: port, TCP: true})
	o := ac.outcome(d)
	if d.Allow {
		o.allow.Inc()
		return "", true
	}
	o.deny.Inc()
	p.logDenied(cfg, o, d, peer, port, "", "")
	return o.denyMsg, false
}

// logDenied logs a denial through the proxy's refusal log limiter
// (internal/ratelog: a burst, then a few lines a second, and a summary of
// the rest); the counters count every one.
func (p *Proxy) logDenied(cfg *compiled, o *authzOutcome, d authz.Decision, peer string, port uint32, method, path string) {
	ok, suppressed := p.refusalLog.Allow("authorization_denied")
	if !ok {
		return
	}
	if len(path) > 256 {
		path = path[:256] + "..."
	}
	p.log.Info("authorization denied",
		"service", cfg.inbound.key, "peer", peer, "port", port, "method", method, "path", path,
		"policy", o.label, "rule", d.Rule, "reason", d.Reason.String(), "suppressed", suppressed)
}
