package cli

import (
	"context"
	"fmt"
	"io"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"trellis.dev/trellis/internal/push"
)

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
ERROR) or PENDING. REPLICA is the control-plane replica the proxy's watch
is attached to (its --replica-id); every replica lists every proxy of the
mesh, whichever it is attached to.

-o wide adds each proxy's endpoint: its inbound address and labels, so two
replicas of one service can be told apart. -o json and -o yaml print the
admin API's fields (nodeId, replica, service, namespace, identity, sentVersion,
ackedVersion, revision, sentRevision, state, error, certExpiry,
connectedAt, lastAck).

xDS clients (proxyless gRPC, Envoy) connected to the control plane's ADS
are listed after the proxies: node id, kind xds, the SPIFFE ID of their
certificate, mode (sotw or delta), the version each resource type was
last acknowledged at (LDS, RDS, CDS, EDS), and their last NACK. In -o json
and -o yaml they follow the proxies in the same list, with kind "xds"
(nodeId, kind, identity, mode, acked, sent, error, connectedAt).`,
		Example: `  trellis proxy-status
  trellis proxy-status -o wide
  trellis proxy-status -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput("proxy-status", output, "table", "wide", "yaml", "json"); err != nil {
				return err
			}
			c, err := newAdminClient(g.dataDir)
			if err != nil {
				return err
			}
			list, err := proxyList(cmd.Context(), c)
			if err != nil {
				return fmt.Errorf("proxy-status: %w", err)
			}
			clients, err := xdsClientList(cmd.Context(), c)
			if err != nil {
				return fmt.Errorf("proxy-status: xds clients: %w", err)
			}
			var eps []endpoint
			switch output {
			case "json", "yaml":
				return printValue(g.stdout, output, proxyStatusValue(list, clients))
			case "wide":
				if err := c.do(cmd.Context(), "GET", "/v1/endpoints", nil, &eps); err != nil {
					return fmt.Errorf("proxy-status: endpoints: %w", err)
				}
			}
			if err := printProxyStatus(g.stdout, list, eps, time.Now()); err != nil {
				return err
			}
			return printXDSClients(g.stdout, clients, time.Now())
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table, wide, yaml or json")
	return cmd
}

// proxyList is /v1/proxies, sorted by proxy.
func proxyList(ctx context.Context, c *adminClient) ([]push.ProxyStatus, error) {
	list := []push.ProxyStatus{}
	if err := c.do(ctx, "GET", "/v1/proxies", nil, &list); err != nil {
		return nil, err
	}
	sort.Slice(list, func(i, j int) bool { return list[i].NodeID < list[j].NodeID })
	return list, nil
}

// endpoint is what -o wide reads of /v1/endpoints.
type endpoint struct {
	ID      string            `json:"id"`
	Address string            `json:"address"`
	Labels  map[string]string `json:"labels"`
}

// printProxyStatus prints the table; with eps (-o wide) it adds each
// proxy's endpoint address and labels.
func printProxyStatus(w io.Writer, list []push.ProxyStatus, eps []endpoint, now time.Time) error {
	if len(list) == 0 {
		fmt.Fprintln(w, "No proxies connected.")
		return nil
	}
	wide := eps != nil
	byID := make(map[string]endpoint, len(eps))
	for _, e := range eps {
		byID[e.ID] = e
	}
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	header := "PROXY\tSERVICE\tVERSION\tREVISION\tSTATE\tREPLICA\tCERT EXPIRES\tERROR"
	if wide {
		header += "\tADDRESS\tLABELS"
	}
	fmt.Fprintln(tw, header)
	for _, p := range list {
		version := p.AckedVersion
		if version == "" {
			version = p.SentVersion
		}
		fmt.Fprintf(tw, "%s\t%s.%s\t%s\t%s\t%s\t%s\t%s\t%s", p.NodeID, p.Service, p.Namespace, short(version, 12), revisionText(p.Revision),
			p.State, orDash(p.Replica), expiryText(p.CertExpiry, now), p.Error)
		if wide {
			e := byID[p.NodeID]
			fmt.Fprintf(tw, "\t%s\t%s", orDash(e.Address), labelText(e.Labels))
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

// expiryText shows a certificate expiry and how far off it is.
func expiryText(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	left := t.Sub(now).Round(time.Minute)
	if left < 0 {
		return fmt.Sprintf("%s (EXPIRED %s ago)", t.UTC().Format("2006-01-02 15:04Z"), -left)
	}
	return fmt.Sprintf("%s (in %s)", t.UTC().Format("2006-01-02 15:04Z"), left)
}

func short(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
