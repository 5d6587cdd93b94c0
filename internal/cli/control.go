package cli

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"trellis.dev/trellis/internal/control"
	"trellis.dev/trellis/internal/meshname"
)

func newControlCmd(g *globals) *cobra.Command {
	var o control.Options
	var sf storeFlags
	cmd := &cobra.Command{
		Use:   "control",
		Short: "Run the control plane",
		Long: `Run the Trellis control plane: the registry, the resource store, the CA
and the gRPC push server the proxies connect to, plus the admin API the CLI uses.

On first start it creates, in --data-dir (mode 0700), the store, a CA root,
ca.crt (the trust bundle proxies need) and admin-token (what the CLI
presents; mode 0600). Proxies join with tokens bound to one identity:
'trellis token create --service-account SA'. Prometheus metrics are served at
http://<metrics-addr>/metrics. All listeners bind to loopback unless
--allow-remote is given.

--insecure-bootstrap-token is DEV MODE (what 'trellis demo' uses): it also
writes bootstrap-token, one shared token with which anyone who can read it
obtains a certificate for ANY identity, the control plane's own included.
The control plane logs a warning at start and 'trellis check' flags it.`,
		Example: `  trellis control
  trellis control --data-dir /var/lib/trellis --grpc-addr 127.0.0.1:15010
  trellis control --store etcd --etcd-endpoints http://127.0.0.1:2379
  trellis control --store etcd --etcd-endpoints http://10.0.0.5:2379 --ca-seal-key /etc/trellis/seal.key \
    --replica-id cp1 --grpc-addr 10.0.0.1:15010 --allow-remote   # one of three replicas
  trellis control --dns-addr 127.0.0.1:5353 --dns-forward 127.0.0.53`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := g.logger("")
			if err != nil {
				return err
			}
			if o.Domain, err = meshname.ParseDomain(o.Domain); err != nil {
				return fmt.Errorf("control: --domain: %w", err)
			}
			if err := sf.apply(cmd.Flags(), &o); err != nil {
				return err
			}
			o.DataDir = g.dataDir
			o.Logger = log
			return control.Run(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.GRPCAddr, "grpc-addr", control.DefaultGRPCAddr, "address of the gRPC server proxies connect to")
	f.StringVar(&o.AdminAddr, "admin-addr", control.DefaultAdminAddr, "address of the HTTPS admin API the CLI uses")
	f.StringVar(&o.MetricsAddr, "metrics-addr", control.DefaultMetricsAddr, "address of the plain-HTTP Prometheus /metrics endpoint (no token: counts only)")
	f.BoolVar(&o.EnablePprof, "enable-pprof", false, "serve /debug/pprof/ on the metrics address (any local user can then read profiles and the command line)")
	f.StringVar(&o.TrustDomain, "trust-domain", "trellis.local", "SPIFFE trust domain of workload identities")
	f.StringVar(&o.Domain, "domain", "trellis.local", "DNS suffix of service names (<svc>.<ns>.svc.<domain>)")
	f.StringVar(&o.CACertFile, "ca-cert", "", "PEM signing certificate (root or intermediate) to use instead of creating a root")
	f.StringVar(&o.CAKeyFile, "ca-key", "", "PEM private key of --ca-cert")
	f.StringVar(&o.CARootFile, "ca-root", "", "PEM root of --ca-cert when it is an intermediate")
	f.DurationVar(&o.WorkloadTTL, "workload-cert-ttl", 24*time.Hour, "lifetime of workload certificates; proxies renew at 45-55% of it")
	f.BoolVar(&o.AllowRemote, "allow-remote", false, "allow listening on non-loopback addresses")
	f.BoolVar(&o.InsecureBootstrapToken, "insecure-bootstrap-token", false, "DEV MODE: accept <data-dir>/bootstrap-token for ANY identity (for demos; never in production)")
	f.StringVar(&o.DNSAddr, "dns-addr", "", `DNS server address, UDP and TCP (default 127.0.0.1:8600, skipped with a warning if busy); "off" disables`)
	f.DurationVar(&o.DNSTTL, "dns-ttl", 5*time.Second, "TTL of DNS answers, negative ones included (whole seconds)")
	f.StringVar(&o.DNSForward, "dns-forward", "", "upstream resolver (host[:port]) for names outside the mesh; empty answers them REFUSED")
	f.StringSliceVar(&o.ReplicaGRPCAddrs, "replica-grpc-addrs", nil, "every replica's gRPC address (this one's included), written to control.json so proxies discovering the control plane from --data-dir fail over among them")
	f.DurationVar(&o.LeaderTTL, "leader-ttl", control.DefaultLeaderTTL, "with --store etcd: lease of this replica's candidacy in the leader election; a dead leader is replaced within it")
	f.DurationVar(&o.CompactionInterval, "etcd-compaction-interval", control.DefaultCompactionInterval, "with --store etcd: the leader compacts etcd's history to the revision of one interval ago, this often; negative: never (etcd compacts itself)")
	f.StringVar(&o.ReplicaID, "replica-id", "", "name of this replica in snapshots, proxy-status and the leader election (default hostname:grpc-port)")
	f.StringVar(&o.DefaultAuthorization, "default-authorization", control.DefaultAuthorizationAllow, "decision for requests to a workload no ALLOW AuthorizationPolicy applies to: allow or deny")
	f.BoolVar(&o.XDSOff, "no-xds", false, "serve no xDS (ADS for proxyless gRPC and Envoy) on the gRPC port")
	sf.register(f)
	return cmd
}
