package cli

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"trellis.dev/trellis/internal/config"
	"trellis.dev/trellis/internal/control"
	apphealth "trellis.dev/trellis/internal/health"
	"trellis.dev/trellis/internal/lb"
	"trellis.dev/trellis/internal/proxy"
	"trellis.dev/trellis/internal/sidecar"
)

func newProxyCmd(g *globals) *cobra.Command {
	var (
		o           sidecar.Options
		labels      []string
		upstreams   []string
		balancer    string
		healthCheck string
		obs         observeFlags
	)
	cmd := &cobra.Command{
		Use:   "proxy --service NAME --app ADDR [flags] [-- CMD ARGS...]",
		Short: "Run the sidecar proxy beside one service",
		Long: `Run the Trellis sidecar proxy. It gets a workload certificate from the
control plane, registers the service's endpoint, and serves:

  inbound   mTLS from other proxies, forwarded to the app (--app)
  outbound  an HTTP proxy the app calls services through (http://orders)
  upstream  one local port per upstream, for clients that can't use a proxy
  admin     /ready /live /metrics /config on loopback (/debug/pprof with --enable-pprof)

With '-- CMD ARGS', the proxy starts CMD once it is ready, forwards signals to
it and exits with its exit code.

The proxy checks its app (the Service's healthCheck, --health-check over it;
default a TCP connect to --app). The endpoint registers unhealthy and takes
traffic only once a check passes, leaves discovery when the app fails its
unhealthy threshold, and /ready answers 503 with the reason meanwhile.

The proxy joins with a token bound to its identity (--token-file, from
'trellis token create --service-account SA'); later certificates renew with
the current one. Without --control and --ca-file, the proxy finds them in the
control plane's data directory (--data-dir) on the same machine; without
--token-file it reads the dev-mode bootstrap-token there (accepted only by a
control plane run with --insecure-bootstrap-token).

Each proxy on a machine needs its own --admin, --outbound and --inbound
ports (and --upstream ports); 127.0.0.1:0 picks a free one, printed in the
'proxy ready' log line. A port already taken fails at once, before the
proxy asks for a certificate, naming the flag to change.`,
		Example: `  trellis proxy --service orders --app 127.0.0.1:8080 --upstream payments=127.0.0.1:9001
  trellis proxy --service orders --app 127.0.0.1:8080 --control cp1:15010,cp2:15010,cp3:15010   # three replicas
  trellis proxy --service inventory --labels version=v2 --app 127.0.0.1:8082 -- ./inventory
  trellis proxy --service payments --app 127.0.0.1:9090 \
    --admin 127.0.0.1:0 --outbound 127.0.0.1:0 --inbound 127.0.0.1:0 -- ./payments   # a second proxy on this host
  trellis proxy --service orders --app 127.0.0.1:8080 --health-check 'http:/healthz?interval=2s'`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			dash := cmd.ArgsLenAtDash()
			if (dash == -1 && len(args) > 0) || dash > 0 {
				return fmt.Errorf("proxy: unexpected argument %q (put the app's command after --)", args[0])
			}
			if dash == 0 {
				o.Command = args
			}
			var err error
			if o.Labels, err = parsePairs("--labels", labels); err != nil {
				return err
			}
			for k, v := range o.Labels {
				if p := config.LabelProblem(k, v); p != "" {
					return fmt.Errorf("proxy: --labels %s=%s: %s", k, v, p)
				}
			}
			if o.Upstreams, err = parsePairs("--upstream", upstreams); err != nil {
				return err
			}
			if healthCheck != "" {
				if o.HealthCheck, err = apphealth.ParseFlag(healthCheck); err != nil {
					return fmt.Errorf("proxy: %w", err)
				}
				o.HealthCheckSet = true
			}
			o.Balancer = lb.Policy(balancer)
			if _, err := lb.New(o.Balancer); err != nil {
				return fmt.Errorf("proxy: --balancer: %w", err)
			}
			if err := obs.apply(cmd, &o); err != nil {
				return err
			}
			discoverControl(g.dataDir, &o)
			if o.Logger, err = g.logger(""); err != nil {
				return err
			}
			o.Logger = o.Logger.With("service", o.Service)
			code, err := sidecar.Run(cmd.Context(), o)
			if err != nil {
				return err
			}
			if code != 0 {
				return exitError{code: code}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.ControlAddr, "control", "", "control plane gRPC address, or several replicas' as host:port,host:port,... (the proxy watches one and fails over to the next; default: grpc_replicas or grpc_addr from <data-dir>/control.json, else 127.0.0.1:15010)")
	f.StringVar(&o.CAFile, "ca-file", "", "PEM roots that sign the control plane's certificate (default <data-dir>/ca.crt)")
	f.StringVar(&o.TokenFile, "token-file", "", "join token file, from 'trellis token create' (default <data-dir>/bootstrap-token, dev mode only)")
	f.StringVar(&o.TrustDomain, "trust-domain", "trellis.local", "SPIFFE trust domain")
	f.StringVar(&o.Service, "service", "", "name of the service this proxy fronts (required)")
	f.StringVar(&o.Namespace, "namespace", "default", "namespace of the service")
	f.StringVar(&o.ServiceAccount, "service-account", "", "service account in the workload identity (default: --service)")
	f.StringSliceVar(&labels, "labels", nil, "endpoint labels, k=v[,k=v] (e.g. version=v2)")
	f.StringVar(&o.AppAddr, "app", "", "address of the local app that inbound traffic goes to; empty for a client-only proxy")
	f.StringVar(&o.InboundAddr, "inbound", "127.0.0.1:15006", "inbound mTLS listener")
	f.StringVar(&o.OutboundAddr, "outbound", "127.0.0.1:15001", "outbound HTTP proxy listener")
	f.StringVar(&o.AdminAddr, "admin", "127.0.0.1:15000", "admin listener (/ready, /live, /metrics, /config; /debug/pprof with --enable-pprof)")
	f.StringArrayVar(&upstreams, "upstream", nil, "per-upstream local port, SERVICE=ADDR (repeatable)")
	f.StringVar(&balancer, "balancer", string(lb.PeakEWMA), "load balancer of services whose BackendPolicy names none: "+policyNames())
	f.StringVar(&healthCheck, "health-check", "", "check of the local app, over the Service's healthCheck: off, or TYPE[:PORT][PATH][?interval=D&timeout=D&healthy=N&unhealthy=N] with TYPE tcp, http or grpc (e.g. http:/healthz); default: the Service's, else a TCP connect to --app")
	f.DurationVar(&o.Heartbeat, "heartbeat", 0, "registration heartbeat interval (default 5s)")
	f.BoolVar(&o.DisableMetrics, "disable-metrics", false, "turn off the per-request metrics (trellis_requests_total and friends) to measure their cost; event counters stay")
	f.DurationVar(&o.DrainTimeout, "drain-timeout", 0, "longest wait for in-flight requests on shutdown (default 10s)")
	obs.register(f)
	f.DurationVar(&o.Limits.ReadHeaderTimeout, "read-header-timeout", proxy.DefaultReadHeaderTimeout, "longest a client may take to send a request header (and the inbound TLS handshake) on every listener")
	f.DurationVar(&o.Limits.BodyReadTimeout, "body-read-timeout", proxy.DefaultBodyReadTimeout, "longest a request body may go without sending a byte: 408, never charged to an endpoint")
	f.DurationVar(&o.Limits.IdleTimeout, "idle-timeout", proxy.DefaultIdleTimeout, "close keep-alive connections idle this long, on every listener")
	f.IntVar(&o.Limits.MaxHeaderBytes, "max-header-bytes", proxy.DefaultMaxHeaderBytes, "largest request header the app-facing listeners accept (431 above); the inbound port takes 16 times as much")
	f.BoolVar(&o.EnablePprof, "enable-pprof", false, "serve /debug/pprof/ on the admin port (any local user can then read profiles and the command line)")
	return cmd
}

// discoverControl fills unset control-plane flags from the data directory.
func discoverControl(dataDir string, o *sidecar.Options) {
	if o.CAFile == "" {
		o.CAFile = filepath.Join(dataDir, control.CAFile)
	}
	if o.TokenFile == "" {
		o.TokenFile = filepath.Join(dataDir, control.BootstrapTokenFile)
	}
	if o.ControlAddr != "" {
		return
	}
	o.ControlAddr = control.DefaultGRPCAddr
	if addrs, err := control.ReadAddrs(dataDir); err == nil {
		o.ControlAddr = addrs.GRPC
		if len(addrs.Replicas) > 0 {
			o.ControlAddr = strings.Join(addrs.Replicas, ",")
		}
	}
}

// parsePairs parses k=v items.
func parsePairs(flag string, items []string) (map[string]string, error) {
	out := map[string]string{}
	for _, it := range items {
		k, v, ok := strings.Cut(it, "=")
		if !ok || k == "" || v == "" {
			return nil, fmt.Errorf("proxy: %s %q: want KEY=VALUE", flag, it)
		}
		out[k] = v
	}
	return out, nil
}

// policyNames lists the balancers --balancer takes, "a, b or c".
func policyNames() string {
	ps := lb.Policies()
	names := make([]string, len(ps))
	for i, p := range ps {
		names[i] = string(p)
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}
