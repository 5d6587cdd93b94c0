package cli

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
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

On first start it creates, in --data-dir, the store, a CA root, ca.crt (the
trust bundle proxies need), bootstrap-token (what a proxy presents to get its
first certificate) and admin-token (what the CLI presents). Prometheus metrics
are served at http://<metrics-addr>/metrics. All listeners bind to loopback
unless --allow-remote is given.`,
		Example: `  trellis control
  trellis control --data-dir /var/lib/trellis --grpc-addr 127.0.0.1:15010
  trellis control --store etcd --etcd-endpoints http://127.0.0.1:2379`,
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
	f.StringVar(&o.TrustDomain, "trust-domain", "trellis.local", "SPIFFE trust domain of workload identities")
	f.StringVar(&o.Domain, "domain", "trellis.local", "DNS suffix of service names (<svc>.<ns>.svc.<domain>)")
	f.StringVar(&o.CACertFile, "ca-cert", "", "PEM signing certificate (root or intermediate) to use instead of creating a root")
	f.StringVar(&o.CAKeyFile, "ca-key", "", "PEM private key of --ca-cert")
	f.StringVar(&o.CARootFile, "ca-root", "", "PEM root of --ca-cert when it is an intermediate")
	f.DurationVar(&o.WorkloadTTL, "workload-cert-ttl", 24*time.Hour, "lifetime of workload certificates; proxies renew at 2/3 of it")
	f.BoolVar(&o.AllowRemote, "allow-remote", false, "allow listening on non-loopback addresses")
	sf.register(f)
	return cmd
}

func newProxyStatusCmd(g *globals) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "proxy-status",
		Short: "List connected proxies with their config version and revision, sync state and certificate expiry",
		Long: `List the proxies connected to the control plane. VERSION is the config a
proxy runs (acknowledged; the one sent if none was); REVISION is the store
revision it is current at: that of its last acknowledged config, or later
when writes since left its config unchanged. STATE is SYNCED, STALE (sent,
not yet acknowledged), NACKED (refused; it keeps its last good config; see
ERROR) or PENDING.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := newAdminClient(g.dataDir)
			if err != nil {
				return err
			}
			var list []map[string]any
			if err := c.do(cmd.Context(), "GET", "/v1/proxies", nil, &list); err != nil {
				return fmt.Errorf("proxy-status: %w", err)
			}
			if output == "json" {
				b, _ := json.MarshalIndent(list, "", "  ")
				fmt.Fprintf(g.stdout, "%s\n", b)
				return nil
			}
			return printProxyStatus(g, list)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}

func printProxyStatus(g *globals, list []map[string]any) error {
	if len(list) == 0 {
		fmt.Fprintln(g.stdout, "No proxies connected.")
		return nil
	}
	sort.Slice(list, func(i, j int) bool { return field(list[i], "NodeID") < field(list[j], "NodeID") })
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "PROXY\tSERVICE\tVERSION\tREVISION\tSTATE\tCERT EXPIRES\tERROR")
	for _, p := range list {
		svc := field(p, "Service")
		if ns := field(p, "Namespace"); ns != "" {
			svc += "." + ns
		}
		version := field(p, "AckedVersion")
		if version == "" {
			version = field(p, "SentVersion")
		}
		expiry := field(p, "CertExpiry")
		if t, err := time.Parse(time.RFC3339Nano, expiry); err == nil {
			if t.IsZero() {
				expiry = "-"
			} else {
				expiry = fmt.Sprintf("%s (in %s)", t.Local().Format("2006-01-02 15:04"), time.Until(t).Round(time.Minute))
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", field(p, "NodeID"), svc, short(version, 12), revisionText(intField(p, "Revision")),
			field(p, "State"), expiry, field(p, "Error"))
	}
	return tw.Flush()
}

// field reads a string field whatever JSON casing the server used
// (NodeID, node_id, nodeId).
func field(m map[string]any, name string) string {
	want := strings.ToLower(strings.ReplaceAll(name, "_", ""))
	for k, v := range m {
		if strings.ToLower(strings.ReplaceAll(k, "_", "")) == want {
			if s, ok := v.(string); ok {
				return s
			}
			return fmt.Sprint(v)
		}
	}
	return ""
}

// intField reads a whole-number field (JSON numbers decode as float64).
func intField(m map[string]any, name string) int64 {
	f, _ := strconv.ParseFloat(field(m, name), 64)
	return int64(f)
}

func short(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
